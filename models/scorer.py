"""What serving asks of a fitted model: `Scored` (an item and its score) and the `Scorer`
protocol that every item recommender (`models.base.Recommender`) and the next-best-offer model
(`models.nbo.NextBestOffer`) satisfy, so the pipeline never needs to know which it holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Scored:
    item: str
    score: float


@runtime_checkable
class Scorer(Protocol):
    """A fitted model as the recommendation pipeline uses it.

    A model reads what it knows how to read: an item model the `history` (item -> weight, as in
    training), the next-best-offer model the `profile` features at `now_ms`. The pipeline passes
    an empty profile and history when it may not personalise.
    """

    @property
    def name(self) -> str:
        """The registered name of the model's kind (`itemknn`, `popular`, `nbo`...)."""
        ...

    def candidates(self) -> np.ndarray:
        """The ids of the items it can recommend, in the order of `score`'s result."""
        ...

    def score(
        self, profile: Mapping[str, Any], history: Mapping[str, float], now_ms: int
    ) -> np.ndarray:
        """One score per candidate for this user (higher is better; not finite: never shown)."""
        ...

    def score_like(self, anchor: str) -> np.ndarray | None:
        """One score per candidate for being like the item `anchor`, the same for every user;
        None from a model with no notion of item similarity (a "similar" slot that it serves
        then gets the user's `score`)."""
        ...

    def explain(
        self,
        profile: Mapping[str, Any],
        history: Mapping[str, float],
        items: Sequence[str],
        now_ms: int,
    ) -> dict[str, str]:
        """For each of `items` it can attribute, what raised its score most, as `kind:key`: a
        history item (`item:<id>`) or a profile feature (`sim:loan`, `seen:<id>`...); models
        that cannot tell return `{}`."""
        ...


@runtime_checkable
class Propensities(Protocol):
    """A model that gives each offer's purchase propensity from profile features (what an
    interest signal's propensity condition needs; `NextBestOffer` is one)."""

    offers: list[str]
    names: list[str]

    def propensity(self, x: np.ndarray) -> np.ndarray: ...

"""The running scores of a replay (`training.replay`): per side tallies, the lists waiting for
the user's next interactions, nDCG, and the per-user verdict with its interval."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from engine.recommender.core import Outcome

DAY_MS = 86_400_000


def ndcg(items: tuple[str, ...], relevant: set[str], k: int) -> float:
    """nDCG@k with binary relevance (ideal: min(relevant, k) hits on top)."""
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(items[:k]) if x in relevant)
    return dcg / sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))


class Pending:
    """A decided pair of lists waiting for the user's next interactions."""

    __slots__ = ("day", "items", "left", "relevant", "weight")

    def __init__(self, items: tuple[tuple[str, ...], tuple[str, ...]], day: int, left: int) -> None:
        self.items, self.day, self.left = items, day, left
        self.relevant: set[str] = set()
        self.weight = 1


class Tally:
    """One side's running totals (bounded by the catalogue and the number of days)."""

    def __init__(self) -> None:
        self.lists = self.empty = self.fallbacks = 0
        self.shown_items: dict[str, int] = {}  # item -> positions (offer mix: at the end)
        self.weight = self.hits = self.gain = 0.0
        self.daily: dict[int, list[float]] = {}  # day -> [weight, hits, gain]
        self.acquisitions = self.acquired_hits = 0
        self.value_total = self.value_captured = 0.0

    def shown(self, outcome: Outcome, items: tuple[str, ...]) -> None:
        self.lists += 1
        self.empty += not items
        self.fallbacks += outcome.fallback is not None
        shown = self.shown_items
        for item in items:
            shown[item] = shown.get(item, 0) + 1

    def scored(self, hit: bool, gain: float, weight: int, day: int) -> None:
        self.weight, self.hits, self.gain = (
            self.weight + weight,
            self.hits + weight * hit,
            self.gain + weight * gain,
        )
        d = self.daily.setdefault(day, [0.0, 0.0, 0.0])
        d[0], d[1], d[2] = d[0] + weight, d[1] + weight * hit, d[2] + weight * gain

    def acquired(self, value: float, captured: bool) -> None:
        self.acquisitions += 1
        self.acquired_hits += captured
        self.value_total += value
        self.value_captured += value * captured

    def metrics(self, catalogue: int, popularity: dict[str, int], catalog: Any) -> dict[str, Any]:
        """The side's result (`training.replay_cli.summary`'s keys of a side)."""
        categories: dict[str, int] = {}
        for item, n in self.shown_items.items():
            entry = catalog.get(item)
            category = (entry.category if entry is not None else None) or "?"
            categories[category] = categories.get(category, 0) + n
        positions = sum(self.shown_items.values())
        total = sum(popularity.values()) or 1
        novelty = sum(
            n * -math.log2(max(popularity.get(i, 0) / total, 1e-6))
            for i, n in self.shown_items.items()
        )
        w, lists = self.weight or 1.0, self.lists or 1
        return {
            "lists": self.lists,
            "scored": self.weight,
            "hit_rate": self.hits / w,
            "ndcg": self.gain / w,
            "coverage": len(self.shown_items) / catalogue if catalogue else 0.0,
            "novelty": novelty / positions if positions else 0.0,
            "fallback_share": self.fallbacks / lists,
            "empty_share": self.empty / lists,
            "acquisitions": self.acquisitions,
            "acquisition_hit_rate": self.acquired_hits / (self.acquisitions or 1),
            "value_total": self.value_total,
            "value_captured": self.value_captured,
            "value_share": self.value_captured / self.value_total if self.value_total else 0.0,
            "offer_mix": {
                c: n / positions for c, n in sorted(categories.items(), key=lambda x: -x[1])
            },
            "daily": [
                [iso(d * DAY_MS), v[0], v[1] / v[0], v[2] / v[0]]
                for d, v in sorted(self.daily.items())
            ],
        }


class Verdict:
    """The mean of per-user nDCG differences and its 95 % interval (Welford's update)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def summary(self) -> dict[str, Any]:
        ci, verdict = None, "not enough data"
        if self.n >= 2:
            half = 1.96 * math.sqrt(self.m2 / (self.n - 1) / self.n)
            ci = [self.mean - half, self.mean + half]
            verdict = "no significant difference"
            verdict = "candidate better" if ci[0] > 0 else verdict
            verdict = "candidate worse" if ci[1] < 0 else verdict
        return {"users_scored": self.n, "user_ndcg_diff": self.mean, "ci95": ci, "verdict": verdict}


def iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()

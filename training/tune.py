"""Hyperparameter search: every setting of a model's declared space is fitted on the earlier
part of the *training* slice and scored on a validation slice carved from its later part by the
same split rule as the test; the test slice is never read here.

A model declares its space next to its config as a `search_space` ClassVar ({parameter: values});
the built-ins whose modules do not declare one are listed in `SPACES`. Without a budget the whole
grid is searched; with `budget` N, N settings drawn from the grid (seeded, without repeats).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models import REGISTRY, EventWeights, Recommender, make, plugins
from nerve_client.errors import ConfigError
from training.evaluate import evaluate, recommends_seen
from training.splits import Split, span, split

Space = Mapping[str, Sequence[Any]]
# (model, fit slice, validation slice) -> metrics: the seam a test instruments
Evaluator = Callable[[Recommender, pd.DataFrame, pd.DataFrame], Mapping[str, float]]
Progress = Callable[[int, int], None]  # (trials done, trials in all)

SPACES: dict[str, dict[str, list[Any]]] = {
    "popular": {"count": ["weight", "users"]},
    "popular-segment": {"segments": [2, 4, 8, 16, 32]},
    "itemknn": {
        "neighbors": [20, 50, 100, 200],
        "shrink": [0.0, 10.0, 50.0],
        "binary": [True, False],
    },
    "ease": {"l2": [10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 3000.0]},
    "als": {
        "factors": [16, 32, 64],
        "regularization": [0.01, 0.05, 0.5],
        "alpha": [1.0, 10.0, 40.0],
    },
}


def space_of(name: str) -> dict[str, list[Any]]:
    """The declared search space of model `name` (`ConfigError` if it has none)."""
    if name not in REGISTRY:
        plugins.find(name)  # `module:Class` or an entry point: registered as a kind
    cls = REGISTRY.get(name)
    wrapped = getattr(cls, "plugin", None)  # a plain plugin class: its own declaration
    own = getattr(wrapped if wrapped is not None else cls, "search_space", None)
    space = own if own is not None else SPACES.get(name)
    if not space:
        raise ConfigError(f"--tune: model {name!r} declares no search space")
    return {key: list(values) for key, values in space.items()}


def settings(
    space: Space, budget: int | None = None, fixed: Mapping[str, Any] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The settings to try: the grid of `space` (parameters in `fixed` held at their value), or
    `budget` of them drawn at random when the grid is larger."""
    fixed = dict(fixed or {})
    free = {k: list(v) for k, v in space.items() if k not in fixed}
    grid = [dict(zip(free, combo, strict=True)) for combo in itertools.product(*free.values())]
    if budget is not None:
        if budget < 1:
            raise ConfigError("--tune-budget: must be at least 1")
        if budget < len(grid):
            picked = np.random.default_rng(seed).choice(len(grid), size=budget, replace=False)
            grid = [grid[i] for i in sorted(picked)]
    return [{**fixed, **g} for g in grid]


@dataclass
class Trial:
    params: dict[str, Any]
    score: float
    metrics: dict[str, float]
    seconds: float


@dataclass
class TuneResult:
    """A finished search: every trial, the best setting, and the slices it saw."""

    model: str
    metric: str
    how: str  # "grid" | "random"
    space: dict[str, list[Any]]
    fit_slice: dict[str, Any]
    validation_slice: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.score)  # the first of equals: grid order

    def card(self) -> dict[str, Any]:
        """The search as the model card records it."""
        return {
            "metric": self.metric,
            "search": self.how,
            "space": self.space,
            "fit": self.fit_slice,
            "validation": self.validation_slice,
            "best": self.best.params,
            "best_score": self.best.score,
            "trials": [
                {"params": t.params, "score": t.score, "seconds": round(t.seconds, 3)}
                for t in self.trials
            ],
        }


def tune(
    train_frame: pd.DataFrame,
    model: str,
    *,
    how: Split = "global",
    space: Space | None = None,
    budget: int | None = None,
    fixed: Mapping[str, Any] | None = None,
    k: int = 10,
    weights: EventWeights | None = None,
    evaluator: Evaluator | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> TuneResult:
    """Search `model`'s space (default: its declared one) on a validation slice of
    `train_frame`, cut by rule `how`; the best by nDCG@k is `result.best`."""
    fit_frame, validation = split(train_frame, how)
    if fit_frame.empty or validation.empty:
        raise ConfigError("--tune: the training part is too small to carve a validation slice")
    declared = {key: list(v) for key, v in (space or space_of(model)).items()}
    grid = settings(declared, None, fixed)
    todo = settings(declared, budget, fixed, seed)
    repeats = recommends_seen(REGISTRY[model]) if model in REGISTRY else False

    def default(m: Recommender, a: pd.DataFrame, b: pd.DataFrame) -> Mapping[str, float]:
        return evaluate(m, a, b, k=k, weights=weights, repeats=repeats)

    run = evaluator or default
    metric = f"ndcg@{k}"
    result = TuneResult(
        model,
        metric,
        "random" if len(todo) < len(grid) else "grid",
        declared,
        span(fit_frame),
        span(validation),
    )
    for done, params in enumerate(todo, 1):
        started = time.perf_counter()
        scores = {
            key: float(v) for key, v in run(make(model, **params), fit_frame, validation).items()
        }
        result.trials.append(Trial(params, scores[metric], scores, time.perf_counter() - started))
        if progress is not None:
            progress(done, len(todo))
    return result

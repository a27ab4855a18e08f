"""Training a model on the history: split, (tune,) fit, evaluate beside popularity and the
slot's active model, write the card.

The model card records what a later reader needs to trust or reproduce the model: the data range
(times and ACTIVITY sequences it saw) and the slices' ranges and sizes, the split, the parameters,
the tuning search (every setting and its validation score), every metric for the model, the
popularity baseline and the active model on the same split, the learning curve, the training
time and the library versions.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models import REGISTRY, EventWeights, Interactions, make
from training import splits
from training.evaluate import evaluate, interactions_for, recommends_seen, run
from training.report import html
from training.result import TrainResult
from training.splits import Split, span
from training.tune import Evaluator, Progress
from training.tune import tune as search

LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "pydantic", "nerve")


def library_versions() -> dict[str, str]:
    """Python's and each library's version, for the model card."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "?"
    return out


def new_version(kind: str, now: datetime, root: Path | None = None) -> str:
    """`<kind>-<UTC time to the second>`, with `-2`, `-3`... when `root` already holds that
    version (two models trained within a second, as a parameter sweep does)."""
    version = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', kind)[:100]}-{now:%Y%m%dT%H%M%S}"
    n = 1
    while root is not None and (root / (version if n == 1 else f"{version}-{n}")).exists():
        n += 1
    return version if n == 1 else f"{version}-{n}"


def split(
    frame: pd.DataFrame, how: Split, at: float = 0.8, last_n: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return splits.split(frame, how, at, last_n)


@dataclass(frozen=True)
class Active:
    """The slot's active model as the registry names it (`version` None: none, see `reason`)."""

    slot: str
    version: str | None = None
    kind: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Tuning:
    """Asks `train` to search the model's space first (`budget`: random settings; None: grid)."""

    budget: int | None = None
    progress: Progress | None = None
    evaluator: Evaluator | None = None  # (model, fit slice, validation slice) -> metrics


def compare(
    model_name: str,
    params: dict[str, Any],
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
    active: Active | None = None,
    tails: dict[str, list[tuple[float, float]]] | None = None,
) -> dict[str, dict[str, float]]:
    """The metrics of `model_name` fitted on `train_frame`, and of popularity (and the `active`
    model's kind and parameters) beside it, on `test_frame`; each model's long tail goes into
    `tails` when given. All are measured alike: with seen items kept if the model keeps them."""
    repeats = recommends_seen(REGISTRY[model_name]) if model_name in REGISTRY else False
    runs: dict[str, tuple[str, dict[str, Any]]] = {model_name: (model_name, params)}
    if model_name != "popular":
        runs["popular"] = ("popular", {})
    if active is not None and active.version and active.kind:
        runs[f"active {active.version}"] = (active.kind, active.params)
    metrics: dict[str, dict[str, float]] = {}
    for label, (kind, values) in runs.items():
        res = run(
            make(kind, **values), train_frame, test_frame, k=k, weights=weights, repeats=repeats
        )
        metrics[label] = res.metrics
        if tails is not None:
            tails[label] = res.tail
    return metrics


def learning_curve(
    model_name: str,
    params: dict[str, Any],
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
) -> list[tuple[float, float]]:
    """(training events, nDCG@k) when fitting on 25, 50, 75 and 100 % of the training users."""
    users = np.asarray(train_frame["user"].unique(), dtype=object)
    np.random.default_rng(0).shuffle(users)
    repeats = recommends_seen(REGISTRY[model_name]) if model_name in REGISTRY else False
    points: list[tuple[float, float]] = []
    for share in (0.25, 0.5, 0.75, 1.0):
        kept = set(users[: max(1, int(len(users) * share))])
        part = train_frame[train_frame["user"].isin(kept)]
        res = evaluate(
            make(model_name, **params), part, test_frame, k=k, weights=weights, repeats=repeats
        )
        points.append((float(len(part)), res[f"ndcg@{k}"]))
    return points


def data_card(
    frame: pd.DataFrame, data: Interactions, weights: EventWeights | None
) -> dict[str, Any]:
    """The card's `data`: the range and size of the history the final model learnt from."""
    return {
        **span(frame),
        "users": int(data.shape[0]),
        "items": int(data.shape[1]),
        "seq_from": int(frame["seq"].min()),
        "seq_to": int(frame["seq"].max()),
        "weights": (weights or EventWeights()).model_dump(),
    }


def _makeable(active: Active | None) -> Active | None:
    """`active`, with no kind (and why) when its model cannot be made here with its params."""
    if active is None or not active.kind:
        return active
    try:
        make(active.kind, **active.params)
    except (ValueError, TypeError) as exc:  # unknown kind, or a pydantic ValidationError
        return replace(active, kind=None, reason=f"cannot refit {active.kind}: {exc}")
    return active


def active_card(active: Active | None, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The card's `active`: which model the metrics sit beside, or why none."""
    if active is None:
        return {"reason": "not looked up (no broker given)"}
    if not active.version:
        return {"slot": active.slot, "reason": active.reason or "the slot has none"}
    out: dict[str, Any] = {"slot": active.slot, "version": active.version, "model": active.kind}
    out["params"] = active.params
    if f"active {active.version}" not in metrics:
        out["error"] = active.reason or f"model {active.kind!r} cannot be made here"
    return out


def train(
    frame: pd.DataFrame,
    model_name: str,
    params: dict[str, Any] | None = None,
    *,
    how: Split = "global",
    k: int = 10,
    weights: EventWeights | None = None,
    curve: bool = True,
    root: Path | None = None,
    tune: Tuning | None = None,
    active: Active | None = None,
) -> TrainResult:
    """Split `frame`; with `tune`, search the model's space on a validation slice of the
    training part; fit the model (and popularity, and the `active` model's settings) on the
    training part and evaluate them on the test part; then refit the model on everything (the
    published artifact learns from all the data it was shown). The version is new in `root`
    (where `write` will put it) when given."""
    if frame.empty:
        raise ValueError("no history to train on")
    params = params or {}
    train_frame, test_frame = split(frame, how)
    searched = None
    if tune is not None:
        searched = search(
            train_frame,
            model_name,
            how=how,
            budget=tune.budget,
            fixed=params,
            k=k,
            weights=weights,
            progress=tune.progress,
            evaluator=tune.evaluator,
        )
        params = searched.best.params
    started = time.perf_counter()
    tails: dict[str, list[tuple[float, float]]] = {}
    active = _makeable(active)
    same: dict[str, Any] = {"k": k, "weights": weights}
    metrics = compare(
        model_name, params, train_frame, test_frame, active=active, tails=tails, **same
    )
    fit_seconds = time.perf_counter() - started
    points = learning_curve(model_name, params, train_frame, test_frame, **same) if curve else []
    final = make(model_name, **params)
    data = interactions_for(final, frame, weights)
    final.fit(data)
    now = datetime.now(UTC)
    version = new_version(model_name, now, root)
    card = {
        "version": version,
        "model": model_name,
        "params": final.config.model_dump(mode="json"),
        "created_at": now.isoformat(),
        "data": data_card(frame, data, weights),
        "split": {
            "how": how,
            "train_events": len(train_frame),
            "test_events": len(test_frame),
            "repeats": recommends_seen(final),
            "slices": {"training": span(train_frame), "test": span(test_frame)},
        },
        "metrics": metrics,
        "active": active_card(active, metrics),
        "tuning": searched.card() if searched is not None else None,
        "curve": [{"train_events": int(x), f"ndcg@{k}": y} for x, y in points],
        "k": k,
        "fit_and_evaluate_seconds": round(fit_seconds, 3),
        "libraries": library_versions(),
    }
    return TrainResult(final, version, card, metrics, points, tails)


def write(result: TrainResult, root: Path) -> Path:
    """The artifact, the card and the HTML report under `root/<version>/`."""
    import json

    folder = result.model.save(root / result.version)
    (folder / "card.json").write_text(json.dumps(result.card, indent=2))
    (folder / "report.html").write_text(html(result))
    return folder

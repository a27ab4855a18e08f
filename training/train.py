"""Training a model on the history: split, fit, evaluate beside popularity, write the card.

The model card records what a later reader needs to trust or reproduce the model: the data range
(times and ACTIVITY sequences it saw), the split, the parameters, every metric for the model and
the popularity baseline on the same split, the training time and the library versions.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from models import EventWeights, Interactions, make
from training.evaluate import evaluate
from training.report import html
from training.result import TrainResult
from training.splits import global_cut, leave_last_n

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
    version = f"{kind}-{now:%Y%m%dT%H%M%S}"
    n = 1
    while root is not None and (root / (version if n == 1 else f"{version}-{n}")).exists():
        n += 1
    return version if n == 1 else f"{version}-{n}"


def split(
    frame: pd.DataFrame, how: Literal["global", "last"], at: float = 0.8, last_n: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if how == "global":
        return global_cut(frame, at)
    return leave_last_n(frame, last_n, item_types=("item_viewed", "item_purchased"))


def compare(
    model_name: str,
    params: dict[str, Any],
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
) -> dict[str, dict[str, float]]:
    """The metrics of `model_name` fitted on `train_frame`, and of popularity beside it, on
    `test_frame` (popularity alone when it is the model)."""
    model = make(model_name, **params)
    metrics = {model_name: evaluate(model, train_frame, test_frame, k=k, weights=weights)}
    if model_name != "popular":
        metrics["popular"] = evaluate(
            make("popular"), train_frame, test_frame, k=k, weights=weights
        )
    return metrics


def train(
    frame: pd.DataFrame,
    model_name: str,
    params: dict[str, Any] | None = None,
    *,
    how: Literal["global", "last"] = "global",
    k: int = 10,
    weights: EventWeights | None = None,
    curve: bool = True,
    root: Path | None = None,
) -> TrainResult:
    """Split `frame`, fit `model_name` and the popularity baseline, evaluate both, and refit the
    model on everything (the published artifact learns from all the data it was shown). The
    version is new in `root` (where `write` will put it) when given."""
    if frame.empty:
        raise ValueError("no history to train on")
    params = params or {}
    train_frame, test_frame = split(frame, how)
    started = time.perf_counter()
    metrics = compare(model_name, params, train_frame, test_frame, k=k, weights=weights)
    fit_seconds = time.perf_counter() - started
    points: list[tuple[float, float]] = []
    if curve:
        users = np.asarray(train_frame["user"].unique(), dtype=object)
        rng = np.random.default_rng(0)
        rng.shuffle(users)
        for share in (0.25, 0.5, 0.75, 1.0):
            kept = set(users[: max(1, int(len(users) * share))])
            part = train_frame[train_frame["user"].isin(kept)]
            res = evaluate(make(model_name, **params), part, test_frame, k=k, weights=weights)
            points.append((share, res[f"ndcg@{k}"]))
    data = Interactions.from_frame(frame, weights)
    final = make(model_name, **params).fit(data)
    now = datetime.now(UTC)
    version = new_version(model_name, now, root)
    card = {
        "version": version,
        "model": model_name,
        "params": final.config.model_dump(mode="json"),
        "created_at": now.isoformat(),
        "data": {
            "events": len(frame),
            "users": int(data.shape[0]),
            "items": int(data.shape[1]),
            "from": frame["time"].min().isoformat(),
            "to": frame["time"].max().isoformat(),
            "seq_from": int(frame["seq"].min()),
            "seq_to": int(frame["seq"].max()),
            "weights": (weights or EventWeights()).model_dump(),
        },
        "split": {"how": how, "train_events": len(train_frame), "test_events": len(test_frame)},
        "metrics": metrics,
        "k": k,
        "fit_and_evaluate_seconds": round(fit_seconds, 3),
        "libraries": library_versions(),
    }
    counts = np.sort(np.asarray((data.matrix > 0).sum(axis=0)).ravel())[::-1]
    return TrainResult(final, version, card, metrics, points, [int(c) for c in counts])


def write(result: TrainResult, root: Path) -> Path:
    """The artifact, the card and the HTML report under `root/<version>/`."""
    import json

    folder = result.model.save(root / result.version)
    (folder / "card.json").write_text(json.dumps(result.card, indent=2))
    (folder / "report.html").write_text(html(result))
    return folder

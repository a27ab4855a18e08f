"""Training and evaluating next-best-offer on the history.

Profiles are rebuilt at a cut-off with the engine's own projection (`engine.profiles.profile`),
so the features are exactly those the live profile will give at serving time. The label of
(user, offer) is "acquired the offer (item_purchased) within the horizon after the cut-off".

Evaluation is temporal: fit on features at `t_fit` with labels in (t_fit, t_eval], test on
features at `t_eval` with labels after it. Reported: AUC per offer (macro average over offers
with both outcomes in the test window), and, over the users who acquired something in the test
window, the hit rate and the value captured by the top offer of the policy against always
offering the most acquired product the user does not hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from engine.profiles.profile import CannotApply, apply, new_profile
from models.nbo import NBOConfig, NextBestOffer, feature_names, features
from training.report import page
from training.splits import span
from training.train import Active, Tuning, active_card, library_versions, new_version
from training.tune import Progress, Trial, TuneResult, settings

NBO_SPACE: dict[str, list[Any]] = {"c": [0.01, 0.05, 0.2, 1.0], "min_positives": [3, 5, 10]}


def profiles_at(frame: pd.DataFrame, cutoff: pd.Timestamp) -> dict[str, dict[str, Any]]:
    """Every identified user's profile from the events before `cutoff`."""
    past = frame[(frame["time"] < cutoff) & frame["user_id"].notna()]
    profiles: dict[str, dict[str, Any]] = {}
    for r in past.itertuples(index=False):
        p = profiles.get(r.user)
        if p is None:
            p = profiles[r.user] = new_profile(r.user, r.user_id, None)
        event = {
            "type": r.type,
            "time": r.time.isoformat(),
            "item_id": r.item_id,
            "user_id": r.user_id,
            "anonymous_id": r.anonymous_id,
            "properties": orjson.loads(r.properties) if r.properties else {},
        }
        try:
            apply(p, event, "activity", int(r.seq))
        except CannotApply:
            continue
    return profiles


def acquisitions(
    frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None
) -> dict[str, set[str]]:
    window = frame[(frame["type"] == "item_purchased") & (frame["time"] >= start)]
    if end is not None:
        window = window[window["time"] < end]
    return {str(u): set(g.astype(str)) for u, g in window.groupby("user")["item_id"]}


def dataset(
    frame: pd.DataFrame,
    cutoff: pd.Timestamp,
    end: pd.Timestamp | None,
    offers: list[str],
    names: list[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict[str, dict[str, Any]]]:
    profiles = profiles_at(frame, cutoff)
    users = sorted(profiles)
    names = names or feature_names(profiles.values(), offers)
    now = int(cutoff.timestamp() * 1000)
    x = (
        np.vstack([features(profiles[u], names, now) for u in users])
        if users
        else np.zeros((0, len(names)))
    )
    bought = acquisitions(frame, cutoff, end)
    y = np.array([[o in bought.get(u, set()) for o in offers] for u in users], dtype=np.int8)
    return users, x, y.reshape(len(users), len(offers)), names, profiles


@dataclass
class NBOResult:
    model: NextBestOffer
    metrics: dict[str, float]
    auc_by_offer: dict[str, float]
    curve: list[tuple[float, float]] = field(default_factory=list)  # (fit users, AUC)
    tail: list[tuple[float, float]] = field(default_factory=list)  # (offer rank, top-1 share)
    slices: dict[str, Any] = field(default_factory=dict)


def offer_values(frame: pd.DataFrame) -> dict[str, float]:
    """Mean purchase value per item: what an acquisition is worth."""
    bought = frame[(frame["type"] == "item_purchased") & frame["value"].notna()]
    return {str(k): float(v) for k, v in bought.groupby("item_id")["value"].mean().items()}


@dataclass
class _Test:
    users: list[str]
    x: np.ndarray
    y: np.ndarray
    profiles: dict[str, dict[str, Any]]
    now: int


def _measure(
    model: NextBestOffer, test: _Test, y_fit: np.ndarray, values: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float], list[tuple[float, float]]]:
    """Metrics, AUC per offer and the top-1 long tail of `model` on `test`."""
    from sklearn.metrics import roc_auc_score

    offers = model.offers
    p = model.propensity(test.x)
    yt = test.y
    by_offer = {
        offers[j]: float(roc_auc_score(yt[:, j], p[:, j]))
        for j in range(len(offers))
        if 0 < yt[:, j].sum() < len(yt)
    }
    aucs = list(by_offer.values())
    order = np.argsort(-y_fit.sum(axis=0), kind="stable")
    popular_order = [offers[j] for j in order]
    nbo_hits = pop_hits = nbo_value = pop_value = 0.0
    shown = dict.fromkeys(offers, 0)
    buyers = [i for i in range(len(test.users)) if yt[i].any()]
    for i in buyers:
        got = {offers[j] for j in np.flatnonzero(yt[i])}
        top = model.rank(test.profiles[test.users[i]], test.now, k=1)
        if top:
            shown[top[0].item] = shown.get(top[0].item, 0) + 1
        if top and top[0].item in got:
            nbo_hits += 1
            nbo_value += values[top[0].item]
        held = test.profiles[test.users[i]]["held"]
        fallback = next((o for o in popular_order if o not in held), None)
        if fallback in got:
            pop_hits += 1
            pop_value += values[fallback]
    n = max(len(buyers), 1)
    metrics = {
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "offers_evaluated": float(len(aucs)),
        "buyers": float(len(buyers)),
        "hit@1": nbo_hits / n,
        "hit@1_popular": pop_hits / n,
        "value@1": nbo_value / n,
        "value@1_popular": pop_value / n,
        "uplift_value": (nbo_value / pop_value) if pop_value else float("inf"),
    }
    total = max(sum(shown.values()), 1)
    tail = [(float(r), shown[popular_order[r - 1]] / total) for r in range(1, len(offers) + 1)]
    return metrics, by_offer, tail


def train_nbo(
    frame: pd.DataFrame,
    config: NBOConfig | None = None,
    *,
    fit_at: float = 0.6,
    eval_at: float = 0.8,
    values: Mapping[str, float] | None = None,
    curve: bool = False,
) -> NBOResult:
    values = dict(values or offer_values(frame))
    offers = sorted(values)
    t_fit, t_eval = frame["time"].quantile(fit_at), frame["time"].quantile(eval_at)
    _, x, y, names, _ = dataset(frame, t_fit, t_eval, offers)
    model = NextBestOffer(config).fit(x, y, names, offers, values)
    users, xt, yt, _, profiles = dataset(frame, t_eval, None, offers, names)
    test = _Test(users, xt, yt, profiles, int(t_eval.timestamp() * 1000))
    metrics, by_offer, tail = _measure(model, test, y, values)
    points: list[tuple[float, float]] = []
    if curve:
        rows = np.random.default_rng(0).permutation(len(x))
        for share in (0.25, 0.5, 0.75, 1.0):
            kept = np.sort(rows[: max(2, int(len(rows) * share))])
            part = NextBestOffer(config).fit(x[kept], y[kept], names, offers, values)
            points.append((float(len(kept)), _measure(part, test, y[kept], values)[0]["auc"]))
    slices = {
        "features (fit)": span(frame[frame["time"] < t_fit]),
        "labels (fit)": span(frame[(frame["time"] >= t_fit) & (frame["time"] < t_eval)]),
        "test": span(frame[frame["time"] >= t_eval]),
    }
    return NBOResult(model, metrics, by_offer, points, tail, slices)


def tune_nbo(
    frame: pd.DataFrame,
    fixed: Mapping[str, Any],
    budget: int | None = None,
    progress: Progress | None = None,
    eval_at: float = 0.8,
) -> TuneResult:
    """Search `NBO_SPACE` by AUC on the history before the test window (`eval_at`): the same
    time cuts, made inside that earlier part; the test window is never read."""
    before = frame[frame["time"] < frame["time"].quantile(eval_at)]
    cut = before["time"].quantile(eval_at)
    todo = settings(NBO_SPACE, budget, fixed)
    grid = settings(NBO_SPACE, None, fixed)
    result = TuneResult(
        "nbo",
        "auc",
        "random" if len(todo) < len(grid) else "grid",
        {k: list(v) for k, v in NBO_SPACE.items()},
        span(before[before["time"] < cut]),
        span(before[before["time"] >= cut]),
    )
    for done, params in enumerate(todo, 1):
        started = time.perf_counter()
        scores = train_nbo(before, NBOConfig(**params), values=offer_values(before)).metrics
        auc = scores["auc"] if np.isfinite(scores["auc"]) else 0.0
        result.trials.append(Trial(params, auc, scores, time.perf_counter() - started))
        if progress is not None:
            progress(done, len(todo))
    return result


def write_nbo(
    frame: pd.DataFrame,
    config: NBOConfig,
    root: Path,
    *,
    tune: Tuning | None = None,
    active: Active | None = None,
) -> tuple[str, dict[str, Any], Path]:
    """Train next-best-offer on `frame` (tuned first with `tune`), beside the `active` model's
    parameters on the same cuts; save it, its card and its report under `root/<version>/`;
    returns the version, the card and the folder."""
    searched = None
    if tune is not None:
        fixed = config.model_dump(exclude_unset=True)
        searched = tune_nbo(frame, fixed, tune.budget, tune.progress)
        config = NBOConfig(**searched.best.params)
    result = train_nbo(frame, config, curve=True)
    metrics, tails = {"nbo": result.metrics}, {"nbo": result.tail}
    if active is not None and active.version and active.kind == "nbo":
        try:
            other = train_nbo(frame, NBOConfig(**active.params))
            metrics[f"active {active.version}"] = other.metrics
            tails[f"active {active.version}"] = other.tail
        except ValueError as exc:
            active = replace(active, reason=f"cannot refit: {exc}")
    now = datetime.now(UTC)
    version = new_version("nbo", now, root)
    folder = result.model.save(root / version)
    card = {
        "version": version,
        "model": "nbo",
        "params": config.model_dump(mode="json"),
        "created_at": now.isoformat(),
        "data": {
            **span(frame),
            "seq_from": int(frame["seq"].min()),
            "seq_to": int(frame["seq"].max()),
            "offers": result.model.offers,
        },
        "split": {"how": "time cuts at 60 % and 80 % of event times", "slices": result.slices},
        "metrics": metrics,
        "active": active_card(active, metrics),
        "tuning": searched.card() if searched is not None else None,
        "curve": [{"fit_users": int(n), "auc": a} for n, a in result.curve],
        "auc_by_offer": result.auc_by_offer,
        "libraries": library_versions(),
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    report = page(
        card,
        ["auc", "hit@1", "hit@1_popular", "value@1", "value@1_popular"],
        {"nbo": result.curve},
        ("users the offers were fitted on", "AUC on the test window (macro)"),
        tails,
        ("offer popularity rank (1 = most acquired)", "cumulative share of top offers"),
    )
    (folder / "report.html").write_text(report)
    return version, card, folder

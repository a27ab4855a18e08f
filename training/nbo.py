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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from engine.profiles.profile import CannotApply, apply, new_profile
from models.nbo import NBOConfig, NextBestOffer, feature_names, features
from training.train import library_versions, new_version


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


def offer_values(frame: pd.DataFrame) -> dict[str, float]:
    """Mean purchase value per item: what an acquisition is worth."""
    bought = frame[(frame["type"] == "item_purchased") & frame["value"].notna()]
    return {str(k): float(v) for k, v in bought.groupby("item_id")["value"].mean().items()}


def train_nbo(
    frame: pd.DataFrame,
    config: NBOConfig | None = None,
    *,
    fit_at: float = 0.6,
    eval_at: float = 0.8,
    values: Mapping[str, float] | None = None,
) -> NBOResult:
    from sklearn.metrics import roc_auc_score

    values = dict(values or offer_values(frame))
    offers = sorted(values)
    t_fit, t_eval = frame["time"].quantile(fit_at), frame["time"].quantile(eval_at)
    _, x, y, names, _ = dataset(frame, t_fit, t_eval, offers)
    model = NextBestOffer(config).fit(x, y, names, offers, values)
    users, xt, yt, _, profiles = dataset(frame, t_eval, None, offers, names)
    p = model.propensity(xt)
    by_offer = {
        offers[j]: float(roc_auc_score(yt[:, j], p[:, j]))
        for j in range(len(offers))
        if 0 < yt[:, j].sum() < len(yt)
    }
    aucs = list(by_offer.values())
    popular_order = [offers[j] for j in np.argsort(-y.sum(axis=0), kind="stable")]
    now = int(t_eval.timestamp() * 1000)
    nbo_hits = pop_hits = nbo_value = pop_value = 0.0
    buyers = [i for i in range(len(users)) if yt[i].any()]
    for i in buyers:
        got = {offers[j] for j in np.flatnonzero(yt[i])}
        top = model.rank(profiles[users[i]], now, k=1)
        if top and top[0].item in got:
            nbo_hits += 1
            nbo_value += values[top[0].item]
        held = profiles[users[i]]["held"]
        fallback = next((o for o in popular_order if o not in held), None)
        if fallback in got:
            pop_hits += 1
            pop_value += values[fallback]
    n = max(len(buyers), 1)
    return NBOResult(
        model,
        {
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            "offers_evaluated": float(len(aucs)),
            "buyers": float(len(buyers)),
            "hit@1": nbo_hits / n,
            "hit@1_popular": pop_hits / n,
            "value@1": nbo_value / n,
            "value@1_popular": pop_value / n,
            "uplift_value": (nbo_value / pop_value) if pop_value else float("inf"),
        },
        by_offer,
    )


def write_nbo(
    frame: pd.DataFrame, config: NBOConfig, root: Path
) -> tuple[str, dict[str, Any], Path]:
    """Train next-best-offer on `frame`, save it and its card under `root/<version>/`; returns
    the version, the card and the folder (the card has no split: `train_nbo` cuts in time)."""
    result = train_nbo(frame, config)
    now = datetime.now(UTC)
    version = new_version("nbo", now, root)
    folder = result.model.save(root / version)
    card = {
        "version": version,
        "model": "nbo",
        "params": config.model_dump(mode="json"),
        "created_at": now.isoformat(),
        "data": {
            "events": len(frame),
            "from": frame["time"].min().isoformat(),
            "to": frame["time"].max().isoformat(),
            "seq_from": int(frame["seq"].min()),
            "seq_to": int(frame["seq"].max()),
            "offers": result.model.offers,
        },
        "metrics": {"nbo": result.metrics},
        "auc_by_offer": result.auc_by_offer,
        "libraries": library_versions(),
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return version, card, folder

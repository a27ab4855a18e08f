"""Evaluating a model on a temporal split, beside whatever else is evaluated on the same split.

A model that builds its own input from the history (a time-aware one decays weights by age)
says so with an `interactions(frame, weights)` method; `interactions_for` uses it. A model that
may recommend what the user already used (`recommends_seen`, e.g. repeat purchase) is measured
with `repeats=True`: seen items stay in the lists and count when used again in the test part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.base import Recommender
from models.data import EventWeights, Interactions
from training import metrics

RELEVANT_TYPES = (
    "item_viewed",
    "item_added_to_cart",
    "item_purchased",
    "simulator_used",
    "item_rated",
)


@dataclass
class Evaluation:
    """The metrics of one model on one split, and its lists' spread over the popularity ranks
    (`tail`: (rank, share of all recommended slots) per item by training popularity)."""

    metrics: dict[str, float]
    tail: list[tuple[float, float]] = field(default_factory=list)


def interactions_for(
    model: Recommender, frame: pd.DataFrame, weights: EventWeights | None = None
) -> Interactions:
    """The matrix `model` fits and is scored on: its own (`model.interactions`) if it has one."""
    build = getattr(model, "interactions", None)
    if callable(build):
        data = build(frame, weights)
        assert isinstance(data, Interactions)
        return data
    return Interactions.from_frame(frame, weights)


def recommends_seen(model: Recommender | type[Recommender]) -> bool:
    return bool(getattr(model, "recommends_seen", False))


def relevant_items(
    train: Interactions,
    test: pd.DataFrame,
    types: Sequence[str] = RELEVANT_TYPES,
    *,
    repeats: bool = False,
) -> dict[str, set[str]]:
    """Per user, the items used in `test` that the user had not used in training (all the
    items used in `test`, with `repeats`)."""
    seen: dict[str, set[str]] = {}
    if not repeats:
        for user, row in train.user_index().items():
            seen[user] = set(train.history(row))
    held = test[test["item_id"].notna() & test["type"].isin(list(types))]
    out: dict[str, set[str]] = {}
    for user, items in held.groupby("user")["item_id"]:
        new = set(items.astype(str)) - seen.get(str(user), set())
        if new:
            out[str(user)] = new
    return out


def recommend_for(
    model: Recommender,
    train: Interactions,
    users: Sequence[str],
    k: int,
    batch: int | None = None,
    *,
    exclude_seen: bool = True,
) -> dict[str, list[str]]:
    """Top-k lists for `users`, from their training histories (empty for users unknown to the
    training data), seen items excluded unless `exclude_seen` is False. Users are scored
    `batch` at a time (default: as many as a bounded score array holds, `training.batch`)."""
    from training.batch import chunk_users

    batch = batch or chunk_users(train.shape[1])
    index = train.user_index()
    items = train.items
    out: dict[str, list[str]] = {}
    for s in range(0, len(users), batch):
        chunk = list(users[s : s + batch])
        rows = np.asarray([index.get(u, -1) for u in chunk])
        known = (rows >= 0).astype(np.float32)
        history = sp.diags(known) @ train.matrix[np.where(rows >= 0, rows, 0)]
        history = sp.csr_matrix(history)
        history.eliminate_zeros()
        scores = model.score_many(history)
        if exclude_seen:
            scores[history.nonzero()] = -np.inf
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        for u, row_scores, cand in zip(chunk, scores, top, strict=True):
            ordered = cand[np.argsort(-row_scores[cand], kind="stable")]
            out[u] = [str(items[i]) for i in ordered if np.isfinite(row_scores[i])]
    return out


def long_tail(recs: dict[str, list[str]], train: Interactions) -> list[tuple[float, float]]:
    """(popularity rank, share of recommended slots) for every item, rank 1 the item most
    users used in training: how far down the tail the lists reach."""
    users = np.asarray((train.matrix > 0).sum(axis=0)).ravel()
    order = np.argsort(-users, kind="stable")
    shown: dict[str, int] = {}
    for items in recs.values():
        for item in items:
            shown[item] = shown.get(item, 0) + 1
    total = max(sum(shown.values()), 1)
    return [
        (float(rank), shown.get(str(train.items[i]), 0) / total) for rank, i in enumerate(order, 1)
    ]


def run(
    model: Recommender,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
    fit: bool = True,
    repeats: bool = False,
) -> Evaluation:
    """`evaluate`, with the long tail of the lists."""
    train = interactions_for(model, train_frame, weights)
    if fit:
        model.fit(train)
    truth = relevant_items(train, test_frame, repeats=repeats)
    recs = recommend_for(model, train, sorted(truth), k, exclude_seen=not repeats)
    users_per_item = np.asarray((train.matrix > 0).sum(axis=0)).ravel() / max(train.shape[0], 1)
    popularity = {str(i): float(p) for i, p in zip(train.items, users_per_item, strict=True)}
    scores = {
        f"ndcg@{k}": metrics.ndcg_at_k(recs, truth, k),
        f"recall@{k}": metrics.recall_at_k(recs, truth, k),
        f"hr@{k}": metrics.hit_rate_at_k(recs, truth, k),
        f"map@{k}": metrics.map_at_k(recs, truth, k),
        "coverage": metrics.coverage(recs, [str(i) for i in train.items], k),
        "novelty": metrics.novelty(recs, popularity, k),
        "users": float(len(truth)),
    }
    return Evaluation(scores, long_tail(recs, train))


def evaluate(
    model: Recommender,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
    fit: bool = True,
    repeats: bool = False,
) -> dict[str, float]:
    """Fit on `train_frame` (unless `fit` is False) and measure on `test_frame`."""
    return run(
        model, train_frame, test_frame, k=k, weights=weights, fit=fit, repeats=repeats
    ).metrics

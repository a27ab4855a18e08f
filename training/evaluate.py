"""Evaluating a model on a temporal split, beside whatever else is evaluated on the same split."""

from __future__ import annotations

from collections.abc import Sequence

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


def relevant_items(
    train: Interactions, test: pd.DataFrame, types: Sequence[str] = RELEVANT_TYPES
) -> dict[str, set[str]]:
    """Per user, the items used in `test` that the user had not used in training."""
    seen: dict[str, set[str]] = {}
    index = train.user_index()
    for user, row in index.items():
        seen[user] = set(train.history(row))
    held = test[test["item_id"].notna() & test["type"].isin(list(types))]
    out: dict[str, set[str]] = {}
    for user, items in held.groupby("user")["item_id"]:
        new = set(items.astype(str)) - seen.get(str(user), set())
        if new:
            out[str(user)] = new
    return out


def recommend_for(
    model: Recommender, train: Interactions, users: Sequence[str], k: int, batch: int = 2048
) -> dict[str, list[str]]:
    """Top-k lists for `users`, from their training histories (empty for users unknown to the
    training data), seen items excluded."""
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
        scores[history.nonzero()] = -np.inf  # seen items are not recommended
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        for u, row_scores, cand in zip(chunk, scores, top, strict=True):
            ordered = cand[np.argsort(-row_scores[cand], kind="stable")]
            out[u] = [str(items[i]) for i in ordered if np.isfinite(row_scores[i])]
    return out


def evaluate(
    model: Recommender,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    *,
    k: int = 10,
    weights: EventWeights | None = None,
    fit: bool = True,
) -> dict[str, float]:
    """Fit on `train_frame` (unless `fit` is False) and measure on `test_frame`."""
    train = Interactions.from_frame(train_frame, weights)
    if fit:
        model.fit(train)
    truth = relevant_items(train, test_frame)
    recs = recommend_for(model, train, sorted(truth), k)
    users_per_item = np.asarray((train.matrix > 0).sum(axis=0)).ravel() / max(train.shape[0], 1)
    popularity = {str(i): float(p) for i, p in zip(train.items, users_per_item, strict=True)}
    return {
        f"ndcg@{k}": metrics.ndcg_at_k(recs, truth, k),
        f"recall@{k}": metrics.recall_at_k(recs, truth, k),
        f"hr@{k}": metrics.hit_rate_at_k(recs, truth, k),
        f"map@{k}": metrics.map_at_k(recs, truth, k),
        "coverage": metrics.coverage(recs, [str(i) for i in train.items], k),
        "novelty": metrics.novelty(recs, popularity, k),
        "users": float(len(truth)),
    }

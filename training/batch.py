"""Top-k lists for many users at once (`nerve recommend-batch`, evaluation harnesses), scored a
chunk of users at a time so that memory stays bounded whatever the number of users and items.

A chunk holds a few users x items float32 arrays at once (the model's scores, the tie-broken copy
`score_many` returns, the temporaries of the selection), so its size in users is the budget over
three times the bytes of one user's scores: ~1,800 users at 10,000 items, ~360 at 50,000.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.data import Interactions

BUDGET = 64 << 20
"""Bytes of scores held at once."""


def chunk_users(n_items: int, budget: int = BUDGET) -> int:
    """How many users to score together under `budget` bytes."""
    return max(1, budget // (3 * 4 * max(n_items, 1)))


def best(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the indexes of its `k` best finite scores, best first (ties by index)."""
    kk = min(k, scores.shape[1])
    if kk <= 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(scores.shape[0])]
    cand = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    out = []
    for row, c in zip(scores, cand, strict=True):
        c = c[np.lexsort((c, -row[c]))]
        out.append(c[np.isfinite(row[c])])
    return out


def recommend_many(
    model: Recommender,
    data: Interactions,
    users: Sequence[str],
    k: int,
    *,
    budget: int = BUDGET,
) -> Iterator[tuple[str, list[str]]]:
    """(user, top-k item ids) for each of `users`, in order, from their histories in `data`
    (the popular items for a user `data` does not know); items in the history are skipped."""
    items = model.candidates()
    index = data.user_index()
    step = chunk_users(len(items), budget)
    for s in range(0, len(users), step):
        chunk = list(users[s : s + step])
        rows = np.fromiter((index.get(u, -1) for u in chunk), dtype=np.int64, count=len(chunk))
        known = rows >= 0
        history = sp.csr_matrix(
            sp.diags(known.astype(np.float32)) @ data.matrix[np.where(known, rows, 0)]
        )
        history.eliminate_zeros()
        scores = model.score_many(history)
        scores[history.nonzero()] = -np.inf  # what the user already has is not recommended
        for user, top in zip(chunk, best(scores, k), strict=True):
            yield user, [str(items[i]) for i in top]
        del scores, history


def write_csv(
    model: Recommender,
    data: Interactions,
    users: Sequence[str],
    k: int,
    output: Path,
    *,
    budget: int = BUDGET,
) -> int:
    """Write `user_id,item_id,rank` rows for `users` to `output` as they are scored; returns
    the number of rows written."""
    written = 0
    with output.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rank"])
        for user, recs in recommend_many(model, data, users, k, budget=budget):
            for rank, item in enumerate(recs, 1):
                w.writerow([user, item, rank])
            written += len(recs)
    return written

"""Candidates best first, cheaply: the pipeline walks them until the rules have let `k` through,
so usually only the best few need ordering. Also the caches that make a repeated order free:
the full order of a score array that never changes, and the neighbours of a "similar" anchor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from engine.recommender.batch import like_rows
from models.scorer import Scorer

NEIGHBOUR_CACHE = 20_000
"""(model version, anchor) entries of the similar-items cache (~2 KiB each)."""


class Ranking:
    """(index, score) of the candidates best first, with the caches of one `Serving`."""

    def __init__(self) -> None:
        self._orders: dict[int, tuple[np.ndarray, list[int]]] = {}
        self._neighbours: dict[tuple[str, str, int], tuple[list[int], list[float]]] = {}

    def ranked(self, scores: np.ndarray, k: int) -> Iterator[tuple[int, float]]:
        """(index, score) of the candidates, best first."""
        if scores.flags.writeable and len(scores) > 2000:
            top = _top(scores, k)  # the best block as two lists, then (rarely) the rest
            yield from zip(top.tolist(), scores[top].tolist(), strict=True)
            rest = np.setdiff1d(np.arange(len(scores)), top, assume_unique=True)
            rest = rest[np.lexsort((rest, -scores[rest]))]
            yield from zip(rest.tolist(), scores[rest].tolist(), strict=True)
            return
        for idx in self._order(scores, k):
            yield idx, float(scores[idx])

    def similar(
        self, version: str, model: Scorer, anchor: str, k: int
    ) -> Iterator[tuple[int, float]] | None:
        """(index, score) of the items like `anchor`, best first (None if the model cannot
        tell). They are the same for every user, so the best few are kept per (model version,
        anchor): a popular item's neighbours are scored once, not on every view."""
        self.prefetch(version, model, [anchor], k)
        hit = self._neighbours.get((version, anchor, k))
        return None if hit is None else _then_the_rest(hit, model, anchor, k)

    def prefetch(self, version: str, model: Scorer, anchors: Iterable[str], k: int) -> None:
        """Score the anchors whose neighbours are not cached yet, all in one batch."""
        missing = sorted({a for a in anchors if (version, a, k) not in self._neighbours})
        if not missing:
            return
        rows = like_rows(model, missing)
        if rows is None:
            return
        for anchor, scores in zip(missing, rows, strict=True):
            want = min(len(scores), 4 * k + 64)
            order = best_few(scores, k)[:want]
            self._neighbours[(version, anchor, k)] = (order, scores[order].tolist())
        while len(self._neighbours) > NEIGHBOUR_CACHE:
            self._neighbours.pop(next(iter(self._neighbours)))

    def _order(self, scores: np.ndarray, k: int) -> Iterable[int]:
        """Candidates best first; for a model whose scores never change (read-only arrays,
        e.g. popularity) the full order is computed once."""
        if not scores.flags.writeable:
            hit = self._orders.get(id(scores))
            if hit is None or hit[0] is not scores:
                hit = (scores, np.lexsort((np.arange(len(scores)), -scores)).tolist())
                self._orders[id(scores)] = hit
            return hit[1]
        return best_first(scores, k)


def _then_the_rest(
    hit: tuple[list[int], list[float]], model: Scorer, anchor: str, k: int
) -> Iterator[tuple[int, float]]:
    """The cached best neighbours, then (only if the rules removed that many) the rest."""
    yield from zip(*hit, strict=True)
    if len(hit[0]) < len(model.candidates()):
        rows = like_rows(model, [anchor])
        assert rows is not None  # it gave scores when the neighbours were cached
        scores = rows[0]
        done = set(hit[0])
        for idx in best_first(scores, k):
            if idx not in done:
                yield idx, float(scores[idx])


def best_first(scores: np.ndarray, k: int) -> Iterator[int]:
    """Candidate indexes by decreasing score (ties by index).

    The best few first: a threshold estimated from every 16th score selects about twice the
    candidates a list of `k` needs (every item at or above it, so the order stays exact), and
    the rest is ordered only if the rules removed that many. An exact partition backs up a
    threshold that selected too few. ~10x cheaper than a partition of the whole catalogue."""
    n = len(scores)
    if n <= 2000:
        yield from np.lexsort((np.arange(n), -scores)).tolist()
        return
    top = _top(scores, k)
    yield from top.tolist()
    rest = np.setdiff1d(np.arange(n), top, assume_unique=True)
    rest = rest[np.lexsort((rest, -scores[rest]))]
    yield from rest.tolist()


def best_few(scores: np.ndarray, k: int) -> list[int]:
    """The first `best_first` indexes: at least `min(n, 4 k + 64)` of them, in one list."""
    if len(scores) <= 2000:
        return np.lexsort((np.arange(len(scores)), -scores)).tolist()
    return _top(scores, k).tolist()


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Every index scoring at or above a threshold that keeps about twice what a list of `k`
    needs, best first (ties by index); at least `min(n, 4 k + 64)`."""
    n = len(scores)
    want = min(n, 4 * k + 64)
    sample = scores[::16]
    rank = max(1, 2 * want // 16)
    threshold = np.partition(sample, len(sample) - rank)[len(sample) - rank]
    top = np.flatnonzero(scores >= threshold) if np.isfinite(threshold) else np.empty(0, int)
    if len(top) < want:
        top = np.argpartition(-scores, want - 1)[:want]
    return top[np.lexsort((top, -scores[top]))]

"""Scoring many users with one model at once, and what a model reads.

`score_rows` gives one score array per user for a batch: one matrix product per model and
batch where the model allows it, instead of one fold-in and one catalogue scan per user. A
user's scores never depend on who else is in the batch (tested): a request, `nerve explain` and
the batch path all call this with their users, one or a hundred, and must rank alike.

- ALS (`models.als.ImplicitALS`): the exact fold-in of `score_history` for every user, batched
  (one stacked solve), then one (users x factors) @ (factors x items) product. numpy sends a
  one-row product to gemv, whose sums round differently from gemm's, so a single user is
  computed as a batch of two (the second row is discarded).
- Any other `models.base.Recommender`: `score_many` on the users' history rows (its products
  are sparse x dense or sparse x sparse, computed row by row: batch-independent).
- A model whose scores are the same for every user (read-only arrays, e.g. popularity): its
  one array, shared.
- Any other `Scorer` (next-best-offer, plug-ins): `score` per user.

BLAS may use both cores for a 100-row product, and under load that costs 20x more than one
thread (measured: 25 ms against 1 ms for 100 x 16 x 10,000), so the first batch limits BLAS
to one thread in this process: the service is one event loop, and parallelism comes from
replicas.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.als import ImplicitALS
from models.base import TIE_BREAK, Recommender
from models.data import history_rows
from models.scorer import Scorer

HISTORY, PROFILE = "history", "profile"
"""What a model may read of a user (`reads`)."""

_limited = False
_constants: weakref.WeakKeyDictionary[Any, np.ndarray | None] = weakref.WeakKeyDictionary()


def one_blas_thread() -> None:
    """Limit BLAS to one thread in this process (once; see the module docstring)."""
    global _limited
    if _limited:
        return
    _limited = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return
    threadpool_limits(limits=1, user_api="blas")


def constant_scores(model: Scorer) -> np.ndarray | None:
    """The scores of a model that gives every user the same (read-only) array, else None
    (asked once per model object)."""
    try:
        return _constants[model]
    except (KeyError, TypeError):
        pass
    scores: np.ndarray | None = model.score({}, {}, 0)
    if scores is not None and (
        scores.flags.writeable or model.score({}, {"": 1.0}, 0) is not scores
    ):
        scores = None
    with contextlib.suppress(TypeError):  # not weakly referenceable: asked every time
        _constants[model] = scores
    return scores


def reads(model: Scorer) -> frozenset[str]:
    """What of a user the model's scores depend on: `history`, `profile`, both or neither.

    A model may say so itself (a `reads` attribute); an item model (`Recommender`) reads the
    history only (`Recommender.score`), unless its scores are constant; any other reads both."""
    declared = getattr(model, "reads", None)
    if isinstance(declared, frozenset | set):
        return frozenset(declared)
    if constant_scores(model) is not None:
        return frozenset()
    if isinstance(model, Recommender) and type(model).score is Recommender.score:
        return frozenset({HISTORY})
    return frozenset({HISTORY, PROFILE})


def score_rows(
    model: Scorer,
    profiles: Sequence[Mapping[str, Any]],
    histories: Sequence[Mapping[str, float]],
    now_ms: int | Sequence[int],
) -> list[np.ndarray]:
    """One score array per user (`profiles[i]`, `histories[i]`), as `model.score` would give
    at `now_ms` (one time for all, or one per user; only a model scored per user reads it)."""
    if not histories:
        return []
    one_blas_thread()
    kind = type(model)
    if isinstance(model, ImplicitALS) and _plain(kind, ImplicitALS):
        return list(_als(model, histories))
    constant = constant_scores(model)
    if constant is not None:
        return [constant] * len(histories)
    if isinstance(model, Recommender) and _plain(kind, Recommender):
        rows = history_rows(histories, model.candidates(), model._index())
        return list(model.score_many(rows))
    nows = [now_ms] * len(histories) if isinstance(now_ms, int) else now_ms
    return [model.score(p, h, t) for p, h, t in zip(profiles, histories, nows, strict=True)]


def _plain(kind: type[Any], base: type[Any]) -> bool:
    """`kind` scores a user as `base` does (it overrides neither `score` nor `score_history`):
    a model that reads the profile or the time (e.g. a recency decay) is scored one by one."""
    return kind.score is base.score and kind.score_history is base.score_history


def like_rows(model: Scorer, anchors: Sequence[str]) -> list[np.ndarray] | None:
    """The `score_like` arrays of `anchors` (None if the model has no notion of similarity)."""
    kind = type(model)
    plain = isinstance(model, Recommender) and kind.score_like is Recommender.score_like
    if plain and (_plain(kind, Recommender) or _plain(kind, ImplicitALS)):
        return score_rows(model, [{}] * len(anchors), [{a: 1.0} for a in anchors], 0)
    out = [model.score_like(a) for a in anchors]
    return None if any(s is None for s in out) else [s for s in out if s is not None]


_grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _gram(factors: np.ndarray) -> np.ndarray:
    """Y'Y of an ALS model's item factors (computed once per factor array)."""
    hit = _grams.get(id(factors))
    if hit is None or hit[0] is not factors:
        if len(_grams) > 8:
            _grams.clear()
        hit = (factors, factors.T @ factors)
        _grams[id(factors)] = hit
    return hit[1]


def _als(model: ImplicitALS, histories: Sequence[Mapping[str, float]]) -> np.ndarray:
    """`ImplicitALS.score_history` for many histories: the same exact fold-in per user, one
    product for all."""
    c = model.config
    factors: np.ndarray = model.item_factors
    assert model.popularity is not None
    index = model._index()
    gram = _gram(factors)
    f = factors.shape[1]
    alpha, reg = np.float32(c.alpha), np.float32(c.regularization)  # type: ignore[attr-defined]
    hist = [[(index[h], w) for h, w in history.items() if h in index] for history in histories]
    users = np.zeros((max(2, len(hist)), f), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for u, pairs in enumerate(hist):
        if pairs:  # an empty history folds in to zero
            by_length.setdefault(len(pairs), []).append(u)
    diagonal = np.arange(f)
    for length, members in by_length.items():
        # users with as many items as each other: stacked, unpadded (no sum depends on the
        # batch), solved together
        pairs = [p for u in members for p in hist[u]]
        cols = np.fromiter((p for p, _ in pairs), np.int64, len(pairs)).reshape(-1, length)
        conf = np.fromiter((w for _, w in pairs), np.float32, len(pairs)).reshape(-1, length)
        conf *= alpha
        y = factors[cols]  # users x length x factors
        a = np.matmul(y.transpose(0, 2, 1) * conf[:, None, :], y)
        a += gram
        a[:, diagonal, diagonal] += reg
        b = np.matmul(y.transpose(0, 2, 1), (1.0 + conf)[:, :, None])
        users[members] = np.linalg.solve(a, b)[:, :, 0]
    scores = users @ factors.T
    scores += TIE_BREAK * model.popularity
    return scores[: len(histories)]


def explain_rows(
    model: Scorer,
    profiles: Sequence[Mapping[str, Any]],
    histories: Sequence[Mapping[str, float]],
    chosen: Sequence[Sequence[str]],
    now_ms: Sequence[int],
) -> list[dict[str, str]]:
    """`model.explain` of each user's chosen items (an empty history explains nothing).

    ALS (`because`: the history item whose factors agree most with the item's) is computed
    for the whole batch in one gather, each (history item, chosen item) dot product on its own
    row in float64 (the float32 factors multiply exactly), so no result depends on the batch;
    any other model explains per user."""
    kind: Any = type(model)
    if not (
        isinstance(model, ImplicitALS)
        and kind.explain is Recommender.explain
        and kind.because is ImplicitALS.because
    ):
        return [
            model.explain(p, h, c, t) if h else {}
            for p, h, c, t in zip(profiles, histories, chosen, now_ms, strict=True)
        ]
    return _als_because(model, histories, chosen)


def _als_because(
    model: ImplicitALS, histories: Sequence[Mapping[str, float]], chosen: Sequence[Sequence[str]]
) -> list[dict[str, str]]:
    index, names = model._index(), _names(model)
    hist_cols: list[int] = []
    hist_w: list[float] = []
    want: list[tuple[int, str, int]] = []  # (user, item, column)
    starts, lengths = [], []
    for u, (history, items) in enumerate(zip(histories, chosen, strict=True)):
        start = len(hist_cols)
        for h, w in history.items():
            if h in index:
                hist_cols.append(index[h])
                hist_w.append(w)
        starts.append(start)
        lengths.append(len(hist_cols) - start)
        if lengths[-1]:
            want += [(u, item, index[item]) for item in items if item in index]
    out: list[dict[str, str]] = [{} for _ in histories]
    if not want:
        return out
    y = _float64(model.item_factors)
    users = np.fromiter((u for u, _, _ in want), np.int64, len(want))
    cols = np.fromiter((c for _, _, c in want), np.int64, len(want))
    rep = np.asarray(lengths, dtype=np.int64)[users]  # one pair per history item
    first = np.asarray(starts, dtype=np.int64)[users]
    offsets = np.cumsum(rep) - rep
    pair_want = np.repeat(np.arange(len(want)), rep)
    pair_hist = np.repeat(first - offsets, rep) + np.arange(int(rep.sum()))
    hcols = np.asarray(hist_cols, dtype=np.int64)[pair_hist]
    contrib = np.einsum("ij,ij->i", y[hcols], y[cols[pair_want]])
    contrib *= np.asarray(hist_w, dtype=np.float64)[pair_hist]
    best = np.maximum.reduceat(contrib, offsets)
    # the first history item reaching its item's maximum (argmax's tie rule)
    at = np.flatnonzero(contrib == best[pair_want])
    _, first_at = np.unique(pair_want[at], return_index=True)
    winner = hcols[at[first_at]].tolist()
    for j, (u, item, _) in enumerate(want):
        if best[j] > 0:
            out[u][item] = f"item:{names[winner[j]]}"
    return out


_cast: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _float64(factors: np.ndarray) -> np.ndarray:
    """A float64 copy of an ALS model's item factors (made once per factor array)."""
    hit = _cast.get(id(factors))
    if hit is None or hit[0] is not factors:
        if len(_cast) > 8:
            _cast.clear()
        hit = (factors, factors.astype(np.float64))
        _cast[id(factors)] = hit
    return hit[1]


_name_lists: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def _names(model: Scorer) -> list[str]:
    """The model's candidates as a list of str (numpy's per-element indexing is slow)."""
    names = _name_lists.get(model)
    if names is None or len(names) != len(model.candidates()):
        names = [str(i) for i in model.candidates()]
        _name_lists[model] = names
    return names

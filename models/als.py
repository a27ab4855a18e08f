"""Implicit matrix factorisation by alternating least squares (Hu, Koren, Volinsky 2008).

Confidence c_ui = 1 + alpha * w_ui for every observed interaction (preference 1), 1 elsewhere
(preference 0). Each half-step solves, for every user u at once,

    (Y'Y + Y' (C_u - I) Y + lambda I) x_u = Y' C_u p_u

by a few steps of conjugate gradient started from the previous factors (Takacs et al. 2011), as
implicit does. A small catalogue takes whole-matrix dense BLAS products; otherwise the rows go
in blocks of ~4,096 observed entries, each through all its CG steps with the other side's factors
gathered once, so nothing of size users x items is ever built and a step works in cache.

Serving folds a history in the same way (a user never seen at training is no special case), so
the artifact is the item factors alone.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from models.base import TIE_BREAK, ModelConfig, Recommender
from models.data import Interactions

BLOCK = 4_096  # observed entries per block of rows: its gathered factors (1 MiB) stay in cache


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """BLAS limited to one thread inside the `with`, restored after: a fit's products are small
    (a block's rows x factors x factors), and waking a second BLAS thread for each cost more
    CPU than it saved (measured: about twice the CPU time of one thread for the same fit, and
    no faster)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class ALSConfig(ModelConfig):
    factors: int = Field(default=64, ge=1)
    iterations: int = Field(default=15, ge=1)
    regularization: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=10.0, gt=0, description="Confidence per unit of weight")
    cg_steps: int = Field(default=3, ge=1, description="Conjugate gradient steps per solve")
    fold_in_steps: int = Field(
        default=16, ge=1, description="CG steps when serving a history (exact at `factors`)"
    )


DENSE_LIMIT = 20_000_000  # a x b entries above which a dense copy of the matrix is too big
DENSE_FILL = 1 / 6  # observed share above which dense BLAS beats blocks (measured at 41-5k items)


def solve(
    conf: sp.csr_matrix,
    other: np.ndarray,
    start: np.ndarray,
    reg: float,
    steps: int,
    *,
    block: int = BLOCK,
) -> np.ndarray:
    """Factors for every row of `conf` (values alpha * w on observed entries) given the other
    side's factors, by `steps` of conjugate gradient from `start` (the item half of a fit
    passes the transposed matrix); rows go about `block` observed entries at a time, which
    changes the cost, never the result."""
    gram = other.T @ other + reg * np.eye(other.shape[1], dtype=np.float32)
    entries = conf.shape[0] * conf.shape[1]
    if entries <= DENSE_LIMIT and conf.nnz >= DENSE_FILL * entries:
        # A small, well-filled matrix (a catalogue of tens of items): dense BLAS products over
        # every entry cost less than the blocks' per-entry work on the observed ones.
        dense = np.asarray(sp.csr_matrix(conf).toarray(), dtype=np.float32)
        dense_target = ((dense > 0) + dense) @ other  # Y' C_u p_u

        def dense_a(x: np.ndarray) -> np.ndarray:
            return np.asarray(x @ gram + (dense * (x @ other.T)) @ other, dtype=np.float32)

        return _cg(dense_a, dense_target, start, steps)
    conf = sp.csr_matrix(conf)
    conf.sum_duplicates()
    indptr, cols, cm1 = conf.indptr, conf.indices, np.asarray(conf.data, dtype=np.float32)
    out = np.empty((conf.shape[0], other.shape[1]), dtype=np.float32)
    # Every row's CG is independent, so the rows go a block at a time, each through all its
    # steps: the other side's factors are gathered once per solve instead of once per step,
    # and what a step reads stays in cache (about 2x faster than whole-matrix steps at 10k
    # items, and 2.5x less memory).
    cuts = np.searchsorted(indptr, np.arange(block, indptr[-1], block), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [conf.shape[0]]]))
    for lo, hi in itertools.pairwise(bounds):
        s, e = indptr[lo], indptr[hi]
        out[lo:hi] = _solve_block(
            indptr[lo : hi + 1] - s, cols[s:e], cm1[s:e], other, start[lo:hi], gram, steps
        )
    return out


def _solve_block(
    indptr: np.ndarray,
    cols: np.ndarray,
    cm1: np.ndarray,
    other: np.ndarray,
    start: np.ndarray,
    gram: np.ndarray,
    steps: int,
) -> np.ndarray:
    """`solve` on a block of rows whose observed entries are `cols` (confidence - 1: `cm1`),
    `indptr` counting from 0."""
    y = np.take(other, cols, axis=0)  # row k: the factors of the k-th observed entry
    counts = np.diff(indptr)
    # Sums over each row's entries as one sparse product with y, its values set per use.
    rows = sp.csr_matrix((1.0 + cm1, np.arange(len(cols)), indptr), shape=(len(counts), len(y)))
    target = np.asarray(rows @ y, dtype=np.float32)  # Y' C_u p_u

    def times_a(x: np.ndarray) -> np.ndarray:
        pred = np.einsum("ij,ij->i", y, np.repeat(x, counts, axis=0))  # x_u . y_i, observed
        pred *= cm1
        rows.data = pred
        out = np.asarray(x @ gram, dtype=np.float32)
        out += rows @ y
        return out

    return _cg(times_a, target, start, steps)


def _cg(
    times_a: Callable[[np.ndarray], np.ndarray], target: np.ndarray, start: np.ndarray, steps: int
) -> np.ndarray:
    """`steps` of conjugate gradient on every row at once, from `start`."""
    x = start.astype(np.float32, copy=True)
    r = target - times_a(x)
    p = r.copy()
    rs_old = np.einsum("ij,ij->i", r, r)
    for _ in range(steps):
        ap = times_a(p)
        denom = np.einsum("ij,ij->i", p, ap)
        step = np.divide(rs_old, denom, out=np.zeros_like(rs_old), where=denom > 1e-20)
        x += step[:, None] * p
        r -= step[:, None] * ap
        rs_new = np.einsum("ij,ij->i", r, r)
        beta = np.divide(rs_new, rs_old, out=np.zeros_like(rs_new), where=rs_old > 1e-20)
        p = r + beta[:, None] * p
        rs_old = rs_new
    return x


class ImplicitALS(Recommender):
    name = "als"
    Config = ALSConfig

    def _fit(self, data: Interactions) -> None:
        c = self.config
        assert isinstance(c, ALSConfig)
        rng = np.random.default_rng(c.seed)
        conf = data.matrix.astype(np.float32) * np.float32(c.alpha)
        n_users, n_items = conf.shape
        users = (rng.standard_normal((n_users, c.factors)) * 0.01).astype(np.float32)
        items = (rng.standard_normal((n_items, c.factors)) * 0.01).astype(np.float32)
        conf_t = conf.T.tocsr()  # items x users: a copy of the entries, kept for every half
        with one_blas_thread():
            for _ in range(c.iterations):
                users = solve(conf, items, users, c.regularization, c.cg_steps)
                items = solve(conf_t, users, items, c.regularization, c.cg_steps)
        self.item_factors = items
        self._gram: np.ndarray | None = None

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        c = self.config
        assert isinstance(c, ALSConfig)
        if rows.shape[0] <= 4:  # serving: an exact solve over the user's few items is cheaper
            users = np.vstack([self._fold_in(rows[i]) for i in range(rows.shape[0])])
            return users @ self.item_factors.T
        start = np.zeros((rows.shape[0], c.factors), dtype=np.float32)
        users = solve(
            rows * np.float32(c.alpha), self.item_factors, start, c.regularization, c.fold_in_steps
        )
        return users @ self.item_factors.T

    def _fold_in(self, row: sp.csr_matrix) -> np.ndarray:
        """x = (Y'Y + Y_u' (C_u - I) Y_u + lambda I)^-1 Y_u' c_u, with Y_u the user's items."""
        c = self.config
        assert isinstance(c, ALSConfig)
        if self._gram is None:
            self._gram = self.item_factors.T @ self.item_factors
        y = self.item_factors[row.indices]
        conf = row.data.astype(np.float32) * np.float32(c.alpha)
        ridge = c.regularization * np.eye(c.factors, dtype=np.float32)
        a = self._gram + (y.T * conf) @ y + ridge
        return np.asarray(np.linalg.solve(a, y.T @ (1.0 + conf)), dtype=np.float32)

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        y = self.item_factors
        return self._strongest(history, items, lambda h, i: y[h] @ y[i].T)

    def score_history(self, history: Mapping[str, float]) -> np.ndarray:
        """`_fold_in` without building a sparse row: the serving path, one user at a time."""
        c = self.config
        assert isinstance(c, ALSConfig) and self.popularity is not None
        index = self._index()
        pairs = [(index[h], w) for h, w in history.items() if h in index]
        if self._gram is None:
            self._gram = self.item_factors.T @ self.item_factors
        x = np.zeros(c.factors, dtype=np.float32)
        if pairs:
            cols = np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs))
            conf = np.fromiter((w for _, w in pairs), dtype=np.float32, count=len(pairs))
            conf *= np.float32(c.alpha)
            y = self.item_factors[cols]
            a = (y.T * conf) @ y
            a += self._gram
            a.flat[:: c.factors + 1] += c.regularization
            x = np.linalg.solve(a, y.T @ (1.0 + conf)).astype(np.float32)
        return self.item_factors @ x + TIE_BREAK * self.popularity

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors}

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.item_factors = arrays["item_factors"]
        self._gram = None

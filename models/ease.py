"""EASE (Steck, 2019): a closed-form item-item linear model, B = I - P diagMat(1 / diag(P)) with
P = (X'X + lambda I)^-1 and a zero diagonal.

One dense items x items float32 matrix is the model, and the fit works inside it: the Gram matrix
is filled a block of rows at a time (never a second items x items array), then inverted in place
by Cholesky (X'X + lambda I is symmetric positive definite). Float32 is enough: lambda bounds the
condition number, and serving ranks, it does not solve. The weights are kept C-contiguous, after
fit and after load, because scoring a history reads rows of B: with any other layout every
single-user product would first copy the whole matrix. Fine up to ~20,000 items (1.6 GB);
50,000 items would take 10 GB and hours of inversion: serve `itemknn` or `als` there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
from pydantic import Field

from models.base import ModelConfig, Recommender
from models.data import Interactions

BLOCK = 1 << 22
"""Entries of the blocks the Gram matrix is built in (16 MiB of float32)."""


class EASEConfig(ModelConfig):
    l2: float = Field(default=200.0, gt=0, description="Ridge penalty lambda")
    binary: bool = Field(default=True, description="Fit on 0/1 instead of weights")


def gram(x: sp.csr_matrix, out: np.ndarray) -> np.ndarray:
    """X'X into `out` (items x items), a block of rows at a time."""
    xt = sp.csr_matrix(x.T)
    n = x.shape[1]
    step = max(1, BLOCK // max(n, 1))
    for s in range(0, n, step):
        out[s : s + step] = (xt[s : s + step] @ x).toarray()
    return out


def symmetrize_lower(a: np.ndarray) -> None:
    """Copy the lower triangle of the square C-ordered `a` onto its upper, in place."""
    n = a.shape[0]
    step = max(1, BLOCK // max(n, 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        a[s:e, e:] = a[e:, s:e].T
        block = a[s:e, s:e]
        block[:] = np.tril(block) + np.tril(block, -1).T


def inverse_in_place(a: np.ndarray) -> np.ndarray:
    """The inverse of the symmetric positive definite, C-ordered float32 `a`, written over it."""
    f = a.T  # the same symmetric matrix, Fortran-ordered: LAPACK works on it in place
    c, info = lapack.spotrf(f, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed ({info}); raise l2")
    inv, info = lapack.spotri(c, lower=0, overwrite_c=1)
    if info != 0 or not np.shares_memory(inv, a):
        raise np.linalg.LinAlgError(f"EASE: inversion failed ({info})")
    symmetrize_lower(a)  # LAPACK's upper triangle of `f` is the lower triangle of `a`
    return a


class EASE(Recommender):
    name = "ease"
    Config = EASEConfig

    def _fit(self, data: Interactions) -> None:
        assert isinstance(self.config, EASEConfig)
        x = sp.csr_matrix(data.matrix, dtype=np.float32, copy=True)
        if self.config.binary:
            x.data[:] = 1.0
        n = x.shape[1]
        b = gram(x, np.empty((n, n), dtype=np.float32))
        b.flat[:: n + 1] += np.float32(self.config.l2)
        inverse_in_place(b)
        diag = b.diagonal().copy()
        b /= -diag[None, :]
        b.flat[:: n + 1] = 0.0
        self.weights = b

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        assert isinstance(self.config, EASEConfig)
        if self.config.binary:
            rows = (rows > 0).astype(np.float32)
        return np.asarray(rows @ self.weights)

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        assert isinstance(self.config, EASEConfig)
        if self.config.binary:
            history = {h: 1.0 for h in history}
        return self._strongest(history, items, lambda h, i: self.weights[np.ix_(h, i)])

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        # artifacts saved before the fit kept C order are Fortran-ordered: fix them once here
        self.weights = np.ascontiguousarray(arrays["weights"], dtype=np.float32)

"""Item-to-item similarity: cosine between items' user vectors, pruned to the nearest
neighbours, with shrinkage for items seen by few users. Also what "similar items" serves:
`similar(item)` is that item's row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from models.base import ModelConfig, Recommender, top_k
from models.data import Interactions
from models.scorer import Scored

BLOCK = 1 << 21
"""Entries (float64) of the blocks of the cosine matrix computed at once (16 MiB): the fit never
holds the items x items matrix, only the k neighbours of each item."""


class ItemKNNConfig(ModelConfig):
    neighbors: int = Field(default=100, ge=1, description="Kept per item")
    shrink: float = Field(default=10.0, ge=0, description="Damps pairs with little support")
    binary: bool = Field(default=True, description="Cosine on 0/1 instead of weights")


class ItemKNN(Recommender):
    name = "itemknn"
    Config = ItemKNNConfig

    def _fit(self, data: Interactions) -> None:
        assert isinstance(self.config, ItemKNNConfig)
        x = sp.csr_matrix(data.matrix, dtype=np.float64, copy=True)
        if self.config.binary:
            x.data[:] = 1.0
        n = x.shape[1]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xt = sp.csr_matrix(x.T)
        k = min(self.config.neighbors, n - 1)
        step = max(1, BLOCK // max(n, 1))
        kept = []
        # The cosine matrix is symmetric: row j of it is column j, so a block of rows holds
        # whole columns and the k strongest of each can be chosen without the full matrix.
        for s in range(0, n, step):
            e = min(n, s + step)
            sim = (xt[s:e] @ x).toarray()
            sim[np.arange(e - s), np.arange(s, e)] = 0.0
            sim /= np.outer(norms[s:e], norms) + self.config.shrink + 1e-12
            if k < n - 1:  # keep the k strongest of each
                cut = np.partition(sim, -k, axis=1)[:, -k]
                sim[sim < cut[:, None]] = 0.0
            kept.append(sp.csr_matrix(sim.astype(np.float32)))
        self.similarity = sp.csr_matrix(sp.vstack(kept, format="csr").T)

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        return (rows @ self.similarity).toarray()

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        sim = self.similarity
        return self._strongest(history, items, lambda h, i: sim[h][:, i].toarray())

    def similar(self, item: str, k: int = 10) -> list[Scored]:
        """The items most like `item` (empty if unknown)."""
        items = self._check()
        where = np.flatnonzero(items == item)
        if not len(where):
            return []
        row = self.similarity[:, where[0]].toarray().ravel()
        return [s for s in top_k(row, items, k, {item}) if s.score > 0]

    def _arrays(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {
            "data": s.data,
            "indices": s.indices,
            "indptr": s.indptr,
            "shape": np.asarray(s.shape),
        }

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.similarity = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"])
        )

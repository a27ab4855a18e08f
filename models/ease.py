"""EASE (Steck, 2019): a closed-form item-item linear model, B = I - P diagMat(1 / diag(P)) with
P = (X'X + lambda I)^-1 and a zero diagonal. One dense items x items solve: fine up to ~20,000
items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from models.base import ModelConfig, Recommender
from models.data import Interactions


class EASEConfig(ModelConfig):
    l2: float = Field(default=200.0, gt=0, description="Ridge penalty lambda")
    binary: bool = Field(default=True, description="Fit on 0/1 instead of weights")


class EASE(Recommender):
    name = "ease"
    Config = EASEConfig

    def _fit(self, data: Interactions) -> None:
        assert isinstance(self.config, EASEConfig)
        x = data.matrix.astype(np.float64)
        if self.config.binary:
            x = (x > 0).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.config.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)

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
        self.weights = arrays["weights"]

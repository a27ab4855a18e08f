"""Most popular: the baseline every model is compared with, and the cold-start fallback.

Popularity is the summed interaction weight of each item. For "trending", build the
interactions with a recency decay (`Interactions.from_frame(..., half_life_days=...)` in
training) so recent weight counts more.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from models.base import ModelConfig, Recommender
from models.data import Interactions


class PopularityConfig(ModelConfig):
    count: str = Field(
        default="weight",
        pattern="^(weight|users)$",
        description="Sum of weights, or number of distinct users",
    )


class MostPopular(Recommender):
    name = "popular"
    Config = PopularityConfig

    def _fit(self, data: Interactions) -> None:
        assert isinstance(self.config, PopularityConfig)
        m = data.matrix if self.config.count == "weight" else (data.matrix > 0)
        totals = np.asarray(m.sum(axis=0), dtype=np.float64).ravel()
        self.scores = (totals / max(totals.max(), 1e-12)).astype(np.float32)

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.scores, (rows.shape[0], len(self.scores))).copy()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.scores = arrays["scores"]

"""Most popular, overall or per segment: the baseline every model is compared with, and the
cold-start fallback.

Popularity is the summed interaction weight of each item. For "trending", build the
interactions with a recency decay (`Interactions.from_frame(frame, half_life_days=7)`) so that
recent weight counts more.
"""

from __future__ import annotations

import warnings
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
        self._served = None

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.scores, (rows.shape[0], len(self.scores))).copy()

    def score_history(self, history: Mapping[str, float]) -> np.ndarray:
        """The same scores for every history: computed once (read-only)."""
        served = getattr(self, "_served", None)
        if served is None:
            served = self.score_many(sp.csr_matrix((1, len(self.scores)), dtype=np.float32))[0]
            served.setflags(write=False)
            self._served = served
        return served

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.scores = arrays["scores"]
        self._served = None


class SegmentConfig(ModelConfig):
    segments: int = Field(default=8, ge=1, description="Clusters of users by what they use")


class SegmentPopular(Recommender):
    """Most popular within the user's segment: users are clustered (k-means on their
    L2-normalised item vectors) and a history is served the popularity of its nearest cluster
    ("popular with people like you"). An empty history gets the overall popularity."""

    name = "popular-segment"
    Config = SegmentConfig

    def _fit(self, data: Interactions) -> None:
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.preprocessing import normalize

        assert isinstance(self.config, SegmentConfig)
        x = normalize(data.matrix.astype(np.float64))
        k = max(1, min(self.config.segments, x.shape[0]))
        with warnings.catch_warnings():  # fewer distinct users than segments: fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, n_init=3, random_state=self.config.seed).fit(x)
        self.centroids = km.cluster_centers_.astype(np.float32)
        scores = np.zeros((k, x.shape[1]), dtype=np.float64)
        for c in range(k):
            members = data.matrix[km.labels_ == c]
            scores[c] = np.asarray(members.sum(axis=0)).ravel()
        self.scores = (scores / np.maximum(scores.max(axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )
        overall = np.asarray(data.matrix.sum(axis=0), dtype=np.float64).ravel()
        self.overall = (overall / max(overall.max(), 1e-12)).astype(np.float32)

    def segment_of(self, rows: sp.csr_matrix) -> np.ndarray:
        """The nearest segment of each history (-1 for an empty one)."""
        norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
        dist = (
            np.asarray((self.centroids**2).sum(axis=1))[None, :]
            - 2 * np.asarray(rows @ self.centroids.T) / np.maximum(norms, 1e-12)[:, None]
        )
        return np.where(norms > 0, dist.argmin(axis=1), -1)

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        seg = self.segment_of(rows)
        out = self.scores[np.maximum(seg, 0)].copy()
        out[seg < 0] = self.overall
        return out

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "scores": self.scores, "overall": self.overall}

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.centroids = arrays["centroids"]
        self.scores = arrays["scores"]
        self.overall = arrays["overall"]

"""The worked example of a model plugin, the file to copy: scikit-learn's TruncatedSVD as item
factors, in a plain class that has only the plugin contract's methods (`models.plugins`).

Use it by name, `nerve train --model models.contrib.sklearn_svd:TruncatedSVDItems`, or through
the entry point a package declares in its pyproject.toml:

    [project.entry-points."nerve.models"]
    sklearn-svd = "models.contrib.sklearn_svd:TruncatedSVDItems"

It saves arrays and JSON only (no pickle: artifacts travel over the bus to the recommender).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.decomposition import TruncatedSVD


class TruncatedSVDItems:
    """Items as the right singular vectors of the log-damped user x item matrix: a history
    scores an item by how close the item lies to the history's items in that space."""

    search_space: ClassVar[dict[str, list[Any]]] = {"factors": [16, 32, 64], "iterations": [5, 10]}
    """What `nerve train --tune` searches (optional: a plugin without it cannot be tuned)."""

    def __init__(self, factors: int = 32, iterations: int = 5, seed: int = 0) -> None:
        self.factors, self.iterations, self.seed = factors, iterations, seed
        self.item_factors = np.zeros((0, 0), dtype=np.float32)  # items x factors
        self.index: dict[str, int] = {}  # item id -> row of item_factors

    def fit(self, interactions: Any) -> None:
        """`interactions`: a `models.Interactions` (`.matrix` users x items, `.items` ids)."""
        matrix = interactions.matrix.astype(np.float64).log1p()
        n = max(1, min(self.factors, min(matrix.shape) - 1))
        svd = TruncatedSVD(n_components=n, n_iter=self.iterations, random_state=self.seed)
        self.item_factors = svd.fit(matrix).components_.T.astype(np.float32)
        self.index = {str(item): row for row, item in enumerate(interactions.items)}

    def _user(self, history: Mapping[str, float]) -> tuple[list[int], np.ndarray]:
        known = [(self.index[i], w) for i, w in history.items() if i in self.index]
        rows = [r for r, _ in known]
        weights = np.log1p(np.asarray([w for _, w in known], dtype=np.float32))
        return rows, weights[:, None] * self.item_factors[rows]

    def score(self, history: Mapping[str, float], items: Sequence[str]) -> np.ndarray:
        """One score per item; `items` are fit's item ids in fit's order (the contract)."""
        _, parts = self._user(history)
        return self.item_factors @ parts.sum(axis=0)

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        """Optional: the history item that adds most to each item's score."""
        rows, parts = self._user(history)
        if not rows:
            return {}
        names = list(self.index)
        wanted = [i for i in items if i in self.index]
        contrib = parts @ self.item_factors[[self.index[i] for i in wanted]].T
        return {i: names[rows[int(contrib[:, j].argmax())]] for j, i in enumerate(wanted)}

    def save(self, folder: Path) -> None:
        np.save(folder / "item_factors.npy", self.item_factors)
        params = {"factors": self.factors, "iterations": self.iterations, "seed": self.seed}
        (folder / "model.json").write_text(json.dumps({**params, "items": list(self.index)}))

    @classmethod
    def load(cls, folder: Path) -> TruncatedSVDItems:
        meta = json.loads((folder / "model.json").read_text())
        model = cls(meta["factors"], meta["iterations"], meta["seed"])
        model.item_factors = np.load(folder / "item_factors.npy", allow_pickle=False)
        model.index = {str(item): row for row, item in enumerate(meta["items"])}
        return model

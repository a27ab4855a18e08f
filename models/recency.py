"""Recency-weighted item-to-item: every interaction is decayed by its age (a weight halves with
each `half_life_days`), both in the co-occurrences the similarity is learned from and in the
history a user is scored on, so what a user did lately outweighs what they did long ago.

Training builds the decayed matrix itself (`interactions`, from the history DataFrame, ages
counted back from the newest event); serving decays the profile's recent items by their age at
`now_ms` (`score`). The similarity is `ItemKNN`'s cosine on the decayed weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from models.data import DEFAULT_WEIGHTS, EventWeights, Interactions
from models.itemknn import ItemKNN, ItemKNNConfig

DAY_MS = 86_400_000
FLOOR = 1e-20  # a very old event still counts a little (and stays in the matrix)


class RecencyConfig(ItemKNNConfig):
    half_life_days: float = Field(default=14.0, gt=0, description="Age at which a weight halves")
    binary: bool = Field(default=False, description="Cosine on 0/1 instead of decayed weights")


class RecencyKNN(ItemKNN):
    name = "itemknn-recency"
    Config = RecencyConfig
    search_space: ClassVar[dict[str, list[Any]]] = {
        "half_life_days": [1.0, 3.0, 7.0, 14.0, 30.0, 90.0],
        "neighbors": [20, 100],
        "shrink": [0.0, 10.0],
    }

    def interactions(
        self, frame: pd.DataFrame, weights: EventWeights | None = None
    ) -> Interactions:
        """The decayed user x item matrix of `frame` (what `fit` and evaluation should use)."""
        assert isinstance(self.config, RecencyConfig)
        data = Interactions.from_frame(frame, weights, half_life_days=self.config.half_life_days)
        data.matrix.data = np.maximum(data.matrix.data, FLOOR).astype(np.float32)
        return data

    def decayed(self, profile: Mapping[str, Any], now_ms: int) -> dict[str, float]:
        """The profile's recent items and holdings, each weight decayed by its age at `now_ms`."""
        assert isinstance(self.config, RecencyConfig)
        half_life = self.config.half_life_days * DAY_MS
        out: dict[str, float] = {}
        for r in profile.get("recent_items", ()):
            w = DEFAULT_WEIGHTS.get(r["type"], 0.0)
            if w:
                age = max(now_ms - int(r.get("time") or now_ms), 0)  # no time: not aged
                out[r["item_id"]] = out.get(r["item_id"], 0.0) + w * 0.5 ** (age / half_life)
        for item, held in profile.get("held", {}).items():
            age = max(now_ms - int(held.get("since") or now_ms), 0)
            w = DEFAULT_WEIGHTS["item_purchased"] * 0.5 ** (age / half_life)
            out[item] = max(out.get(item, 0.0), w, FLOOR)
        return out

    def score(
        self, profile: Mapping[str, Any], history: Mapping[str, float], now_ms: int
    ) -> np.ndarray:
        """Scores from the profile's time-stamped items (the plain `history` when it has none)."""
        decayed = self.decayed(profile, now_ms)
        return self.score_history(decayed if decayed else history)

"""A personal repeat-purchase prior blended with collaborative scores: people buy again what
they bought before (groceries, refills), so an item the user has used often scores high, and
item-to-item similarity (`ItemKNN`) fills the rest of the list.

score = (1 - repeat_weight) * collaborative + repeat_weight * prior, each scaled to [0, 1] per
user; the prior is the user's own weight on the item. It only helps where already-used items may
be shown again: evaluation then keeps them (`recommends_seen`), and a serving slot needs
`exclude_held = false`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from models.itemknn import ItemKNN, ItemKNNConfig


class RepeatConfig(ItemKNNConfig):
    repeat_weight: float = Field(
        default=0.5, ge=0, le=1, description="Share of the personal prior in the blend"
    )


def _scaled(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return x / np.where(top > 0, top, 1.0)


class RepeatBlend(ItemKNN):
    name = "repeat-blend"
    Config = RepeatConfig
    recommends_seen: ClassVar[bool] = True
    search_space: ClassVar[dict[str, list[Any]]] = {
        "repeat_weight": [0.0, 0.25, 0.5, 0.75, 0.9],
        "neighbors": [20, 100],
        "shrink": [0.0, 10.0],
    }

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        assert isinstance(self.config, RepeatConfig)
        w = self.config.repeat_weight
        collab = _scaled(np.asarray((rows @ self.similarity).toarray(), dtype=np.float64))
        prior = _scaled(np.asarray(rows.toarray(), dtype=np.float64).clip(min=0))
        return ((1 - w) * collab + w * prior).astype(np.float32)

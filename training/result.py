"""What a training run produces: the fitted model, its version and card, and the figures the
report plots (shared by `training.train`, which makes it, and `training.report`, which draws it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import Recommender

Points = list[tuple[float, float]]


@dataclass
class TrainResult:
    """`curve`: (training events, nDCG@k) as the training part grows; `tail`: per model, its
    lists' (popularity rank, share of recommended slots) on the test part."""

    model: Recommender
    version: str
    card: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    curve: Points = field(default_factory=list)
    tail: dict[str, Points] = field(default_factory=dict)

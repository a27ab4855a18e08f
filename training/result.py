"""What a training run produces: the fitted model, its version and card, and the figures the
report plots (shared by `training.train`, which makes it, and `training.report`, which draws it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import Recommender


@dataclass
class TrainResult:
    model: Recommender
    version: str
    card: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    curve: list[tuple[float, float]] = field(default_factory=list)
    item_counts: list[int] = field(default_factory=list)

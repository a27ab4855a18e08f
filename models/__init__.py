"""Recommendation and next-best-offer models: fit / recommend / save / load, no NATS inside."""

from models.als import ImplicitALS
from models.base import (
    REGISTRY,
    ModelConfig,
    NotFitted,
    Recommender,
    Scored,
    load_model,
    make,
)
from models.data import DEFAULT_WEIGHTS, EventWeights, Interactions
from models.ease import EASE
from models.itemknn import ItemKNN
from models.popularity import MostPopular, SegmentPopular

__all__ = [
    "DEFAULT_WEIGHTS",
    "EASE",
    "REGISTRY",
    "EventWeights",
    "ImplicitALS",
    "Interactions",
    "ItemKNN",
    "ModelConfig",
    "MostPopular",
    "NotFitted",
    "Recommender",
    "Scored",
    "SegmentPopular",
    "load_model",
    "make",
]

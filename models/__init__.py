"""Recommendation and next-best-offer models: fit / recommend / save / load, no NATS inside.

Every kind is imported here, so that each has registered its loader (`models.artifact`) before
anything loads a saved model."""

from models.als import ImplicitALS
from models.artifact import load_model, load_packed, pack, unpack
from models.base import REGISTRY, ModelConfig, NotFitted, Recommender, make
from models.data import DEFAULT_WEIGHTS, EventWeights, Interactions
from models.ease import EASE
from models.itemknn import ItemKNN
from models.nbo import NextBestOffer
from models.plugins import PluginError, PluginModel
from models.popularity import MostPopular, SegmentPopular
from models.recency import RecencyKNN
from models.repeat import RepeatBlend
from models.scorer import Scored, Scorer

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
    "NextBestOffer",
    "NotFitted",
    "PluginError",
    "PluginModel",
    "RecencyKNN",
    "Recommender",
    "RepeatBlend",
    "Scored",
    "Scorer",
    "SegmentPopular",
    "load_model",
    "load_packed",
    "make",
    "pack",
    "unpack",
]

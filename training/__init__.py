"""Offline work on the stored history: load, split, train, evaluate, report, publish."""

from training.history import load_history

__all__ = ["load_history"]

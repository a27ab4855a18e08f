"""Offline work on the stored history: load, split, train, evaluate, report, publish.

The Python API is `training.api` (`train`, `evaluate`, `publish`, `activate`, `listing`): what
`nerve train` and `nerve models` run. It is not re-exported here, where `train` and `evaluate`
would shadow the modules `training.train` and `training.evaluate`.
"""

from training.history import load_history

__all__ = ["load_history"]

"""Models from outside Nerve: the plugin contract, finding a plugin class by `pkg.module:Class`
or by the name of its `nerve.models` entry point, and the adapter that serves it as a
`Recommender`.

A plugin is a class with keyword parameters in its constructor (what `--params` sets, checked
against their annotations; unknown ones refused) and

    fit(interactions)        learn from a `models.Interactions` (users x items weights, ids)
    score(history, items)    one score per item of `items` (fit's item ids, in that order) for
                             a history {item id: weight}; or, instead,
    recommend(history, k)    the best k as [(item id, score), ...]
    save(folder)             write arrays (.npy/.npz, no object dtype) and JSON/text files
    load(folder)             a classmethod: the fitted model `save` wrote
    because(history, items)  optional: {item: the history item that raised it most}

Such a class is wrapped in a `PluginModel`, so it gets what every model has: popularity breaking
ties and serving a cold visitor, `recommend`, evaluation, the artifact format. A `Recommender`
subclass is a plugin too, used as it is (the way to write a fast `score_many`).

The name a plugin is found by is its *kind*: the card's `model`, `model.json`'s `name`, what
served lists carry. Whoever loads an artifact imports the class again from it, so the recommender
needs the plugin installed, not imported; `find` refuses, saying why, a class it cannot import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import create_model

from models.artifact import FORMAT_VERSION, add_finder, check_files
from models.base import ModelConfig, Recommender
from models.data import Interactions

GROUP = "nerve.models"
FOLDER = "plugin"
"""The subdirectory of a saved `PluginModel` where the plugin's own `save` writes."""
CONTRACT = ("fit", "save", "load")


class PluginError(ValueError):
    """Plugin `name` cannot be used: `reason` says why (not importable, not the contract)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model plugin {name!r}: {reason}")
        self.name, self.reason = name, reason


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed `nerve.models` entry points by name (read anew: installs change)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def plugin_class(name: str) -> type | None:
    """The class `name` points to (`pkg.module:Class`, or an entry point's name), imported; None
    for a name that is neither; `PluginError` when it is one but cannot be imported."""
    if ":" in name:
        module, _, attr = name.partition(":")
        target = f"{module}:{attr}"
    elif (ep := entry_points().get(name)) is not None:
        module, _, attr = ep.value.partition(":")
        target = f"entry point {GROUP}:{name} = {ep.value}"
    else:
        return None
    try:
        found: Any = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(name, f"cannot import {module} ({exc}); is it installed here?") from None
    for part in attr.split(".") if attr else ():
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise PluginError(name, f"{target} is not a class in {module}")
    return found


def find(name: str) -> bool:
    """Register plugin `name` (see `plugin_class`) as a model kind; False if it is none."""
    cls = plugin_class(name)
    if cls is None:
        return False
    if issubclass(cls, Recommender):  # the same class, known by this name
        type(cls.__name__, (cls,), {"name": name, "__module__": cls.__module__})
        return True
    missing = [m for m in CONTRACT if not callable(getattr(cls, m, None))]
    if not callable(getattr(cls, "score", None)) and not callable(getattr(cls, "recommend", None)):
        missing.append("score (or recommend)")
    if missing:
        raise PluginError(name, f"{cls.__qualname__} lacks {', '.join(missing)} (the contract)")
    attrs = {"name": name, "plugin": cls, "Config": config_of(cls), "__module__": __name__}
    type(f"Plugin_{cls.__name__}", (PluginModel,), attrs)
    return True


def config_of(cls: type) -> type[ModelConfig]:
    """A pydantic config of `cls`'s keyword parameters, typed by their annotations."""
    try:
        params = inspect.signature(cls, eval_str=True).parameters.values()
    except (NameError, TypeError):  # an annotation we cannot evaluate: typed as anything
        params = inspect.signature(cls).parameters.values()
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        typed = p.annotation is not p.empty and not isinstance(p.annotation, str)
        annotation = p.annotation if typed else Any
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    return create_model(f"{cls.__name__}Config", __base__=ModelConfig, **fields)


class PluginModel(Recommender):
    """A plugin class that has only the contract's methods, served as a `Recommender`. `find`
    makes one subclass per plugin, whose `name` is the plugin's and `plugin` its class."""

    plugin: ClassVar[Any]  # the plugin's class

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.inner: Any = None
        self._names: list[str] | None = None

    def _fit(self, data: Interactions) -> None:
        accepted = inspect.signature(self.plugin).parameters
        values = self.config.model_dump()
        self.inner = self.plugin(**{k: v for k, v in values.items() if k in accepted})
        self.inner.fit(data)

    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        names = self._item_names()
        out = np.empty(rows.shape, dtype=np.float32)
        for r in range(rows.shape[0]):
            start, end = rows.indptr[r], rows.indptr[r + 1]
            cols, weights = rows.indices[start:end], rows.data[start:end]
            history = {names[c]: float(w) for c, w in zip(cols, weights, strict=True)}
            out[r] = self._one(history, names)
        return out

    def _one(self, history: dict[str, float], names: list[str]) -> np.ndarray:
        if not callable(getattr(self.inner, "score", None)):
            scores = np.full(len(names), -np.inf, dtype=np.float32)
            index = self._index()
            for item, value in self.inner.recommend(history, len(names)):
                if str(item) in index:
                    scores[index[str(item)]] = value
            return scores
        scores = np.asarray(self.inner.score(history, names), dtype=np.float32)
        if scores.shape != (len(names),):
            raise PluginError(self.name, f"score gave shape {scores.shape} for {len(names)} items")
        return scores

    def _item_names(self) -> list[str]:
        if self._names is None or len(self._names) != len(self._check()):
            self._names = [str(i) for i in self._check()]
        return self._names

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        explain = getattr(self.inner, "because", None)
        return {str(k): str(v) for k, v in explain(history, items).items()} if explain else {}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}  # the plugin writes its own, under FOLDER

    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError("a plugin model loads through PluginModel.load")

    def save(self, path: Path) -> Path:
        """`model.json` and `arrays.npz` as every model, and the plugin's files under `plugin/`
        (refused if they are not arrays and text: the artifact travels over the bus)."""
        self._check()
        super().save(path)
        (path / FOLDER).mkdir(exist_ok=True)
        self.inner.save(path / FOLDER)
        try:
            check_files(path / FOLDER)
        except ValueError as exc:
            raise PluginError(self.name, f"save wrote {exc}") from None
        return path

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = json.loads((path / "model.json").read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("name") != cls.name:
            raise ValueError(f"{path}: not a saved {cls.name} model")
        model = cls(cls.Config(**meta["config"]))
        model.items = np.asarray(meta["items"], dtype=object)
        with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
            model.popularity = arrays["popularity"]
        check_files(path / FOLDER)
        model.inner = cls.plugin.load(path / FOLDER)
        return model


add_finder(find)

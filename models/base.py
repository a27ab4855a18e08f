"""The model contract: a pydantic config, `fit`, scoring, `recommend`, and save/load as arrays and
JSON (never pickle: artifacts travel over the bus).

A model scores every item for a *history* (item -> weight), so it serves users it has never seen
as well as known ones; `recommend` removes what the history holds (unless asked not to) and what
`exclude` names, and returns the top `k` with their scores. `score_many` does the same for many
histories at once, as a dense users x items array, for evaluation.

On disk a model is a directory: `model.json` (name, config, item ids, format version) and
`arrays.npz` (read back with `allow_pickle=False`); `models.artifact` packs and loads it. Every
`Recommender` satisfies `models.scorer.Scorer`, the protocol the serving pipeline uses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from models.artifact import FORMAT_VERSION, find, register
from models.artifact import load_model as load_model  # these four: re-exported for callers
from models.artifact import load_packed as load_packed  # that import them from models.base
from models.artifact import pack as pack
from models.artifact import unpack as unpack
from models.data import Interactions, history_rows
from models.scorer import Scored

TIE_BREAK = 1e-6
REGISTRY: dict[str, type[Recommender]] = {}


class ModelConfig(BaseModel):
    """Base of every model's parameters: unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0


class NotFitted(RuntimeError):
    """The model has no parameters yet: call `fit` or `load`."""


class Recommender(ABC):
    """Base class; subclasses set `name` and `Config` and implement the abstract methods."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            taken = REGISTRY.get(cls.name)
            if taken is not None and _where(taken) != _where(cls):
                raise TypeError(f"model name {cls.name!r} is taken by {_where(taken)}")
            REGISTRY[cls.name] = cls
            register(cls.name, Recommender.load)

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        self.config = config if config is not None else self.Config(**params)
        self.items: np.ndarray | None = None
        self.popularity: np.ndarray | None = None  # breaks ties; all a cold user gets
        self._item_index: dict[str, int] | None = None

    # -- to implement ---------------------------------------------------------------------
    @abstractmethod
    def _fit(self, data: Interactions) -> None: ...

    @abstractmethod
    def _score(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores (len(rows) x items) for histories given as weighted rows over `self.items`."""

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _restore(self, arrays: Mapping[str, np.ndarray]) -> None: ...

    # -- the contract -----------------------------------------------------------------------
    def fit(self, data: Interactions) -> Self:
        if data.matrix.nnz == 0:
            raise ValueError("cannot fit on no interactions")
        self.items = data.items
        counts = np.asarray((data.matrix > 0).sum(axis=0), dtype=np.float64).ravel()
        self.popularity = (counts / max(counts.max(), 1.0)).astype(np.float32)
        self._fit(data)
        return self

    def _check(self) -> np.ndarray:
        if self.items is None:
            raise NotFitted(f"{self.name}: not fitted")
        return self.items

    def score_many(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores for many histories; ties (and empty histories) resolved by popularity."""
        self._check()
        assert self.popularity is not None
        scores = np.asarray(self._score(sp.csr_matrix(rows, dtype=np.float32)), dtype=np.float32)
        return scores + TIE_BREAK * self.popularity[None, :]

    def score_history(self, history: Mapping[str, float]) -> np.ndarray:
        """The score of every item (in `self.items` order) for one history (item -> weight)."""
        items = self._check()
        return self.score_many(history_rows([history], items, self._index()))[0]

    def recommend(
        self,
        history: Mapping[str, float] | Sequence[str],
        k: int = 10,
        exclude: Iterable[str] = (),
        *,
        exclude_seen: bool = True,
    ) -> list[Scored]:
        """The top `k` items for a user whose history is `history` (items, or item -> weight)."""
        items = self._check()
        h = history if isinstance(history, Mapping) else {i: 1.0 for i in history}
        scores = self.score_many(history_rows([h], items, self._index()))[0]
        banned = set(exclude) | (set(h) if exclude_seen else set())
        return top_k(scores, items, k, banned)

    def because(self, history: Mapping[str, float], items: Sequence[str]) -> dict[str, str]:
        """For each of `items`, the history item that contributes most to its score (for a
        reason such as "because you viewed X"); models that cannot tell return `{}`."""
        return {}

    # -- the Scorer protocol (what serving calls) ----------------------------------------------
    def candidates(self) -> np.ndarray:
        """The item ids, in the order of every score array."""
        return self._check()

    def score(
        self, profile: Mapping[str, Any], history: Mapping[str, float], now_ms: int
    ) -> np.ndarray:
        """`score_history`: an item model reads the history, not the profile or the time."""
        return self.score_history(history)

    def score_like(self, anchor: str) -> np.ndarray:
        """The scores of a history of `anchor` alone."""
        return self.score_history({anchor: 1.0})

    def explain(
        self,
        profile: Mapping[str, Any],
        history: Mapping[str, float],
        items: Sequence[str],
        now_ms: int,
    ) -> dict[str, str]:
        """`because` in the protocol's vocabulary: `item:<history item>`."""
        return {item: f"item:{h}" for item, h in self.because(history, items).items()}

    def _strongest(
        self, history: Mapping[str, float], items: Sequence[str], block: Any
    ) -> dict[str, str]:
        """`because` for models whose score is a sum over the history: `block(h, i)` is the
        array of contributions of history columns `h` (rows) to item columns `i` (columns)."""
        index = self._index()
        hist = [(index[h], w) for h, w in history.items() if h in index]
        wanted = [(item, index[item]) for item in items if item in index]
        if not hist or not wanted:
            return {}
        h = np.fromiter((c for c, _ in hist), dtype=np.int64, count=len(hist))
        w = np.fromiter((x for _, x in hist), dtype=np.float64, count=len(hist))
        i = np.fromiter((c for _, c in wanted), dtype=np.int64, count=len(wanted))
        contrib = np.asarray(block(h, i), dtype=np.float64) * w[:, None]
        best = contrib.argmax(axis=0)
        names = self._check()
        return {
            item: str(names[h[best[j]]])
            for j, (item, _) in enumerate(wanted)
            if contrib[best[j], j] > 0
        }

    def _index(self) -> dict[str, int]:
        """Item id -> column, built once (a request must not rebuild it)."""
        items = self._check()
        if self._item_index is None or len(self._item_index) != len(items):
            self._item_index = {str(item): i for i, item in enumerate(items)}
        return self._item_index

    def save(self, path: Path) -> Path:
        items = self._check()
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "config": self.config.model_dump(mode="json"),
            "items": [str(i) for i in items],
        }
        (path / "model.json").write_text(json.dumps(meta))
        assert self.popularity is not None
        arrays = {"popularity": self.popularity, **self._arrays()}
        np.savez(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
        return path

    @staticmethod
    def load(path: Path) -> Recommender:
        """The model saved in `path`, of the kind its `model.json` names (a plugin's class is
        imported first; a class that loads itself, as the plugin adapter does, is asked to)."""
        meta = json.loads((path / "model.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unknown model format {meta.get('format')!r}")
        name = str(meta["name"])
        if name not in REGISTRY and not find(name):
            raise ValueError(f"{path}: unknown model {name!r} (known: {sorted(REGISTRY)})")
        cls = REGISTRY[name]
        if cls.load is not Recommender.load:
            return cls.load(path)
        model = cls(cls.Config(**meta["config"]))
        model.items = np.asarray(meta["items"], dtype=object)
        with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
            model.popularity = arrays["popularity"]
            model._restore({k: arrays[k] for k in arrays.files if k != "popularity"})
        return model


def top_k(scores: np.ndarray, items: np.ndarray, k: int, banned: set[str]) -> list[Scored]:
    """The k best items by score, skipping `banned`; ties broken by item order."""
    want = k + len(banned)
    if want < len(scores):  # partial selection, then order only the candidates
        cand = np.argpartition(-scores, want)[: want + 1]
        order = cand[np.lexsort((cand, -scores[cand]))]
    else:
        order = np.argsort(-scores, kind="stable")
    out: list[Scored] = []
    for i in order:
        item = str(items[i])
        if item in banned or not np.isfinite(scores[i]):
            continue
        out.append(Scored(item, float(scores[i])))
        if len(out) == k:
            break
    return out


def make(name: str, **params: Any) -> Recommender:
    """A model by its registered name, or a plugin's (`pkg.module:Class`, or the name of a
    `nerve.models` entry point; see `models.plugins`), with parameters (refused if unknown)."""
    if name not in REGISTRY and not find(name):
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown model {name!r} (known: {known}; or a plugin's module:Class)")
    return REGISTRY[name](**params)


def _where(cls: type) -> str:
    """`module:QualifiedName`, what tells two classes of the same name apart."""
    return f"{cls.__module__}:{cls.__qualname__}"

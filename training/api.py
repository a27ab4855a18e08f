"""Training's Python API: train, evaluate, publish, activate and list models; `nerve train` and
`nerve models` are thin shells over these functions.

```python
from training import load_history
from training.api import activate, publish, train

URL = "nats://127.0.0.1:4222"
frame = load_history("stream", nats_url=URL)
trained = train(frame, "itemknn", curve=False)  # card, artifact, report: .nerve/models/<version>
change = publish(trained, nats_url=URL)         # slot: the kind's default, `similar`
print(change)                       # slot similar: itemknn itemknn-2026… → itemknn itemknn-2026…
if change.previous:                             # roll back
    activate(change.previous, slot=change.slot, nats_url=URL)
```

Each slot serves one *kind* of model: publishing or activating a model of another kind than the
slot's active one raises `KindChange` unless `force=True` (a popularity list does not answer
"similar items", a recommender does not rank offers). Without `slot` a model goes to its kind's
default slot (`default_slot`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

import models
import models.plugins as plugins
from engine.bus import Bus
from engine.bus.registry import UnknownModel, check_servable
from engine.settings import BrokerSettings
from models.artifact import LOADERS
from models.nbo import NBOConfig
from nerve_client.errors import BrokerUnavailable, ConfigError
from training.nbo import train_nbo, write_nbo
from training.remote import data_dir_of, on_bus, settings_of
from training.train import Active, Tuning, compare, write
from training.train import split as cut
from training.train import train as fit
from training.tune import Progress

Split = Literal["global", "last"]

# The slot each kind is made for, as the shipped slots.toml names them: offers rank on `home`,
# popularity is `trending`, and a recommender's item-to-item scores serve `similar`.
DEFAULT_SLOTS = {"nbo": "home", "popular": "trending", "popular-segment": "trending"}


def kinds() -> list[str]:
    """Every kind of model `train` knows: the names the model registry loads, and the installed
    `nerve.models` plugins' entry points (any `pkg.module:Class` plugin is a kind too)."""
    return sorted(set(LOADERS) | set(plugins.entry_points()))


def default_slot(kind: str) -> str:
    """The slot a model of `kind` is published to when no slot is named (a plugin recommends
    items, as the built-in recommenders do: `similar`)."""
    return DEFAULT_SLOTS.get(kind, "similar")


class KindChange(ConfigError):
    """A slot would change the kind of model it serves; pass `force=True` (`--force`)."""

    def __init__(self, slot: str, active: str, active_kind: str, kind: str) -> None:
        super().__init__(
            f"slot {slot} serves {active_kind} ({active}), not {kind}: --force replaces it "
            "(force=True in Python), or name another --slot"
        )
        self.slot, self.active, self.active_kind, self.kind = slot, active, active_kind, kind


@dataclass(frozen=True)
class Trained:
    """A trained model written to `folder`: `model.json` + `arrays.npz`, `card.json` and, for
    recommenders, `report.html`."""

    version: str
    card: dict[str, Any]
    folder: Path

    @property
    def kind(self) -> str:
        return str(self.card["model"])


@dataclass(frozen=True)
class Change:
    """What a publish or activation did to a slot (`previous` None: the slot was empty)."""

    slot: str
    version: str
    kind: str
    previous: str | None = None
    previous_kind: str | None = None
    stored_only: bool = False
    """A candidate: stored in the registry, `slot` left as it was."""

    def __str__(self) -> str:
        if self.stored_only:
            return f"a candidate, slot {self.slot} unchanged (for replay and experiments)"
        if self.previous == self.version:
            return f"slot {self.slot}: {self.kind} {self.version} (unchanged)"
        before = f"{self.previous_kind} {self.previous}" if self.previous else "(empty)"
        return f"slot {self.slot}: {before} → {self.kind} {self.version}"


def config(kind: str, params: dict[str, Any] | None = None) -> Any:
    """The validated config of `kind` with `params`: `ConfigError` for an unknown kind or a
    plugin that cannot be imported or lacks the contract (`models.plugins`), pydantic's
    `ValidationError` (naming the parameter) for a bad parameter."""
    if kind == "nbo":
        return NBOConfig(**(params or {}))
    try:
        if kind not in LOADERS and not plugins.find(kind):
            raise ConfigError(
                f"unknown model {kind!r} (known: {', '.join(kinds())}; "
                "or a plugin's pkg.module:Class)"
            )
    except plugins.PluginError as exc:
        raise ConfigError(str(exc)) from None
    return models.make(kind, **(params or {})).config


def evaluate(
    frame: pd.DataFrame,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    split: Split = "global",
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Metrics of `kind` fitted on the earlier part of `frame` and measured on the later, beside
    popularity on the same split ({model name: {metric: value}}); nothing is written. `nbo` is
    evaluated by its own time cuts (`training.nbo.train_nbo`): AUC, hit and value at 1."""
    if kind == "nbo":
        return {"nbo": train_nbo(frame, config(kind, params)).metrics}
    config(kind, params)
    train_frame, test_frame = cut(frame, split)
    return compare(kind, params or {}, train_frame, test_frame, k=k)


def train(
    frame: pd.DataFrame,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    split: Split = "global",
    k: int = 10,
    curve: bool = True,
    data_dir: Path | str | None = None,
    tune: bool = False,
    budget: int | None = None,
    progress: Progress | None = None,
    slot: str | None = None,
    nats_url: str | None = None,
    broker: BrokerSettings | None = None,
) -> Trained:
    """Train `kind` on `frame`, evaluate it beside popularity and the active model of `slot`
    (its kind's default; read from the registry when `nats_url` or `broker` is given), refit on
    all of it, and write the artifact, the card and the report under
    `<data_dir>/models/<version>/`. With `tune`, the parameters not given in `params` are
    searched first (`budget`: that many random settings; None: the whole grid)."""
    if frame.empty:
        raise ConfigError(
            "no interactions to train on: the history is empty (is the data dir or --nats-url "
            "the one the events went to? import some with `nerve import`)"
        )
    root = data_dir_of(data_dir if broker is None else broker.data_dir) / "models"
    target = slot or default_slot(kind)
    active = (
        active_model(target, nats_url=nats_url, data_dir=data_dir, broker=broker)
        if nats_url is not None or broker is not None
        else None
    )
    searching = Tuning(budget, progress) if tune else None
    if kind == "nbo":
        version, card, folder = write_nbo(
            frame, config(kind, params), root, tune=searching, active=active
        )
        return Trained(version, card, folder)
    config(kind, params)
    result = fit(
        frame, kind, params, how=split, k=k, curve=curve, root=root, tune=searching, active=active
    )
    return Trained(result.version, result.card, write(result, root))


def active_model(
    slot: str,
    *,
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> Active:
    """The active model of `slot` in the registry (its version, kind and parameters), or an
    `Active` without version saying why there is none (also when the broker is unreachable)."""

    async def work(bus: Bus) -> Active:
        registry = await bus.registry()
        _, active = await registry.listing()
        version = active.get(slot)
        if version is None:
            return Active(slot, reason=f"slot {slot} has no active model")
        card = await registry.card(version)
        return Active(slot, version, str(card.get("model", "?")), dict(card.get("params") or {}))

    try:
        return on_bus(settings_of(nats_url, data_dir, broker), "nerve-train", work)
    except UnknownModel as exc:
        return Active(slot, reason=f"its card is gone ({exc})")
    except BrokerUnavailable as exc:
        return Active(slot, reason=f"the broker is not reachable ({exc})")


def check_slot(
    kind: str,
    slot: str | None = None,
    *,
    force: bool = False,
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> str:
    """The slot a `kind` model would go to (`slot`, else the kind's default); `KindChange` if
    that slot serves another kind and not `force`. Lets a caller refuse before training."""
    slot = slot or default_slot(kind)

    async def work(bus: Bus) -> str:
        await _change(bus, slot, "", kind, force)
        return slot

    return on_bus(settings_of(nats_url, data_dir, broker), "nerve-train", work)


def publish(
    trained: Trained | str,
    *,
    slot: str | None = None,
    force: bool = False,
    candidate: bool = False,
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> Change:
    """Store a trained model (a `Trained`, or a version under `<data_dir>/models/`) in the
    registry and make it the active model of `slot` (default: `default_slot` of its kind).
    `KindChange`, with nothing stored, if the slot serves another kind and not `force`.
    With `candidate`, store it only (checked servable, nothing activated): a challenger for
    `nerve replay models --candidate` and `nerve experiments start`; the `Change` then names
    the slot's active model as both `previous` and the one still serving."""
    settings = settings_of(nats_url, data_dir, broker)
    if isinstance(trained, str):
        folder = settings.data_dir / "models" / trained
        if not (folder / "card.json").is_file():
            raise ConfigError(f"no trained model {trained!r} in {folder.parent}")
        trained = Trained(trained, json.loads((folder / "card.json").read_text()), folder)
    done = trained
    target = slot or default_slot(done.kind)

    async def work(bus: Bus) -> Change:
        registry = await bus.registry()
        artifact = models.pack(done.folder)
        if candidate:
            await check_servable(done.version, artifact)
            await registry.publish(done.version, done.card, artifact, None)
            return Change(target, done.version, done.kind, None, None, stored_only=True)
        change = await _change(bus, target, done.version, done.kind, force)
        await registry.publish(done.version, done.card, artifact, target)
        return change

    return on_bus(settings, "nerve-train", work)


def activate(
    version: str,
    *,
    slot: str | None = None,
    force: bool = False,
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> Change:
    """Make a published `version` the active model of `slot` (default: its kind's) and announce
    it with `model_published` (how to roll back). `UnknownModel` for a version never published;
    `KindChange` if the slot serves another kind and not `force`."""

    async def work(bus: Bus) -> Change:
        registry = await bus.registry()
        kind = str((await registry.card(version)).get("model", "?"))
        target = slot or default_slot(kind)
        change = await _change(bus, target, version, kind, force)
        await registry.activate(version, target)
        return change

    return on_bus(settings_of(nats_url, data_dir, broker), "nerve-models", work)


def listing(
    *,
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> list[dict[str, Any]]:
    """Every published model, oldest first: `version`, `model` (its kind), `created_at`, `k`,
    `metrics` (the card's metrics of the model itself; None for a value that is not finite, as
    JSON has none) and `slots` (where it is active)."""

    async def work(bus: Bus) -> list[dict[str, Any]]:
        cards, active = await (await bus.registry()).listing()
        return [
            {
                "version": card["version"],
                "model": card.get("model"),
                "created_at": card.get("created_at"),
                "k": card.get("k"),
                "metrics": {
                    name: value if not isinstance(value, float) or math.isfinite(value) else None
                    for name, value in card.get("metrics", {}).get(card.get("model"), {}).items()
                },
                "slots": sorted(s for s, v in active.items() if v == card["version"]),
            }
            for card in cards
        ]

    return on_bus(settings_of(nats_url, data_dir, broker), "nerve-models", work)


async def _change(bus: Bus, slot: str, version: str, kind: str, force: bool) -> Change:
    """What making `version` (of `kind`) active for `slot` changes; `KindChange` if its kind
    differs from the active model's and not `force`."""
    registry = await bus.registry()
    _, active = await registry.listing()
    previous = active.get(slot)
    if previous is None:
        return Change(slot, version, kind)
    try:
        previous_kind = str((await registry.card(previous)).get("model", "?"))
    except UnknownModel:  # its card is gone: nothing says it is of the same kind
        previous_kind = "?"
    if previous_kind != kind and not force:
        raise KindChange(slot, previous, previous_kind, kind)
    return Change(slot, version, kind, previous, previous_kind)

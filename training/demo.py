"""What `nerve demo` asks of training: a model of each demo kind, trained on the demo's history
and published to the kind's default slot, unless that slot already has one (a second
`make demo` trains nothing)."""

from __future__ import annotations

from engine.cli.toolkit import out
from engine.settings import BrokerSettings
from nerve_client.errors import ConfigError
from training import api
from training.history import load_history

DEMO_KINDS = ("nbo", "itemknn", "popular")  # for home, similar, trending (`api.default_slot`)


def prepare(settings: BrokerSettings) -> None:
    """Train and publish the kinds of `DEMO_KINDS` whose slot has no model (the `nerve.demo`
    entry point)."""
    have = {slot for row in api.listing(broker=settings) for slot in row["slots"]}
    missing = [kind for kind in DEMO_KINDS if api.default_slot(kind) not in have]
    if not missing:
        return
    frame = load_history("stream", broker=settings)
    if frame.empty:
        raise ConfigError("no history in the stream to train the demo's models on")
    for kind in missing:
        slot = api.default_slot(kind)
        out.print(f"training {kind} for slot {slot!r} on the demo history", highlight=False)
        trained = api.train(frame, kind, curve=False, data_dir=settings.data_dir)
        change = api.publish(trained, slot=slot, broker=settings)
        out.print(f"published {trained.version}; {change}", highlight=False)

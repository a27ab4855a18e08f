"""What `nerve demo` asks of training: a model for each default slot, trained on the demo's
history and published, unless the slot already has one (a second `make demo` trains nothing)."""

from __future__ import annotations

from engine.bus import Bus
from engine.cli.toolkit import out, with_bus
from engine.settings import BrokerSettings

DEMO_MODELS = (("home", "nbo"), ("similar", "itemknn"), ("trending", "popular"))


def prepare(settings: BrokerSettings) -> None:
    """Train and publish the missing models of `DEMO_MODELS` (the `nerve.demo` entry point)."""
    from training.cli import train

    async def active(bus: Bus) -> set[str]:
        _, slots = await (await bus.registry()).listing()
        return set(slots)

    have = with_bus("nerve-demo", active, settings)
    for slot, model in DEMO_MODELS:
        if slot in have:
            continue
        out.print(f"training {model} for slot {slot!r} on the demo history", highlight=False)
        train(model=model, source="stream", curve=False, publish=True, slot=slot)

"""What `nerve demo` asks of training: a model for each default slot, trained on the demo's
history and published, unless the slot already has one (a second `make demo` trains nothing)."""

from __future__ import annotations

from typing import Any

from engine.cli.app import _with_broker, out

DEMO_MODELS = (("home", "nbo"), ("similar", "itemknn"), ("trending", "popular"))


def prepare(settings: Any) -> None:
    from training.cli import train

    async def active(url: str) -> set[str]:
        from engine.bus import connect
        from engine.bus.registry import Registry

        nc = await connect(url, "nerve-demo", timeout=settings.connect_timeout)
        try:
            _, slots = await (await Registry.open(nc)).listing()
        finally:
            await nc.close()
        return set(slots)

    have = _with_broker(settings, active)
    for slot, model in DEMO_MODELS:
        if slot in have:
            continue
        out.print(f"training {model} for slot {slot!r} on the demo history", highlight=False)
        train(model=model, source="stream", curve=False, publish=True, slot=slot)

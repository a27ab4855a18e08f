"""A live trickle of synthetic visitors, for `nerve demo`: the log and the lists keep moving."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.synth.model import CATALOGUE, CREDIT, SEGMENTS, simulation
from nerve_client.events import Envelope, parse_event
from nerve_client.ids import uuid7


class EventSink(Protocol):
    """Where the events go: a `Bus` or a `Publisher`."""

    async def publish_events(self, events: Sequence[Envelope]) -> Any: ...


async def visitors(
    publisher: EventSink, users: int, stop: asyncio.Event, rate: float = 4.0, seed: int = 7
) -> int:
    """Publish a live trickle of synthetic visitors (page and product views, a few loan
    simulations) at about `rate` events/s until `stop` is set: what `nerve demo` runs so
    that the log and the lists keep moving. Returns how many events it published."""
    rnd = random.Random(seed)
    sent = 0
    while not stop.is_set():
        user = f"u{rnd.randrange(users):07d}"
        prod = rnd.choice(CATALOGUE)
        now = datetime.now(UTC).isoformat()
        batch: list[dict[str, Any]] = [
            {
                "id": uuid7(),
                "type": "page_viewed",
                "time": now,
                "user_id": user,
                "source": "demo",
                "properties": {"page_type": "category"},
            },
            {
                "id": uuid7(),
                "type": "item_viewed",
                "time": now,
                "user_id": user,
                "source": "demo",
                "item_id": prod.item_id,
                "properties": {"category": prod.category},
            },
        ]
        if prod.category in CREDIT and rnd.random() < 0.3:
            props = simulation(prod, SEGMENTS[0], rnd)
            batch.append(
                {
                    "id": uuid7(),
                    "type": "simulator_used",
                    "time": now,
                    "user_id": user,
                    "source": "demo",
                    "item_id": prod.item_id,
                    "properties": props,
                }
            )
        await publisher.publish_events([parse_event(e) for e in batch])
        sent += len(batch)
        await asyncio.sleep(len(batch) / rate)
    return sent

"""A live trickle of synthetic visitors, for `nerve demo`: the log and the lists keep moving.

With `anomaly_every` set, the trickle also plants an anomaly about that often (jittered by
+-30 %), alternating two kinds a detector should catch within a second: a **rate burst**
(one user sends `BURST` item views at once, against one or two a minute) and an **unusual
amount** (a loan simulation for `UNUSUAL_FACTOR` times a usual amount). Off by default.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.synth.model import CATALOGUE, CREDIT, SEGMENTS, simulation
from nerve_client.events import Envelope, parse_event
from nerve_client.ids import uuid7

BURST = 30
UNUSUAL_FACTOR = 5000


class EventSink(Protocol):
    """Where the events go: a `Bus` or a `Publisher`."""

    async def publish_events(self, events: Sequence[Envelope]) -> Any: ...


async def visitors(
    publisher: EventSink,
    users: int,
    stop: asyncio.Event,
    rate: float = 4.0,
    seed: int = 7,
    anomaly_every: float | None = None,
) -> int:
    """Publish a live trickle of synthetic visitors (page and product views, a few loan
    simulations) at about `rate` events/s until `stop` is set: what `nerve demo` runs so
    that the log and the lists keep moving; with `anomaly_every` (seconds) an anomaly now
    and then (see the module). Returns how many events it published."""
    rnd = random.Random(seed)
    sent = planted = 0
    loop = asyncio.get_running_loop()
    next_anomaly = loop.time() + anomaly_every * rnd.uniform(0.7, 1.3) if anomaly_every else None
    while not stop.is_set():
        if anomaly_every and next_anomaly is not None and loop.time() >= next_anomaly:
            planted_batch = anomaly(rnd, f"u{rnd.randrange(users):07d}", burst=planted % 2 == 0)
            await publisher.publish_events([parse_event(e) for e in planted_batch])
            sent, planted = sent + len(planted_batch), planted + 1
            next_anomaly = loop.time() + anomaly_every * rnd.uniform(0.7, 1.3)
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


def anomaly(rnd: random.Random, user: str, *, burst: bool) -> list[dict[str, Any]]:
    """One planted anomaly of `user`, now: a burst of item views or an unusual loan amount."""
    now = datetime.now(UTC).isoformat()
    base = {"time": now, "user_id": user, "source": "demo"}
    if burst:
        return [
            {
                **base,
                "id": uuid7(),
                "type": "item_viewed",
                "item_id": (p := rnd.choice(CATALOGUE)).item_id,
                "properties": {"category": p.category},
            }
            for _ in range(BURST)
        ]
    prod = rnd.choice([p for p in CATALOGUE if p.category == "loans"])
    props = simulation(prod, SEGMENTS[1], rnd)
    amount = min(round(props["amount"] * UNUSUAL_FACTOR, -2), 1e9)
    props = {**props, "amount": amount, "monthly_payment": round(amount / props["term_months"], 2)}
    event = {**base, "id": uuid7(), "type": "simulator_used", "item_id": prod.item_id}
    return [{**event, "properties": props}]

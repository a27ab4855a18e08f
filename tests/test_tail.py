"""engine.bus.consumer.tail against a real nats-server: in order, once, across a lost consumer."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from engine.bus import Outgoing, Publisher
from engine.bus.consumer import tail
from nerve_client.ids import uuid7


async def put(nc: NATS, start: int, n: int) -> None:
    await Publisher(nc).publish(
        [Outgoing(f"catalog.item.i{i}", b"{}", uuid7()) for i in range(start, start + n)]
    )


async def test_tail_recreates_a_lost_consumer_without_losing_or_repeating(fresh: NATS) -> None:
    nc = fresh
    js = nc.jetstream()
    await put(nc, 0, 50)
    seen: list[int] = []
    async with tail(js, "CATALOG", 11, lambda b: seen.extend(s for s, _, _ in b), check_every=0.2):
        for _ in range(100):
            if len(seen) == 40:
                break
            await asyncio.sleep(0.02)
        for info in await js.consumers_info("CATALOG"):  # the server forgets it
            await js.delete_consumer("CATALOG", info.name)
        await put(nc, 50, 30)
        for _ in range(200):
            if len(seen) == 70:
                break
            await asyncio.sleep(0.05)
    assert seen == list(range(11, 81))

"""A message a consumer stopped redelivering (max_deliver) ends in DEADLETTER, not nowhere."""

from __future__ import annotations

import asyncio

import orjson
from nats.aio.client import Client as NATS

from engine.bus import Bus, Refusal
from engine.bus.consumer import DurableConsumer, refusals
from engine.bus.gaveup import sweep
from engine.bus.reader import read_all
from nerve_client.subjects import GAVE_UP


async def test_a_message_given_up_on_while_nobody_swept_is_dead_lettered_later(
    fresh: NATS,
) -> None:
    """The consumer reads a message twice and never acknowledges it (as a service that
    crashes on it would); the server stops at max_deliver=2. The advisory is kept in GAVEUP
    although no sweeper ran then, and the sweep started afterwards dead-letters the message."""
    js = fresh.jetstream()
    await js.publish("activity.u-1.item_viewed", b'{"crashes": "the service"}')
    consumer = DurableConsumer(js, "ACTIVITY", "crashy", max_deliver=2, ack_wait=0.3)
    await consumer.start()
    seen = 0
    for _ in range(20):
        seen += len(await consumer.fetch(1, timeout=0.5))
        if (await js.stream_info(GAVE_UP)).state.messages:
            break
    assert seen == 2
    await consumer.stop()

    bus = Bus(fresh)
    swept: list[Refusal] = []

    async def give_up(r: Refusal) -> None:
        await bus.deadletter(refusals("crashy", [(r, r.reason)]))
        swept.append(r)

    stop = asyncio.Event()
    task = asyncio.create_task(sweep(js, "ACTIVITY", "crashy", give_up, stop))
    try:
        async with asyncio.timeout(10):
            while not swept:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    [dead] = [orjson.loads(d) for _, _, d in await read_all(js, "DEADLETTER")]
    assert dead["source"] == "crashy" and dead["origin"] == "ACTIVITY#1"
    assert "delivered 2 times" in dead["reason"]

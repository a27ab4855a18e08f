"""The recommender's publishes of one batch leave together: `Pipeline.publish` takes a free
place in its window without yielding to the event loop, so nats-py's flusher writes the whole
batch in one socket write instead of one write per list (against a real nats-server)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from engine.bus.pipeline import Conditional, Pipeline, publish_conditional
from nerve_client.subjects import reco_subject, user_token


async def test_a_batch_of_publishes_is_sent_without_yielding_between_them(fresh: NATS) -> None:
    pipeline = Pipeline(fresh)
    loop = asyncio.get_running_loop()
    items = [
        Conditional(reco_subject(user_token(f"w{u}", None), "home"), b"{}", f"id-{u}", 0)
        for u in range(40)
    ]
    await pipeline.publish(items[0].subject, b"{}")  # the reply inbox is subscribed once
    sent_before_the_loop_ran: list[int] = []
    published = [0]
    original = fresh.publish

    async def counting(*args: object, **kwargs: object) -> None:
        published[0] += 1
        await original(*args, **kwargs)  # type: ignore[arg-type]

    fresh.publish = counting  # type: ignore[method-assign]
    try:
        loop.call_soon(lambda: sent_before_the_loop_ran.append(published[0]))
        deadline = loop.time() + 10
        futures = [await pipeline.publish(i.subject, i.payload, {}, deadline) for i in items]
        assert sent_before_the_loop_ran == []  # forty publishes, and the loop never ran
        await asyncio.wait(futures, timeout=10)
    finally:
        fresh.publish = original  # type: ignore[method-assign]
    assert sent_before_the_loop_ran == [40]
    acks = await publish_conditional(pipeline, items[:3], timeout=10)
    assert acks == [None, None, None]  # the compare-and-set still holds (they exist now)

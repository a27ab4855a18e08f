"""The net under `max_deliver`: a message a consumer stopped redelivering is dead-lettered.

A durable consumer delivers a message at most `max_deliver` times; then the server stops and
publishes an advisory on `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`. A
service that crashes on a message every time it reads it never gets to dead-letter it itself
(the profiles service does so on the last delivery it survives; the recommender splits failing
batches), and a core advisory sent while it was down would be lost: the GAVEUP stream keeps
them. Each service sweeps the advisories of its own consumers on start and while it runs: it
reads the message the server gave up on, dead-letters it with the number of deliveries, and
only then acknowledges the advisory. So every message is either processed or in DEADLETTER.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.bus.decode import Refusal
from nerve_client.subjects import GAVE_UP, max_deliveries_subject

log = logging.getLogger("nerve.gaveup")

GiveUp = Callable[[Refusal], Awaitable[None]]
"""Dead-letters one message the server gave up on (raises if it could not)."""


def durable_name(stream: str, consumer: str) -> str:
    return f"{consumer}-gaveup-{stream}"


async def sweep(
    js: JetStreamContext, stream: str, consumer: str, give_up: GiveUp, stop: asyncio.Event
) -> None:
    """Dead-letter each message `consumer` of `stream` gave up on, until `stop`."""
    name = durable_name(stream, consumer)
    config = ConsumerConfig(
        durable_name=name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=max_deliveries_subject(stream, consumer),
        ack_wait=30.0,
    )
    sub = None
    try:
        while not stop.is_set():
            try:
                if sub is None:
                    await js.add_consumer(GAVE_UP, config)
                    sub = await js.pull_subscribe_bind(name, GAVE_UP)
                try:
                    msgs = await sub.fetch(16, timeout=1.0)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await _one(js, stream, msg.data, give_up)
                    await msg.ack()
            except Exception as exc:  # broker away, stream missing: try again later
                log.warning("sweeping %s: %s", name, exc)
                sub = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
    finally:  # stopped or cancelled: a pull subscription left behind holds the fetch's late
        if sub is not None:  # status message, which the connection's drain then waits 30 s for
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _one(js: JetStreamContext, stream: str, advisory: bytes, give_up: GiveUp) -> None:
    info = orjson.loads(advisory)
    seq, deliveries = int(info["stream_seq"]), int(info.get("deliveries", 0))
    try:
        msg = await js.get_msg(stream, seq=seq, direct=True)
    except NotFoundError:  # erased or aged out since: nothing left to keep
        return
    reason = f"delivered {deliveries} times and never acknowledged; the consumer gave up"
    await give_up(Refusal(stream, seq, msg.subject or "", msg.data or b"", reason))

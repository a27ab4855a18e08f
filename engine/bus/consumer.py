"""Consuming streams: a durable pull consumer for services, a fast ordered scan for replays.

`DurableConsumer` is what a service runs on: batches are fetched, the service stores their
effect, then acknowledges them (`ack`), asks for a later redelivery (`nak`), or gives up on one
(`term`, after dead-lettering it). Several replicas may share one durable consumer.

`scan` reads a stream (or a filtered part of it) from the start as fast as nats-py allows,
through an ordered push consumer with a callback (NATS-NOTES: callbacks are 4-8x faster than
fetch), and hands batches to a plain function. Nothing is acknowledged: a replay is rerun, not
resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.errors import FieldError
from engine.events import DeadLetter


def ack_info(reply: str) -> tuple[int, int, int]:
    """(times delivered, stream sequence, messages pending) from a JetStream reply subject."""
    t = reply.split(".")
    if (
        len(t) >= 12
    ):  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<dlv>.<sseq>.<cseq>.<ts>.<pend>
        return int(t[6]), int(t[7]), int(t[10])
    return int(t[4]), int(t[5]), int(t[8])


@dataclass(slots=True)
class Delivery:
    """One delivered message: where it was stored, its bytes, and how often it came."""

    stream: str
    seq: int
    subject: str
    data: bytes
    delivered: int
    msg: Msg = field(repr=False)


class DurableConsumer:
    """A durable pull consumer on `stream`, created (or updated) on `start`."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        max_ack_pending: int = 20_000,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.max_deliver = max_deliver
        self.config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
            max_waiting=512,
        )
        self._sub: Any = None

    async def start(self) -> None:
        await self.js.add_consumer(self.stream, self.config)
        self._sub = await self.js.pull_subscribe_bind(self.durable, self.stream)

    async def fetch(self, batch: int, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages; an empty list when none came within `timeout`."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:
            return []
        out = []
        for m in msgs:
            delivered, seq, _ = ack_info(m.reply)
            out.append(Delivery(self.stream, seq, m.subject, m.data, delivered, m))
        return out

    async def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            await d.msg.ack()

    async def nak(self, delivery: Delivery, delay: float) -> None:
        await delivery.msg.nak(delay=delay)

    async def term(self, delivery: Delivery) -> None:
        await delivery.msg.term()

    async def ack_floor(self) -> int:
        """The stream sequence at and below which every message has been acknowledged."""
        info = await self.js.consumer_info(self.stream, self.durable)
        return info.ack_floor.stream_seq if info.ack_floor else 0

    async def backlog(self) -> tuple[int, int]:
        """(messages not yet delivered, delivered but not acknowledged)."""
        info = await self.js.consumer_info(self.stream, self.durable)
        return info.num_pending or 0, info.num_ack_pending or 0

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class PushConsumer:
    """A durable push consumer that hands each message to `on_message` as it arrives: the
    low-latency path (NATS-NOTES: a callback sees a message ~0.3 ms after its publish, where
    `fetch` adds a task and a timer per call).

    Acknowledgement is cumulative (`AckPolicy.ALL`): `ack(d)` acknowledges `d` and everything
    delivered before it, which is exact for one worker that finishes messages in delivery
    order. What is not acknowledged within `ack_wait` comes again. A new consumer starts at the
    next message stored (`deliver_new`) or at the first one.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        on_message: Callable[[Delivery], None],
        *,
        deliver_new: bool = True,
        ack_wait: float = 30.0,
        max_ack_pending: int = 20_000,
        max_deliver: int = 5,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.on_message = on_message
        self.config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
        )
        self._sub: Any = None

    async def start(self) -> None:
        info = await self.js.stream_info(self.stream)
        stream = self.stream

        async def on_msg(msg: Msg) -> None:
            delivered, seq, _ = ack_info(msg.reply or "")
            self.on_message(Delivery(stream, seq, msg.subject, msg.data, delivered, msg))

        self._sub = await self.js.subscribe(
            _stream_subject(info),
            durable=self.durable,
            stream=self.stream,
            cb=on_msg,
            manual_ack=True,
            config=self.config,
            # No flow control: with it, deliveries here stalled for seconds at a time until
            # the next idle heartbeat answered a stalled flow-control request. The server
            # still stops at max_ack_pending unacknowledged messages.
            pending_msgs_limit=200_000,
            pending_bytes_limit=256 << 20,
        )

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge `delivery` and every message delivered before it."""
        await delivery.msg.ack()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


Batch = list[tuple[int, str, bytes]]


def refusals(source: str, refused: list[tuple[Delivery, str]]) -> list[DeadLetter]:
    """Dead-letter records for deliveries a service refused, each with its reason and origin."""
    now = datetime.now(UTC)
    return [
        DeadLetter.build(source, d.data, [FieldError("", reason)], now, f"{d.stream}#{d.seq}")
        for d, reason in refused
    ]


def _stream_subject(info: Any) -> str:
    """The subject that selects a whole stream: its one subject, else every subject."""
    subjects = info.config.subjects or []
    return str(subjects[0]) if len(subjects) == 1 else ">"


async def scan(
    js: JetStreamContext,
    stream: str,
    handle: Callable[[Batch], None],
    *,
    subject: str | None = None,
    batch: int = 2000,
    idle_timeout: float = 5.0,
    since: datetime | None = None,
) -> int:
    """Feed every message of `stream` (filtered by `subject`) to `handle` in batches of
    (sequence, subject, payload), in order; return how many were read.

    Reads up to the last message that existed when it started (from the first stored at or
    after `since`, if given). `handle` runs in the event loop, between deliveries: keep it
    CPU-only.
    """
    wide = subject is not None and ("*" in subject or ">" in subject)
    try:
        # a wildcard filter may match a million subjects: count it on the consumer instead
        info = await js.stream_info(stream, subjects_filter=None if wide else subject)
    except NotFoundError:
        return 0
    matching = (
        sum((info.state.subjects or {}).values()) if subject and not wide else info.state.messages
    )
    if matching == 0:
        return 0
    last = info.state.last_seq
    if subject is None:
        subject = _stream_subject(info)
    done = asyncio.get_running_loop().create_future()
    pending: Batch = []
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        if done.done():
            return
        _, seq, left = ack_info(msg.reply or "")
        if seq > last:
            left = 0
        else:
            pending.append((seq, msg.subject, msg.data))
            count += 1
        if len(pending) >= batch or left == 0 or seq >= last:
            try:
                handle(pending[:])
            except BaseException as exc:
                done.set_exception(exc)
                return
            pending.clear()
            if left == 0 or seq >= last:
                done.set_result(None)

    config = ConsumerConfig(
        **(_start_at(1, since)), filter_subject=subject, ack_policy=AckPolicy.NONE
    )
    sub = await js.subscribe(
        subject,
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        config=config,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1 << 30,
    )
    try:
        if wide or since is not None:
            state = await sub.consumer_info()
            nothing = not state.num_pending and not (
                state.delivered and state.delivered.consumer_seq
            )
            if nothing and not done.done():
                done.set_result(None)
        while not done.done():
            before = count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), idle_timeout)
            if not done.done() and count == before:
                # Nothing arrived for idle_timeout: the rest was deleted or purged meanwhile.
                if pending:
                    handle(pending[:])
                    pending.clear()
                break
        if done.done():
            done.result()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return count


def _consumer_seq(reply: str) -> int:
    t = reply.split(".")
    return int(t[8]) if len(t) >= 12 else int(t[6])


def _start_at(start_seq: int, since: datetime | None) -> dict[str, Any]:
    """Consumer settings that start at a stream sequence, or at a time when `since` is given."""
    if since is not None:
        return {
            "deliver_policy": DeliverPolicy.BY_START_TIME,
            "opt_start_time": since.astimezone(UTC),
        }
    return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": max(1, start_seq)}


@contextlib.asynccontextmanager
async def tail(
    js: JetStreamContext,
    stream: str,
    start_seq: int,
    handle: Callable[[Batch], None],
    *,
    subject: str | None = None,
    since: datetime | None = None,
    check_every: float = 30.0,
) -> AsyncIterator[None]:
    """Feed `handle` every message of `stream` from `start_seq` on (or from the first stored at
    or after `since`), as it arrives, while the block runs; nothing is acknowledged.

    An ephemeral push consumer without flow control: with nats-py 2.16 an ordered consumer's
    flow-control replies went missing here under load, stalling delivery until its next idle
    heartbeat, 5 s later. Order is checked instead: a gap in the consumer sequence (a slow
    client's dropped messages), or a consumer the server no longer has (checked every
    `check_every` seconds, e.g. after a long disconnection), recreates it after the last stream
    sequence handled, so nothing is lost or handled twice."""
    if subject is None:
        subject = _stream_subject(await js.stream_info(stream))
    state = {"last": 0, "cseq": 0}
    gap = asyncio.Event()
    subs: list[Any] = []

    async def on_msg(msg: Msg) -> None:
        if gap.is_set() or not msg.reply:
            return
        cseq = _consumer_seq(msg.reply)
        if cseq != state["cseq"] + 1:
            gap.set()
            return
        _, seq, _ = ack_info(msg.reply)
        state["cseq"], state["last"] = cseq, seq
        handle([(seq, msg.subject, msg.data)])

    async def start(from_seq: int, at: datetime | None) -> None:
        config = ConsumerConfig(
            **_start_at(from_seq, at),
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        state["cseq"] = 0
        subs.append(
            await js.subscribe(
                subject,
                stream=stream,
                cb=on_msg,
                manual_ack=True,
                config=config,
                pending_msgs_limit=200_000,
                pending_bytes_limit=256 << 20,
            )
        )

    async def mend() -> None:
        while True:
            try:
                await asyncio.wait_for(gap.wait(), check_every)
            except TimeoutError:
                try:
                    await subs[-1].consumer_info()
                    continue
                except Exception:  # gone (or the server is away: try again then)
                    gap.set()
            with contextlib.suppress(Exception):
                await subs.pop().unsubscribe()
            gap.clear()  # before subscribing: the new consumer's first messages may come at once
            try:
                if state["last"]:
                    await start(state["last"] + 1, None)
                else:
                    await start(start_seq, since)
            except Exception:  # still unreachable: try again after a pause
                gap.set()
                await asyncio.sleep(1.0)

    await start(start_seq, since)
    mender = asyncio.create_task(mend())
    try:
        yield
    finally:
        mender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mender
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

"""Reading streams without acknowledgement: `scan` (what is stored, in order) and `tail` (live).

`scan` reads a stream (or a filtered part of it) from the start as fast as nats-py allows,
through an ordered push consumer with a callback (NATS-NOTES: callbacks are 4-8x faster than
fetch), and hands batches to a plain function. Nothing is acknowledged: a replay is rerun, not
resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.bus.jsmeta import Batch, ack_info, consumer_seq, stream_subject
from nerve_client.subjects import stored_filter


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
    found = await _extent(js, stream, subject)
    if found is None:
        return 0
    last, subject, wide = found
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
        if (wide or since is not None) and await _nothing_to_read(sub) and not done.done():
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


async def _nothing_to_read(sub: Any) -> bool:
    """True when a new consumer has nothing pending and delivered nothing (an empty filter)."""
    state = await sub.consumer_info()
    return not state.num_pending and not (state.delivered and state.delivered.consumer_seq)


def _partitioned(info: Any) -> bool:
    transform = info.config.subject_transform
    return bool(transform and "partition(" in (transform.dest or ""))


async def _extent(
    js: JetStreamContext, stream: str, subject: str | None
) -> tuple[int, str, bool] | None:
    """(last sequence, subject to consume, whether it is a wildcard) of what a scan reads;
    None if nothing matches. A filter written for `<prefix>.<user>.<type>` is translated to
    the stored form of a partitioned stream (`stored_filter`)."""
    try:
        info = await js.stream_info(stream)
        if subject is not None:
            subject = stored_filter(subject, _partitioned(info))
        wide = subject is not None and ("*" in subject or ">" in subject)
        if subject is not None and not wide:
            # a wildcard filter may match a million subjects: count it on the consumer instead
            info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return None
    matching = (
        sum((info.state.subjects or {}).values()) if subject and not wide else info.state.messages
    )
    if matching == 0:
        return None
    return info.state.last_seq, subject or stream_subject(info), wide


def _start_at(start_seq: int, since: datetime | None) -> dict[str, Any]:
    """Consumer settings that start at a stream sequence, or at a time when `since` is given."""
    if since is not None:
        return {
            "deliver_policy": DeliverPolicy.BY_START_TIME,
            "opt_start_time": since.astimezone(UTC),
        }
    return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": max(1, start_seq)}


class _Follower:
    """The ephemeral consumer behind `tail`, recreated after a gap or when the server lost it."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        handle: Callable[[Batch], None],
        check_every: float,
    ) -> None:
        self.js, self.stream, self.subject = js, stream, subject
        self.handle = handle
        self.check_every = check_every
        self.last = 0  # the last stream sequence handled
        self.cseq = 0  # the last consumer sequence seen
        self.gap = asyncio.Event()
        self.subs: list[Any] = []

    async def on_msg(self, msg: Msg) -> None:
        if self.gap.is_set() or not msg.reply:
            return
        cseq = consumer_seq(msg.reply)
        if cseq != self.cseq + 1:
            self.gap.set()
            return
        _, seq, _ = ack_info(msg.reply)
        self.cseq, self.last = cseq, seq
        self.handle([(seq, msg.subject, msg.data)])

    async def start(self, from_seq: int, at: datetime | None) -> None:
        config = ConsumerConfig(
            **_start_at(from_seq, at),
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        self.cseq = 0
        self.subs.append(
            await self.js.subscribe(
                self.subject,
                stream=self.stream,
                cb=self.on_msg,
                manual_ack=True,
                config=config,
                pending_msgs_limit=200_000,
                pending_bytes_limit=256 << 20,
            )
        )

    async def mend(self, start_seq: int, since: datetime | None) -> None:
        """Forever: on a gap, or a consumer gone, start again after the last one handled."""
        while True:
            try:
                await asyncio.wait_for(self.gap.wait(), self.check_every)
            except TimeoutError:
                try:
                    await self.subs[-1].consumer_info()
                    continue
                except Exception:  # gone (or the server is away: try again then)
                    self.gap.set()
            with contextlib.suppress(Exception):
                await self.subs.pop().unsubscribe()
            self.gap.clear()  # before subscribing: the new consumer's first messages come at once
            try:
                if self.last:
                    await self.start(self.last + 1, None)
                else:
                    await self.start(start_seq, since)
            except Exception:  # still unreachable: try again after a pause
                self.gap.set()
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


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
    info = await js.stream_info(stream)
    if subject is None:
        subject = stream_subject(info)
    subject = stored_filter(subject, _partitioned(info))
    follower = _Follower(js, stream, subject, handle, check_every)
    await follower.start(start_seq, since)
    mender = asyncio.create_task(follower.mend(start_seq, since))
    try:
        yield
    finally:
        mender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mender
        await follower.close()

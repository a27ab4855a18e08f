"""Reading stored messages back: the newest few, or a whole stream in order (small tools, tests).

The services' hot consume loops live elsewhere; these helpers favour simplicity.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError


async def last_messages(
    js: JetStreamContext, stream: str, limit: int
) -> tuple[int, list[tuple[int, bytes]]]:
    """(number of messages in `stream`, the newest `limit` as (sequence, payload), newest first)."""
    info = await js.stream_info(stream)
    found: list[tuple[int, bytes]] = []
    seq = info.state.last_seq
    while seq >= max(1, info.state.first_seq) and len(found) < limit:
        with contextlib.suppress(NotFoundError):  # deleted or purged
            msg = await js.get_msg(stream, seq=seq, direct=True)
            found.append((seq, msg.data or b""))
        seq -= 1
    return info.state.messages, found


async def read_stream(
    js: JetStreamContext, stream: str, subject: str | None = None, batch: int = 500
) -> AsyncIterator[tuple[int, str, bytes]]:
    """Every message of `stream` (optionally filtered) as (sequence, subject, payload), in order.

    Stops at the last message that existed when it started.
    """
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if info.state.messages == 0:
        return
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30.0,
        filter_subject=subject,
    )
    sub = await js.pull_subscribe(subject or "", stream=stream, config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except TimeoutError:
                return
            for m in msgs:
                seq = m.metadata.sequence.stream
                yield seq, m.subject, m.data
                if seq >= last:
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

"""Reading stored messages back: the newest few, or a whole stream in order (tools, tests)."""

from __future__ import annotations

import contextlib
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from engine.bus.consumer import scan
from nerve_client.errors import ConfigError


async def last_messages(
    js: JetStreamContext, stream: str, limit: int
) -> tuple[int, list[tuple[int, bytes]]]:
    """(number of messages in `stream`, the newest `limit` as (sequence, payload), newest first)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:  # a broker nobody provisioned yet: say what to do, not a traceback
        raise ConfigError(f"no stream {stream} on this broker: run `nerve init` first") from None
    found: list[tuple[int, bytes]] = []
    seq = info.state.last_seq
    while seq >= max(1, info.state.first_seq) and len(found) < limit:
        with contextlib.suppress(NotFoundError):  # deleted or purged
            msg = await js.get_msg(stream, seq=seq, direct=True)
            found.append((seq, msg.data or b""))
        seq -= 1
    return info.state.messages, found


async def last_for_subject(
    js: JetStreamContext, stream: str, subject: str
) -> tuple[int, bytes] | None:
    """(sequence, payload) of the newest message on `subject`, or None (direct get)."""
    try:
        msg = await js.get_msg(stream, subject=subject, direct=True)
    except NotFoundError:
        return None
    return int(msg.seq or 0), msg.data or b""


async def read_all(
    js: JetStreamContext, stream: str, subject: str | None = None, since: datetime | None = None
) -> list[tuple[int, str, bytes]]:
    """Every message of `stream` (optionally filtered) as (sequence, subject, payload), in
    order, up to the last one that existed when it started. For tools and tests: it holds them
    all in memory."""
    found: list[tuple[int, str, bytes]] = []
    await scan(js, stream, found.extend, subject=subject, since=since)
    return found

"""Read-only looks at the broker for operators: streams' sizes, consumers' lag, one message.

The operator console (`engine.gateway.console`) and the gateway's `/metrics` read these; they
change nothing on the server. A stream or consumer that does not exist is an empty answer, not
an error: the console shows what is there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

INTERNAL_PREFIXES = ("KV_", "OBJ_")
"""Streams that hold KV buckets and object stores: not event streams."""


@dataclass(frozen=True)
class StreamState:
    """How much one stream holds and its newest sequence."""

    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class ConsumerLag:
    """One durable consumer: `pending` messages it has not been delivered yet (its lag),
    `ack_pending` delivered and not yet acknowledged, `redelivered` delivered more than once."""

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int


async def stream_states(js: JetStreamContext) -> list[StreamState]:
    """Every event stream (not the KV and object-store ones), by name."""
    found = [
        StreamState(
            i.config.name or "",
            int(i.state.messages),
            int(i.state.bytes),
            int(i.state.first_seq),
            int(i.state.last_seq),
        )
        for i in await js.streams_info()
    ]
    return sorted(
        (s for s in found if not s.name.startswith(INTERNAL_PREFIXES)), key=lambda s: s.name
    )


async def stream_state(js: JetStreamContext, stream: str) -> StreamState | None:
    """One stream's state, or None when it does not exist."""
    try:
        i = await js.stream_info(stream)
    except NotFoundError:
        return None
    s = i.state
    return StreamState(stream, s.messages, s.bytes, s.first_seq, s.last_seq)


async def consumer_lags(js: JetStreamContext, stream: str) -> list[ConsumerLag]:
    """The durable consumers of `stream` (ephemeral readers such as tails are left out)."""
    try:
        infos = await js.consumers_info(stream)
    except NotFoundError:
        return []
    return sorted(
        (
            ConsumerLag(
                stream,
                i.name,
                int(i.num_pending or 0),
                int(i.num_ack_pending or 0),
                int(i.num_redelivered or 0),
            )
            for i in infos
            if i.config.durable_name
        ),
        key=lambda c: c.name,
    )


async def message_at(js: JetStreamContext, stream: str, seq: int) -> bytes | None:
    """The payload stored at `seq` in `stream` (direct get), or None when there is none."""
    with contextlib.suppress(NotFoundError):
        msg = await js.get_msg(stream, seq=seq, direct=True)
        return msg.data or b""
    return None

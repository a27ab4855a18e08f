"""`Bus`: the one holder of a NATS connection, and every operation Nerve performs on it.

Everything outside `engine.bus` talks to the broker through a `Bus` (tests and
`nerve_client.client`, the stand-alone door for other teams' services, are the only exceptions), so
the layering test and mypy see every call. The methods are thin: the work is done by the
modules beside this one (`publisher`, `pipeline`, `consumer`, `reader`, `kv`, `registry`,
`provision`), which hold the measured reasons for how each is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from engine.bus import info, reader
from engine.bus.connection import ConnectionState, connect
from engine.bus.consumer import (
    GIVE_UP_AFTER,
    Batch,
    Delivery,
    DurableConsumer,
    PushConsumer,
    scan,
    tail,
)
from engine.bus.gaveup import GiveUp, sweep
from engine.bus.kv import JetStreamKV, erase_subject
from engine.bus.pipeline import Ack, Conditional, publish_conditional
from engine.bus.provision import Report, provision
from engine.bus.publisher import Outgoing, Publisher
from engine.bus.registry import Registry
from engine.settings import ACK_WAIT_S, StreamSettings
from nerve_client.credentials import Credential, Tls
from nerve_client.errors import BrokerUnavailable, Conflict, NoAnswer
from nerve_client.events import DeadLetter, Envelope
from nerve_client.subjects import FORGET_SUBJECT, PUBLISHED_SUBJECT


class Subscription(Protocol):
    """A core subscription; `unsubscribe` ends it."""

    async def unsubscribe(self, limit: int = 0) -> None: ...


class Bus:
    """A NATS connection and what Nerve does with it. Build with `await Bus.connect(...)`, or
    around a connected client with `Bus(nc)` (tests)."""

    def __init__(
        self, nc: NATS, *, state: ConnectionState | None = None, ack_timeout: float = 5.0
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.state = state or ConnectionState()
        self.publisher = Publisher(nc, ack_timeout=ack_timeout)

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        *,
        timeout: float = 10.0,
        state: ConnectionState | None = None,
        ack_timeout: float = 5.0,
        credential: Credential | None = None,
        tls: Tls | None = None,
    ) -> Bus:
        """Connect as `credential` (none: as the URL says), retrying for `timeout` seconds;
        `BrokerUnavailable` after that, `AuthRefused` at once if the server refuses it."""
        state = state or ConnectionState()
        nc = await connect(url, name, timeout=timeout, state=state, credential=credential, tls=tls)
        return cls(nc, state=state, ack_timeout=ack_timeout)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (tests build a `Bus` without a `ConnectionState`)."""
        return bool(self._nc.is_connected)

    async def close(self) -> None:
        """Send what is buffered, then close."""
        with contextlib.suppress(Exception):
            await self._nc.drain()

    # -- publishing to streams --------------------------------------------------------------
    async def publish(self, messages: Sequence[Outgoing]) -> list[Ack]:
        """Store a batch (deduplicated on each message id); `PublishError` if any is not."""
        return await self.publisher.publish(messages)

    async def publish_events(self, events: Sequence[Envelope]) -> list[Ack]:
        return await self.publisher.publish_events(events)

    async def deadletter(self, records: Sequence[DeadLetter]) -> list[Ack]:
        return await self.publisher.deadletter(records)

    async def publish_if_last(
        self, subject: str, payload: bytes, msg_id: str | None, expected_seq: int
    ) -> Ack:
        """Store `payload` only if `subject`'s last sequence is `expected_seq` (0: the subject
        is empty); raises `Conflict` when another writer got there first."""
        (ack,) = await self.publish_if_last_many(
            [Conditional(subject, payload, msg_id, expected_seq)]
        )
        if ack is None:
            raise Conflict(subject, expected_seq)
        return ack

    async def publish_if_last_many(
        self, items: Sequence[Conditional], timeout: float | None = None
    ) -> list[Ack | None]:
        """Conditional publishes, pipelined; per item its `Ack`, or None where the race was
        lost (read the subject again and retry). Any other failure raises `PublishError`."""
        timeout = self.publisher.ack_timeout if timeout is None else timeout
        return await publish_conditional(self.publisher.pipeline, items, timeout)

    # -- reading streams ---------------------------------------------------------------------
    async def last(self, stream: str, subject: str) -> tuple[int, bytes] | None:
        """(sequence, payload) of the newest message on `subject`, or None."""
        return await reader.last_for_subject(self._js, stream, subject)

    async def last_messages(self, stream: str, limit: int) -> tuple[int, list[tuple[int, bytes]]]:
        """(messages in `stream`, the newest `limit` as (sequence, payload), newest first)."""
        return await reader.last_messages(self._js, stream, limit)

    async def read_all(
        self, stream: str, subject: str | None = None, since: datetime | None = None
    ) -> list[tuple[int, str, bytes]]:
        """Every message of `stream` in memory (tools and tests)."""
        return await reader.read_all(self._js, stream, subject, since)

    async def scan(
        self,
        stream: str,
        handle: Callable[[Batch], None],
        *,
        subject: str | None = None,
        since: datetime | None = None,
        batch: int = 2000,
    ) -> int:
        """Feed every stored message of `stream` to `handle` in order (`consumer.scan`)."""
        return await scan(self._js, stream, handle, subject=subject, since=since, batch=batch)

    def tail(
        self,
        stream: str,
        start_seq: int,
        handle: Callable[[Batch], None],
        *,
        subject: str | None = None,
        since: datetime | None = None,
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Follow `stream` live from `start_seq` (or `since`) while the block runs."""
        return tail(self._js, stream, start_seq, handle, subject=subject, since=since)

    @contextlib.asynccontextmanager
    async def follow(self, stream: str, handle: Callable[[Batch], None]) -> AsyncIterator[int]:
        """Everything stored in `stream` now (scanned), then every new message live; yields
        the number scanned. For in-memory views such as the catalogue."""
        last = [0]

        def on_batch(batch: Batch) -> None:
            handle(batch)
            if batch:
                last[0] = batch[-1][0]

        n = await self.scan(stream, on_batch)
        async with self.tail(stream, last[0] + 1, handle):
            yield n

    def durable(
        self,
        stream: str,
        durable: str,
        *,
        max_deliver: int = GIVE_UP_AFTER,
        ack_wait: float = ACK_WAIT_S,
        filter_subject: str | None = None,
    ) -> DurableConsumer:
        """A durable pull consumer (created on `start`)."""
        return DurableConsumer(
            self._js,
            stream,
            durable,
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            filter_subject=filter_subject,
        )

    def push(
        self,
        stream: str,
        durable: str,
        on_message: Callable[[Delivery], None],
        *,
        ack_wait: float = ACK_WAIT_S,
    ) -> PushConsumer:
        """A durable push consumer with cumulative acknowledgement (created on `start`)."""
        return PushConsumer(self._js, stream, durable, on_message, ack_wait=ack_wait)

    async def sweep_gave_up(
        self, stream: str, durable: str, give_up: GiveUp, stop: asyncio.Event
    ) -> None:
        """Dead-letter (through `give_up`) each message `durable` of `stream` stopped
        redelivering, until `stop` (`engine.bus.gaveup`)."""
        await sweep(self._js, stream, durable, give_up, stop)

    async def stream_messages(self, stream: str) -> int:
        """How many messages `stream` holds (0 if it does not exist)."""
        try:
            return int((await self._js.stream_info(stream)).state.messages)
        except NotFoundError:
            return 0

    # -- read-only looks for operators (`engine.bus.info`) ------------------------------------
    async def stream_states(self) -> list[info.StreamState]:
        """Every event stream's size and newest sequence (KV and object stores left out)."""
        return await info.stream_states(self._js)

    async def stream_state(self, stream: str) -> info.StreamState | None:
        """One stream's size and newest sequence; None when it does not exist."""
        return await info.stream_state(self._js, stream)

    async def consumer_lags(self, stream: str) -> list[info.ConsumerLag]:
        """Lag (`num_pending`) and ack-pending of each durable consumer of `stream`."""
        return await info.consumer_lags(self._js, stream)

    async def message_at(self, stream: str, seq: int) -> bytes | None:
        """The payload at `seq` of `stream`, or None."""
        return await info.message_at(self._js, stream, seq)

    async def erase_subject(self, stream: str, subject: str) -> int:
        """Securely erase every message of `stream` on `subject` (wildcards allowed)."""
        return await erase_subject(self._js, stream, subject)

    async def erase(self, stream: str, seqs: Sequence[int]) -> None:
        """Securely erase messages by sequence (bytes overwritten, unlike a purge)."""
        for seq in seqs:
            with contextlib.suppress(NotFoundError):
                await self._js.delete_msg(stream, seq)

    # -- core subjects -----------------------------------------------------------------------
    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """A core request; `NoAnswer` when nobody replied within `timeout` seconds."""
        try:
            reply = await self._nc.request(subject, payload, timeout=timeout)
        except Exception as exc:  # nats-py: TimeoutError, NoRespondersError, ConnectionClosed
            raise NoAnswer(subject, str(exc) or type(exc).__name__) from None
        return bytes(reply.data)

    async def serve(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes | None]]
    ) -> Subscription:
        """Answer requests on `subject`, each in its own task (nats-py runs a subscription's
        callbacks one by one); a handler that returns None sends no reply."""
        tasks: set[asyncio.Task[None]] = set()

        async def answer(msg: Msg) -> None:
            reply = await handler(msg.data)
            if reply is not None and msg.reply:
                await msg.respond(reply)

        async def on_msg(msg: Msg) -> None:
            task = asyncio.create_task(answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return await self._nc.subscribe(subject, cb=on_msg)

    async def listen(
        self, subject: str, handle: Callable[[str, bytes], Awaitable[None]]
    ) -> Subscription:
        """A core subscription: `handle(subject, payload)` for each message, in order."""

        async def on_msg(msg: Msg) -> None:
            await handle(msg.subject, msg.data)

        return await self._nc.subscribe(subject, cb=on_msg)

    async def on_model_published(self, handle: Callable[[], Awaitable[None]]) -> Subscription:
        """Call `handle` whenever a model is activated (a core view of the stored event)."""

        async def on_msg(_subject: str, _data: bytes) -> None:
            await handle()

        return await self.listen(PUBLISHED_SUBJECT, on_msg)

    async def on_forget(self, handle: Callable[[str], None]) -> Subscription:
        """Call `handle(token)` whenever `nerve forget` erases a user (drop it from caches)."""

        async def on_msg(_subject: str, data: bytes) -> None:
            handle(data.decode())

        return await self.listen(FORGET_SUBJECT, on_msg)

    async def announce_forget(self, token: str) -> None:
        """Tell running services to drop `token` from their caches (not stored)."""
        await self._nc.publish(FORGET_SUBJECT, token.encode())
        await self._nc.flush()

    # -- buckets, object store, provisioning -------------------------------------------------
    async def kv(self, bucket: str, *, create: bool = False, history: int = 1) -> JetStreamKV:
        """A KV bucket (created when `create` and missing)."""
        if create:
            return await JetStreamKV.open_or_create(self._nc, bucket, history)
        return await JetStreamKV.open(self._nc, bucket)

    async def registry(self) -> Registry:
        """The model registry (cards, active versions, artifacts)."""
        return await Registry.open(self._nc)

    async def provision(self, settings: StreamSettings | None = None) -> Report:
        """Create or update every stream, bucket and object store (idempotent)."""
        return await provision(self._js, settings)


__all__ = ["BrokerUnavailable", "Bus", "Conditional", "Conflict", "NoAnswer", "Subscription"]

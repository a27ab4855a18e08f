"""Key-value access over JetStream KV buckets: plain get/put, pipelined compare-and-set writes,
and secure erasure of a key's whole history.

KV keys may only use `-/_=.A-Za-z0-9`; a user's subject token may contain `~`, so `kv_key`
maps `~` to `=` (which tokens never contain) and `token_of_key` maps it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from engine.bus.jsmeta import Batch
from engine.bus.pipeline import Conditional, Pipeline, publish_conditional
from engine.bus.scanning import scan


def kv_key(token: str) -> str:
    """The KV key of a subject token."""
    return token.replace("~", "=")


def token_of_key(key: str) -> str:
    return key.replace("=", "~")


class KeyValueStore(Protocol):
    """What Nerve needs of a KV bucket (a Protocol so pure logic can be tested without one)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> int: ...


class JetStreamKV:
    """`KeyValueStore` over a JetStream bucket, plus batched CAS writes and erasure."""

    def __init__(self, nc: NATS, kv: KeyValue, bucket: str) -> None:
        self._js = nc.jetstream()
        self._pipeline = Pipeline(nc)
        self._kv = kv
        self.bucket = bucket
        self.stream = f"KV_{bucket}"

    @classmethod
    async def open(cls, nc: NATS, bucket: str) -> JetStreamKV:
        return cls(nc, await nc.jetstream().key_value(bucket), bucket)

    @classmethod
    async def open_or_create(cls, nc: NATS, bucket: str, history: int = 1) -> JetStreamKV:
        """Open `bucket`, creating it (file storage, direct get) if it does not exist."""
        js = nc.jetstream()
        try:
            return cls(nc, await js.key_value(bucket), bucket)
        except NotFoundError:
            config = KeyValueConfig(
                bucket=bucket, history=history, storage=StorageType.FILE, direct=True
            )
            return cls(nc, await js.create_key_value(config), bucket)

    async def scan(self, handle: Callable[[Batch], None]) -> int:
        """Every stored revision of every key, in order (one ordered scan of the stream)."""
        return await scan(self._js, self.stream, handle)

    def subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def get(self, key: str) -> bytes | None:
        entry = await self.entry(key)
        return entry[0] if entry else None

    async def entry(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of the key, or None if absent or deleted."""
        try:
            e = await self._kv.get(key)
        except (KeyNotFoundError, KeyDeletedError, NotFoundError):
            return None
        return (e.value or b""), (e.revision or 0)

    async def entries(
        self, keys: Sequence[str], concurrency: int = 64
    ) -> dict[str, tuple[bytes, int]]:
        """The present keys among `keys`, read concurrently."""
        sem = asyncio.Semaphore(concurrency)
        out: dict[str, tuple[bytes, int]] = {}

        async def one(key: str) -> None:
            async with sem:
                e = await self.entry(key)
            if e is not None:
                out[key] = e

        await asyncio.gather(*(one(k) for k in keys))
        return out

    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, value)

    async def write_many(
        self,
        items: Sequence[tuple[str, bytes, int | None]],
        timeout: float = 10.0,
    ) -> list[int | None]:
        """Write (key, value, expected revision) pipelined; `None` expected means unconditional,
        0 means "must not exist". Returns each new revision, or None where the key had moved
        on (compare-and-set lost: reload and retry)."""
        writes = [Conditional(self.subject(k), v, None, e) for k, v, e in items]
        acks = await publish_conditional(self._pipeline, writes, timeout)
        return [None if ack is None else ack.seq for ack in acks]

    async def keys(self, timeout: float = 5.0) -> list[str]:
        """Every key that currently holds a value.

        Not nats-py's `KeyValue.keys()`: it ends the listing when the consumer has nothing
        pending and its callback has handled nothing yet, so when the server has already sent
        every message but the callback has not run (a loaded machine), it returns no keys for
        a full bucket (a flaky empty model list in the console test; the same call lists the
        erased users' tombstones). Here the end is the count the server says it delivered
        plus what is pending, and the listing waits until that many have been handled."""
        prefix = f"$KV.{self.bucket}."
        live: dict[str, bool] = {}
        handled = 0
        expected: list[int] = []
        complete = asyncio.Event()

        async def on(msg: Msg) -> None:
            nonlocal handled
            handled += 1
            headers = msg.headers or {}
            gone = headers.get("KV-Operation") in ("DEL", "PURGE") or headers.get(
                "Nats-Marker-Reason"
            ) in ("MaxAge", "Purge", "Remove")
            live[msg.subject[len(prefix) :]] = not gone
            if expected and handled >= expected[0]:
                complete.set()

        try:
            sub = await self._js.subscribe(
                prefix + ">",
                stream=self.stream,
                cb=on,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                headers_only=True,
            )
        except NotFoundError:
            return []
        try:
            info = await sub.consumer_info()
            sent = info.delivered.consumer_seq if info.delivered is not None else 0
            expected.append((sent or 0) + (info.num_pending or 0))
            if handled >= expected[0]:
                complete.set()
            await asyncio.wait_for(complete.wait(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return [key for key, holds in live.items() if holds]

    async def erase(self, key: str) -> int:
        """Delete every revision of `key` by sequence with the server's secure erase (bytes
        overwritten on disk, unlike a purge); returns how many messages were erased."""
        return await erase_subject(self._js, self.stream, self.subject(key))


async def subject_sequences(js: JetStreamContext, stream: str, subject: str) -> list[int]:
    """Sequences of every message of `stream` on `subject` (wildcards allowed), headers only."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return []
    total = sum((info.state.subjects or {}).values())
    if total == 0:
        return []
    name = f"nerve_seqs_{uuid.uuid4().hex}"
    config = ConsumerConfig(
        name=name,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=subject,
        headers_only=True,
        inactive_threshold=30.0,
        mem_storage=True,  # its config names the user: keep it off the disk
    )
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(name, stream)
    seqs: list[int] = []
    try:
        while len(seqs) < total:
            try:
                msgs = await sub.fetch(min(1000, total - len(seqs)), timeout=2.0)
            except TimeoutError:
                break
            seqs.extend(m.metadata.sequence.stream for m in msgs)
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, name)
    return seqs


async def erase_subject(js: JetStreamContext, stream: str, subject: str) -> int:
    """Securely delete every message of `stream` on `subject` (wildcards allowed)."""
    seqs = await subject_sequences(js, stream, subject)
    sem = asyncio.Semaphore(32)

    async def one(seq: int) -> None:
        async with sem:
            with contextlib.suppress(NotFoundError):  # already gone
                await js.delete_msg(stream, seq)  # secure erase is the server's default

    await asyncio.gather(*(one(s) for s in seqs))
    return len(seqs)

"""A thin key-value wrapper over a JetStream KV bucket: bytes in, bytes out, `None` if absent."""

from __future__ import annotations

from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue


class KeyValueStore(Protocol):
    """What Nerve needs of a KV bucket (a Protocol so pure logic can be tested without one)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> int: ...


class JetStreamKV:
    """`KeyValueStore` over a JetStream bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str) -> JetStreamKV:
        return cls(await js.key_value(bucket))

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.value

    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, value)

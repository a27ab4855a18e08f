"""Event ids: UUIDv7 (RFC 9562), random or derived from content so a re-send deduplicates."""

from __future__ import annotations

import hashlib
import os
import time
import uuid


def uuid7_from_bits(unix_ms: int, r: int) -> str:
    """A version-7 UUID from a 48-bit millisecond timestamp and 80 random bits (74 are used)."""
    unix_ms &= (1 << 48) - 1
    rand_a = (r >> 68) & 0xFFF  # 12 bits
    rand_b = r & ((1 << 62) - 1)  # 62 bits
    h = f"{(unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _from_parts(unix_ms: int, rand: bytes) -> str:
    return uuid7_from_bits(unix_ms, int.from_bytes(rand[:10], "big"))


def uuid7(unix_ms: int | None = None) -> str:
    """A new random UUIDv7; time-ordered, so ids sort roughly by creation time."""
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    return _from_parts(unix_ms, os.urandom(10))


def derived_uuid7(unix_ms: int, *parts: str) -> str:
    """A UUIDv7 whose random bits are a hash of `parts`: the same input always gives the same id.

    Used for rows imported from files that carry no id, so importing a row twice publishes it
    with the same `Nats-Msg-Id` and the stream keeps one copy.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=10).digest()
    return _from_parts(unix_ms, digest)


def uuid7_time_ms(value: str) -> int:
    """The millisecond timestamp stored in a UUIDv7."""
    return uuid.UUID(value).int >> 80

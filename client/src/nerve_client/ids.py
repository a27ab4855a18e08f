"""Event ids: UUIDv7 (RFC 9562), random or derived from content so a re-send deduplicates;
and the rules every identifier obeys (`canonical_id`, `unsafe_character`)."""

from __future__ import annotations

import hashlib
import os
import re
import time
import unicodedata
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


UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)
REFUSED_CATEGORIES = {
    "Cc": "a control character",  # C0, DEL and C1
    "Cf": "an invisible format character",  # bidi controls, U+200B, U+FEFF, U+2060...
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
"""Unicode categories an identifier may not contain: what a reader cannot see, what reorders
or hides text around it (Trojan Source), what breaks a line in a log."""
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""The bidirectional controls (all in category Cf), named separately in the reason."""


def canonical_id(value: str) -> str:
    """`value`, with a UUID in lowercase: UUIDs compare case-insensitively (RFC 9562), so the
    same UUID written in upper and lower case is one id (one user, one subject token). Any
    other id is kept exactly as given: ids in general are case-sensitive."""
    return value.lower() if len(value) == 36 and _UUID.match(value) else value


def unsafe_character(value: str) -> str | None:
    """Why `value` is not acceptable as an identifier (its first control, bidi or invisible
    character, by code point), or None when it has none."""
    for ch in value:
        kind = REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if kind is not None:
            if ch in BIDI_CONTROLS:
                kind = "a bidirectional control character"
            return (
                f"contains U+{ord(ch):04X} ({kind}); control, bidi and invisible "
                "characters are not allowed"
            )
    return None

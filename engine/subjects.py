"""Subject names and the token-safe encoding of user ids.

A NATS subject token may not contain `.`, `*`, `>` or whitespace, and Nerve also keeps it to a
portable alphabet. `user_token` maps any user id to such a token, reversibly:

* the characters `A-Z a-z 0-9 _ -` pass through unchanged;
* every other character becomes `~` followed by the upper-case hex of its UTF-8 bytes
  (`alice@bank.com` → `alice~40bank~2Ecom`);
* an anonymous visitor's id is prefixed with `~~` (`~` never precedes another `~` in an
  encoded user id, so an anonymous id and a user id can never share a token).

`decode_token` inverts it. Ids are limited to 128 characters (see `events.envelope`), so a token
is at most 2 + 3 × 4 × 128 bytes, far below the server's subject limit.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
ANON_PREFIX = "~~"
SYSTEM_TOKEN = "~system"
"""The token of events about the system rather than a user (`user_forgotten`). `user_token`
never produces it: `~` there is always followed by two hex digits or by another `~`."""


def _escape(value: str) -> str:
    if _SAFE.fullmatch(value):
        return value
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), value)


def _unescape(token: str) -> str:
    if "~" not in token:
        return token
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(token):
        raw += token[pos : m.start()].encode()
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += token[pos:].encode()
    return raw.decode()


def user_token(user_id: str | None = None, anonymous_id: str | None = None) -> str:
    """The subject token of a user: the user id when known, else the anonymous id."""
    if user_id:
        return _escape(user_id)
    if anonymous_id:
        return ANON_PREFIX + _escape(anonymous_id)
    raise ValueError("an event needs user_id or anonymous_id")


def decode_token(token: str) -> tuple[str | None, str | None]:
    """Invert `user_token`: returns (user_id, anonymous_id), exactly one of them set."""
    if token.startswith(ANON_PREFIX):
        return None, _unescape(token[len(ANON_PREFIX) :])
    return _unescape(token), None


def item_token(item_id: str) -> str:
    """An item id made token-safe the same way (for `catalog.item.<item>`)."""
    return _escape(item_id)


def is_user_token(token: str) -> bool:
    """False for `SYSTEM_TOKEN` (and anything else `user_token` cannot produce)."""
    return token != SYSTEM_TOKEN


def activity_subject(token: str, event_type: str) -> str:
    """`activity.<user>.<type>`: where an activity event is stored."""
    return f"activity.{token}.{event_type}"


def crm_subject(token: str, event_type: str) -> str:
    """`crm.<user>.<type>`: where an event published by a CRM service is stored."""
    return f"crm.{token}.{event_type}"


def deadletter_subject(source: str) -> str:
    """`dlq.<source>`: where inputs rejected by `source` are kept with their reason."""
    return f"dlq.{_escape(source)}"


def user_filter(token: str, stream_prefix: str = "activity") -> str:
    """The subject filter that selects every event of one user in a stream."""
    return f"{stream_prefix}.{token}.>"

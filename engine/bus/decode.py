"""The one decoder: a delivered message becomes a `Record` or a `Refusal` with its reason.

Every consumer of ACTIVITY and CRM reads through `decode`, so the subject is split, the token
checked and the JSON parsed in one place. A refusal keeps the raw bytes, for the dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.subjects import SubjectError, is_user_token, split_user_subject


@dataclass(frozen=True, slots=True)
class Record:
    """A readable event: where it is stored, whose it is, its type, the parsed event, the bytes.
    `system` is true for events about the system rather than a user (`model_published`)."""

    stream: str
    seq: int
    subject: str
    token: str
    type: str
    event: dict[str, Any]
    raw: bytes

    @property
    def system(self) -> bool:
        return not is_user_token(self.token)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message that cannot be read, and why."""

    stream: str
    seq: int
    subject: str
    raw: bytes
    reason: str


def decode(stream: str, seq: int, subject: str, raw: bytes) -> Record | Refusal:
    """Decode one stored message of a user stream (`<prefix>.<user>.<type>`)."""
    try:
        token, etype = split_user_subject(subject)
    except SubjectError as exc:
        return Refusal(stream, seq, subject, raw, str(exc))
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Refusal(stream, seq, subject, raw, f"not valid JSON: {exc}")
    if not isinstance(event, dict):
        return Refusal(stream, seq, subject, raw, "not a JSON object")
    return Record(stream, seq, subject, token, etype, event, raw)

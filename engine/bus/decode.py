"""The one decoder: a delivered message becomes a `Record` or a `Refusal` with its reason.

Every consumer of ACTIVITY and CRM reads through `decode`, so the subject is split, the JSON
parsed and the event validated in one place: against its model (`nerve_client.events.parse_event`,
the same check as at the gateway, since events may be written to the bus directly), and against
its subject, which must be the one the event itself names (stream, user and type: a payload
about another user than its subject is refused, not silently filed under the subject's user).
A partitioned stream stores `activity.<user>.<type>.<p>` (the server adds `p`): both stored
forms are read, and the event is compared with the subject without its partition token.
A refusal keeps the raw bytes and names the field, for the dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from nerve_client.errors import EventRejected
from nerve_client.events import parse_event
from nerve_client.subjects import (
    SubjectError,
    is_user_token,
    logical_subject,
    split_user_subject,
)

_NO_FUTURE_CHECK = datetime(9000, 1, 1, tzinfo=UTC)
"""Stored events are not refused for their time (neither bound of the gateway's window): it
was checked when they were accepted, and a rebuild must fold what the live services folded."""


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
    """Decode one stored message of a user stream (`<prefix>.<user>.<type>[.<partition>]`)."""
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
    try:
        envelope = parse_event(event, now=_NO_FUTURE_CHECK, max_age=None)
    except EventRejected as exc:
        return Refusal(stream, seq, subject, raw, "; ".join(str(e) for e in exc.errors))
    stored = logical_subject(subject)  # the partition token is the server's, not the event's
    if envelope.subject != stored:
        reason = f"subject: stored on {stored}, but the event belongs on {envelope.subject}"
        return Refusal(stream, seq, subject, raw, reason)
    return Record(stream, seq, subject, token, etype, event, raw)

"""The dead-letter record: what was refused, by whom, why, and the raw bytes."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from nerve_client.errors import FieldError


class Reason(BaseModel):
    """One field and why it was refused (empty field: the input as a whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    reason: str


RAW_CAP = 64 * 1024
"""Bytes of the raw input a dead letter keeps. Its base64 (4/3 of it) plus the rest of the
record stays far below the broker's 1 MiB `max_payload`, whatever was refused: the gateway
accepts bodies up to 1 MiB, and the base64 of one over ~786 KB alone exceeded the limit, so
such a body was answered 500 and lost. 64 KiB shows any event whole (a valid one is a few
hundred bytes) and enough of anything bigger to see what it was; `raw_length` and `raw_sha256`
identify the whole input."""
TEXT_CAP = 1024
"""Characters kept of each reason, of the origin and of the event id (they may echo input)."""
ERRORS_CAP = 100
"""Field errors kept per record (the first ones; `reason` says how many more there were)."""
REASON_CAP = 4 * TEXT_CAP
"""Characters kept of the one-line `reason` (every error is whole in `errors`). With the other
caps a record stays under ~300 KB, whatever it refused."""


def clip(text: str, cap: int = TEXT_CAP) -> str:
    """`text`, cut to `cap` characters with a marker saying so."""
    return text if len(text) <= cap else text[:cap] + f"... ({len(text) - cap} more)"


class DeadLetter(BaseModel):
    """A rejected input, kept on `dlq.<source>` so nothing is dropped silently.

    `raw_b64` is the input exactly as received when it arrived alone (an HTTP body, a line of
    a file, a message from the bus); for one element of a JSON batch it is that element
    re-encoded as compact JSON, since the batch was decoded as a whole. It keeps at most
    `RAW_CAP` bytes (`truncated` then says so); `raw_length` and `raw_sha256` are those of the
    whole input, so a record never exceeds the broker's payload limit and still identifies
    what was refused. Version 1 records (before the cap) have neither field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 2
    id: str = Field(
        description="By default a hash of source, origin and raw bytes, so re-running an "
        "interrupted import does not store its rejects twice; the gateway uses a fresh id per "
        "reject instead, because every request it refuses was really received"
    )
    source: str = Field(description="Who refused it: gateway, import, profiles, ...")
    reason: str = Field(description="One line: every field error joined")
    errors: list[Reason]
    raw_b64: str = Field(description=f"The raw input, base64; its first {RAW_CAP} bytes")
    raw_length: int | None = Field(default=None, ge=0, description="Bytes of the whole input")
    raw_sha256: str | None = Field(default=None, description="SHA-256 (hex) of the whole input")
    truncated: bool = Field(default=False, description="`raw_b64` holds only the first bytes")
    received_at: AwareDatetime
    origin: str | None = Field(default=None, description="Where it came from: file:line, site key")
    event_id: str | None = Field(default=None, description="The id of the event, if it had one")

    @classmethod
    def build(
        cls,
        source: str,
        raw: bytes,
        errors: list[FieldError],
        received_at: datetime,
        origin: str | None = None,
        event_id: str | None = None,
        record_id: str | None = None,
    ) -> DeadLetter:
        """A record; its id defaults to a hash of source, origin and raw bytes (see `id`).

        The raw bytes are cut to `RAW_CAP`, and every text that may echo the input to
        `TEXT_CAP` (`ERRORS_CAP` errors at most), so the record fits in one broker message."""
        if record_id is None:
            key = f"{source}\0{origin or ''}\0".encode() + raw
            record_id = hashlib.blake2b(key, digest_size=16).hexdigest()
        kept = [Reason(field=clip(e.field), reason=clip(e.reason)) for e in errors[:ERRORS_CAP]]
        reason = clip("; ".join(str(FieldError(r.field, r.reason)) for r in kept), REASON_CAP)
        if len(errors) > ERRORS_CAP:
            reason += f"; and {len(errors) - ERRORS_CAP} more"
        return cls(
            id=clip(record_id),
            source=source,
            reason=reason,
            errors=kept,
            raw_b64=base64.b64encode(raw[:RAW_CAP]).decode(),
            raw_length=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
            truncated=len(raw) > RAW_CAP,
            received_at=received_at,
            origin=None if origin is None else clip(origin),
            event_id=None if event_id is None else clip(event_id),
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

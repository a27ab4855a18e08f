"""The dead-letter record: what was refused, by whom, why, and the raw bytes."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from engine.errors import FieldError


class Reason(BaseModel):
    """One field and why it was refused (empty field: the input as a whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    reason: str


class DeadLetter(BaseModel):
    """A rejected input, kept on `dlq.<source>` so nothing is dropped silently.

    `raw_b64` is the input exactly as received when it arrived alone (an HTTP body, a line of
    a file, a message from the bus); for one element of a JSON batch it is that element
    re-encoded as compact JSON, since the batch was decoded as a whole.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    id: str = Field(
        description="By default a hash of source, origin and raw bytes, so re-running an "
        "interrupted import does not store its rejects twice; the gateway uses a fresh id per "
        "reject instead, because every request it refuses was really received"
    )
    source: str = Field(description="Who refused it: gateway, import, profiles, ...")
    reason: str = Field(description="One line: every field error joined")
    errors: list[Reason]
    raw_b64: str
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
        """A record; its id defaults to a hash of source, origin and raw bytes (see `id`)."""
        if record_id is None:
            key = f"{source}\0{origin or ''}\0".encode() + raw
            record_id = hashlib.blake2b(key, digest_size=16).hexdigest()
        return cls(
            id=record_id,
            source=source,
            reason="; ".join(str(e) for e in errors),
            errors=[Reason(field=e.field, reason=e.reason) for e in errors],
            raw_b64=base64.b64encode(raw).decode(),
            received_at=received_at,
            origin=origin,
            event_id=event_id,
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

"""The operator console's wire format: `OpsState`, what the ops service answers on
`nerve.ops.state` and the gateway's `/ops/state` returns (its OpenAPI is generated from it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

TALLY = 10_000
"""Newest dead letters counted by source and reason (older ones are only in the total)."""
LATEST = 12
"""Newest dead letters, signals and anomalies listed."""
HISTORY = 61
"""Stream samples kept: two minutes of events/s at the page's 2 s polling."""
NO_DETECTOR = "no anomaly detector running"
EXPERIMENTS = "not built yet (issue 13)"


class StreamRow(BaseModel):
    name: str
    messages: int
    last_seq: int
    rate: float = Field(description="Events/s between the last two samples")
    history: list[float] = Field(description="Events/s between successive samples, oldest first")


class ConsumerRow(BaseModel):
    stream: str
    name: str
    pending: int = Field(description="Lag: messages not yet delivered (num_pending)")
    ack_pending: int = Field(description="Delivered, not yet acknowledged")
    redelivered: int


class ReasonCount(BaseModel):
    source: str
    reason: str = Field(description="The first error, quoted values and numbers elided")
    count: int


class DeadLetterRow(BaseModel):
    seq: int
    received_at: str
    source: str
    reason: str
    origin: str | None
    event_id: str | None


class DeadLetters(BaseModel):
    total: int = Field(description="Records DEADLETTER holds")
    counted: int = Field(description=f"Records in `by_reason` (the newest {TALLY} at most)")
    by_reason: list[ReasonCount]
    latest: list[DeadLetterRow] = Field(description="Newest first")


class ModelRow(BaseModel):
    slot: str
    version: str
    model: str
    created_at: str | None
    card: dict[str, Any]


class Entry(BaseModel):
    """One stored event of SIGNALS or ANOMALIES: its subject, time and properties."""

    seq: int
    subject: str | None
    type: str | None
    time: str | None
    user: str | None
    properties: dict[str, Any]


class Section(BaseModel):
    """A part of the console: `available` false with a `note` when there is nothing to read."""

    available: bool
    note: str | None = None
    entries: list[Entry] = []


class OpsState(BaseModel):
    """`/ops/state`: everything the console shows (`engine.ops`). `problems` names the parts
    that could not be read."""

    at: float = Field(description="Unix time of this answer")
    nats_connected: bool
    streams: list[StreamRow]
    consumers: list[ConsumerRow]
    deadletters: DeadLetters | None
    models: list[ModelRow]
    signals: Section
    anomalies: Section
    experiments: Section
    services: dict[str, Any]
    freshness: str | None = Field(description="Why freshness is not measured, if it is not")
    problems: list[str]

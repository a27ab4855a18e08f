"""The evidence behind a decision of a log-watching detector (interest signals, anomalies):
one stored message, by event id, stream and sequence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One stored message behind a firing (an interest signal's or an anomaly's)."""

    event_id: str
    stream: str
    seq: int
    type: str
    time: int
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "event_id": self.event_id,
            "stream": self.stream,
            "seq": self.seq,
            "type": self.type,
            "time": iso(self.time),
        }
        if self.item_id is not None:
            out["item_id"] = self.item_id
        return out

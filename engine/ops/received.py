"""What the gateway notes of the events it stored, for the freshness histogram: ACTIVITY
sequence -> `received_at`, from its own publish acknowledgements (no read of ACTIVITY)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.bus import Ack
from nerve_client.events import Envelope
from nerve_client.subjects import ACTIVITY


class Received:
    """ACTIVITY sequence → `received_at` (Unix time) of the newest `SIZE` events this gateway
    stored, noted from the publish acknowledgements (`engine.gateway.events.store`)."""

    SIZE = 10_000

    def __init__(self) -> None:
        self.at: dict[int, float] = {}  # sequences grow: insertion order is age

    def note(self, events: Sequence[Envelope], acks: Sequence[Ack]) -> None:
        for e, ack in zip(events, acks, strict=False):
            if ack.stream == ACTIVITY and not ack.duplicate and e.received_at is not None:
                self.at[ack.seq] = e.received_at.timestamp()
        while len(self.at) > self.SIZE:
            del self.at[next(iter(self.at))]

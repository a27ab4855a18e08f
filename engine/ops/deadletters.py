"""Dead letters by source and reason: a tally over the newest `TALLY` records of DEADLETTER,
kept live by a tail of the stream."""

from __future__ import annotations

import contextlib
import re
from collections import Counter, deque
from collections.abc import AsyncIterator

from engine.bus import Bus
from engine.bus.jsmeta import Batch
from engine.ops.models import LATEST, TALLY, DeadLetterRow, ReasonCount
from nerve_client.events import DeadLetter
from nerve_client.subjects import DEADLETTER


def reason_key(text: str) -> str:
    """A dead letter's reason with quoted values and numbers elided, so alike ones count
    together ("unknown event type 'x'" and "... 'y'" are one row)."""
    text = re.sub(r"\([^)]*\)?", "(…)", text.split("; ", 1)[0])
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    # a number standing alone: not inside a word ("v2", "utf-8") nor a standard's ("RFC 3339")
    alone = r"(?<![\w.-])(?<!RFC )(?<!ISO )\d+(\.\d+)?(?![\w.-])"
    return re.sub(alone, "N", text)[:160]


class Tally:
    """Dead letters by (source, reason) and the newest ones, fed by a tail of DEADLETTER."""

    def __init__(self) -> None:
        self.order: deque[tuple[str, str]] = deque(maxlen=TALLY)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.latest: deque[DeadLetterRow] = deque(maxlen=LATEST)

    def add(self, batch: Batch) -> None:
        for seq, _subject, data in batch:
            try:
                d = DeadLetter.model_validate_json(data)
                row = DeadLetterRow(
                    seq=seq,
                    received_at=d.received_at.isoformat(),
                    source=d.source,
                    reason=d.reason,
                    origin=d.origin,
                    event_id=d.event_id,
                )
            except ValueError:
                row = DeadLetterRow(
                    seq=seq, received_at="", source="?", reason="unreadable record",
                    origin=None, event_id=None,
                )  # fmt: skip
            key = (row.source, reason_key(row.reason))
            if len(self.order) == self.order.maxlen:
                self.counts[self.order[0]] -= 1
            self.order.append(key)
            self.counts[key] += 1
            self.latest.appendleft(row)

    def reasons(self) -> list[ReasonCount]:
        return [
            ReasonCount(source=s, reason=r, count=n)
            for (s, r), n in self.counts.most_common()
            if n > 0
        ]


@contextlib.asynccontextmanager
async def following(bus: Bus) -> AsyncIterator[Tally]:
    """A tally of the newest `TALLY` dead letters, kept live while the block runs."""
    state = await bus.stream_state(DEADLETTER)
    start = 1 if state is None else max(state.first_seq, state.last_seq - TALLY + 1)
    tally = Tally()
    async with bus.tail(DEADLETTER, start, tally.add):
        yield tally

"""Reading the operator console's state from the broker: `Watch` keeps what lasts between two
questions (stream samples for events/s, the dead-letter tally) and `state_of` reads the rest.

Every part is read with a 2 s bound; a part that cannot be read (a credential without the
grant, a broker away) is named in `OpsState.problems` instead of failing the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from engine import health
from engine.bus import Bus
from engine.ops.deadletters import Tally
from engine.ops.models import (
    EXPERIMENTS,
    HISTORY,
    LATEST,
    NO_DETECTOR,
    ConsumerRow,
    DeadLetters,
    Entry,
    ModelRow,
    OpsState,
    Section,
    StreamRow,
)
from nerve_client.errors import ConfigError
from nerve_client.subjects import ANOMALIES, DEADLETTER, SIGNALS

T = TypeVar("T")
READ_TIMEOUT_S = 2.0


class Watch:
    """What the state keeps between questions: stream samples and the dead-letter tally
    (None, with `tally_note` saying why, until a tail of DEADLETTER runs)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=HISTORY)
        self.tally: Tally | None = None
        self.tally_note: str | None = "dead letters not read yet"

    async def streams(self, bus: Bus) -> list[StreamRow]:
        """Each stream's size and its events/s history (a new sample at most once a second)."""
        now = time.time()
        if not self.samples or now - self.samples[-1][0] >= 1.0:
            states = await bus.stream_states()
            self.samples.append((now, {s.name: (s.last_seq, s.messages) for s in states}))
        rows = []
        for name, (last, messages) in sorted(self.samples[-1][1].items()):
            history = []
            for (t0, a), (t1, b) in zip(self.samples, list(self.samples)[1:], strict=False):
                if name in a and name in b:
                    history.append(round(max(0, b[name][0] - a[name][0]) / (t1 - t0), 2))
            rate = history[-1] if history else 0.0
            rows.append(
                StreamRow(name=name, messages=messages, last_seq=last, rate=rate, history=history)
            )
        return rows

    def deadletters(self, total: int) -> DeadLetters | None:
        tally = self.tally
        if tally is None:
            return None
        return DeadLetters(
            total=total, counted=len(tally.order), by_reason=tally.reasons(),
            latest=list(tally.latest),
        )  # fmt: skip


async def newest(bus: Bus, stream: str, limit: int = LATEST) -> list[Entry]:
    """The newest `limit` events of `stream` (ConfigError when it does not exist)."""
    _, found = await bus.last_messages(stream, limit)
    entries = []
    for seq, data in found:
        with contextlib.suppress(ValueError, AttributeError):
            e = orjson.loads(data)
            entries.append(
                Entry(
                    seq=seq,
                    subject=None,
                    type=e.get("type"),
                    time=e.get("time"),
                    user=e.get("user_id") or e.get("anonymous_id"),
                    properties=e.get("properties") or {},
                )
            )
    return entries


async def models(bus: Bus) -> list[ModelRow]:
    """The active model of each slot with its card."""
    registry = await bus.registry()
    cards, active = await registry.listing()
    by_version = {str(c.get("version")): c for c in cards}
    rows = []
    for slot, version in sorted(active.items()):
        card = by_version.get(version, {})
        rows.append(
            ModelRow(
                slot=slot,
                version=version,
                model=str(card.get("model", "?")),
                created_at=card.get("created_at"),
                card=card,
            )
        )
    return rows


async def attempt(
    problems: list[str], what: str, read: Callable[[], Awaitable[T]], default: T
) -> T:
    """`read()`, or `default` with a line in `problems` when it fails (or takes over 2 s)."""
    try:
        return await asyncio.wait_for(read(), READ_TIMEOUT_S)
    except Exception as exc:
        problems.append(f"{what}: {exc!r}"[:300])
        return default


async def anomalies(bus: Bus, running: bool) -> Section:
    """The newest anomalies; `NO_DETECTOR` when the stream is absent or no `anomalies`
    service sends heartbeats (what it stored earlier is still shown)."""
    try:
        found = await newest(bus, ANOMALIES)
    except ConfigError:
        return Section(available=False, note=NO_DETECTOR)
    return Section(available=True, note=None if running else NO_DETECTOR, entries=found)


async def state_of(bus: Bus, watch: Watch) -> OpsState:
    """Read every part of the console's state; a part that fails is named in `problems`."""
    problems: list[str] = []
    no_streams: list[StreamRow] = []
    streams = await attempt(problems, "streams", lambda: watch.streams(bus), no_streams)

    async def lags() -> list[ConsumerRow]:
        found = [await bus.consumer_lags(s.name) for s in streams]
        return [ConsumerRow(**vars(c)) for group in found for c in group]

    if watch.tally is None:
        problems.append(f"dead letters: {watch.tally_note}")
    total = next((s.messages for s in streams if s.name == DEADLETTER), 0)
    no_entries: list[Entry] = []
    signals = await attempt(problems, "signals", lambda: newest(bus, SIGNALS), no_entries)
    no_beats: dict[str, object] = {"services": {}}
    beats = await attempt(problems, "services", lambda: health.report(bus), no_beats)
    services: dict[str, Any] = dict(beats.get("services") or {})  # type: ignore[call-overload]
    running = any(name.split(".")[0].split("-")[0] == "anomalies" for name in services)
    return OpsState(
        at=time.time(),
        nats_connected=bus.connected,
        streams=streams,
        consumers=await attempt(problems, "consumers", lags, []),
        deadletters=watch.deadletters(total),
        models=await attempt(problems, "models", lambda: models(bus), []),
        signals=Section(available=True, entries=signals),
        anomalies=await attempt(
            problems, "anomalies", lambda: anomalies(bus, running), Section(available=False)
        ),
        experiments=Section(available=False, note=EXPERIMENTS),
        services=services,
        freshness=None,
        problems=problems,
    )

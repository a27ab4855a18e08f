"""The operator console: `/ops` (a page, no build step, no CDN) and `/ops/state`, the JSON it
polls every 2 s.

**Who may look.** `/ops/state` needs an internal token (`Authorization: Bearer <token>`, as
`/v1/stats`); a site key is refused (401 without a bearer token, 403 for a bearer that is not
an internal token). The page itself holds nothing: it asks for the token in a form, keeps it in
the tab's `sessionStorage` (gone when the tab closes, never in a cookie, so no other site can
make the browser send it, and never in a URL, so no access log holds it) and sends it as
`Authorization` on each `fetch`. Polling rather than SSE because `EventSource` cannot send
headers, and a token in the query string would land in logs.

**What it shows** (`OpsState`): per durable consumer its lag (`num_pending`) and ack-pending;
events/s per stream (from each stream's last sequence, sampled when the state is asked for, at
most once a second; the page draws the last two minutes as a sparkline); DEADLETTER counts by
source and reason over its newest `TALLY` records, kept live by a tail on the stream, with the
latest entries; the active model per slot with its card (registry); the newest interest signals;
the newest anomalies from the `ANOMALIES` stream, or "no anomaly detector running" when it does
not exist; experiments: not built yet (issue 13); each service's heartbeat. A section the
gateway cannot read (a credential without the grant, a broker away) says so instead of failing
the whole answer.

`mount(app)` includes the router and the `Timing` middleware `/metrics` reads
(`engine.gateway.ops`); the router's lifespan runs the dead-letter tail and the freshness
observer beside the app's own lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from engine import health
from engine.bus import Bus
from engine.bus.jsmeta import Batch
from engine.gateway import ops
from engine.gateway.assets import WIDGETS
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON
from engine.gateway.state import gateway_state
from nerve_client import subjects
from nerve_client.errors import ConfigError
from nerve_client.events import DeadLetter

log = logging.getLogger("nerve.gateway.console")
T = TypeVar("T")
PAGE = WIDGETS / "ops"
ANOMALIES: str = getattr(subjects, "ANOMALIES", "ANOMALIES")
"""The anomaly service's stream (issue 15, item 1); its name lives in `nerve_client.subjects`."""
TALLY = 10_000
"""Newest dead letters counted by source and reason (older ones are only in the total)."""
LATEST = 12
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
    """`/ops/state`: everything the console shows (module doc). `problems` names the parts
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


def reason_key(text: str) -> str:
    """A dead letter's reason with quoted values and numbers elided, so alike ones count
    together ("unknown event type 'x'" and "... 'y'" are one row)."""
    text = re.sub(r"\([^)]*\)?", "(…)", text.split("; ", 1)[0])
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


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


class Console:
    """What the console keeps between polls: stream samples, the dead-letter tally."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=HISTORY)
        self.tally: Tally | None = None
        self.tally_note: str | None = "dead letters not read yet"
        self.freshness: ops.Freshness | None = None

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
        return await asyncio.wait_for(read(), 2.0)
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


async def state_of(request: Request) -> OpsState:
    """Read every part of the console's state; a part that fails is named in `problems`."""
    gateway = gateway_state(request)
    console: Console = request.app.state.console
    bus, problems = gateway.bus, list[str]()
    no_streams: list[StreamRow] = []
    streams = await attempt(problems, "streams", lambda: console.streams(bus), no_streams)

    async def lags() -> list[ConsumerRow]:
        found = [await bus.consumer_lags(s.name) for s in streams]
        return [ConsumerRow(**vars(c)) for group in found for c in group]

    tally = console.tally
    if tally is None:
        problems.append(f"dead letters: {console.tally_note}")
    total = next((s.messages for s in streams if s.name == subjects.DEADLETTER), 0)
    no_entries: list[Entry] = []
    signals = await attempt(problems, "signals", lambda: newest(bus, subjects.SIGNALS), no_entries)
    no_beats: dict[str, object] = {"services": {}}
    beats = await attempt(problems, "services", lambda: health.report(bus), no_beats)
    fresh = console.freshness
    services: dict[str, Any] = dict(beats.get("services") or {})  # type: ignore[call-overload]
    running = any(name.split(".")[0].split("-")[0] == "anomalies" for name in services)
    return OpsState(
        at=time.time(),
        nats_connected=gateway.connection.connected,
        streams=streams,
        consumers=await attempt(problems, "consumers", lags, []),
        deadletters=None
        if tally is None
        else DeadLetters(
            total=total,
            counted=len(tally.order),
            by_reason=tally.reasons(),
            latest=list(tally.latest),
        ),
        models=await attempt(problems, "models", lambda: models(bus), []),
        signals=Section(available=True, entries=signals),
        anomalies=await attempt(
            problems, "anomalies", lambda: anomalies(bus, running), Section(available=False)
        ),
        experiments=Section(available=False, note=EXPERIMENTS),
        services=services,
        freshness=None if fresh is None else fresh.failure,
        problems=problems,
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Beside the app's lifespan (which connected the bus first): the dead-letter tail and the
    freshness observer, each allowed to fail without stopping the gateway."""
    gateway = app.state.gateway
    console = app.state.console = Console()
    bus: Bus = gateway.bus
    ops.describe(gateway.metrics)
    freshness = console.freshness = ops.Freshness(bus, gateway.metrics)
    async with contextlib.AsyncExitStack() as stack:
        try:
            state = await asyncio.wait_for(bus.stream_state(subjects.DEADLETTER), 2.0)
            start = 1 if state is None else max(state.first_seq, state.last_seq - TALLY + 1)
            tally = Tally()
            await stack.enter_async_context(bus.tail(subjects.DEADLETTER, start, tally.add))
            console.tally, console.tally_note = tally, None
        except Exception as exc:  # e.g. a credential without reads of DEADLETTER
            console.tally_note = f"DEADLETTER not readable: {exc!r}"
            log.warning("operator console: %s", console.tally_note)
        try:
            sub = await bus.listen(subjects.reco_filter("*"), freshness.on_list)
            stack.push_async_callback(sub.unsubscribe)
            task = asyncio.create_task(freshness.run())
            stack.callback(task.cancel)
        except Exception as exc:
            freshness.failure = f"freshness not measured: {exc!r}"
        yield


router = APIRouter(lifespan=lifespan)
STATE_DOC = "Everything the operator console shows; parts it cannot read are in `problems`"


@router.get("/ops", include_in_schema=False)
async def page() -> HTMLResponse:
    """The console page: it holds no data and asks for the internal token itself."""
    return HTMLResponse((PAGE / "index.html").read_text(), headers={"Cache-Control": "no-store"})


@router.get("/ops/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    path = PAGE / name
    if name not in {"ops.js", "ops.css"} or not path.is_file():
        return JSONResponse({"detail": "not found"}, status_code=404)
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get(
    "/ops/state",
    summary="The operator console's state (internal)",
    description=STATE_DOC,
    dependencies=[Depends(require_internal)],
    response_model=OpsState,
    responses=COMMON,
    openapi_extra={"security": INTERNAL_ONLY},
)
async def get_state(request: Request) -> OpsState:
    return await state_of(request)


def mount(app: FastAPI) -> None:
    """The console's routes, and the request timing `/metrics` reports (`ops.Timing`)."""
    app.include_router(router)
    app.add_middleware(ops.Timing)

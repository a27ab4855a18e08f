"""What operators call: `/healthz`, `/metrics`, `/v1/stats` (internal) and `/`, with the
models of their answers (`Health`, `Stats`) for the OpenAPI; and what `/metrics` measures
beyond the routes' own counters (the operator console is `engine.gateway.console`).

`/metrics` is `prometheus_client`'s exposition of the gateway's `Metrics` (`engine.metrics`):

* `http_request_duration_seconds{method, route}`, a histogram kept by the `Timing` middleware:
  the time from a request's arrival to its response's first byte, by route template. Ingestion
  is `route="/v1/events"`, serving `route="/v1/recommendations/{user_id}"` (for the live stream
  `.../stream` it is the time to open it).
* `recommendation_freshness_seconds{slot}`, a histogram kept by `Freshness`: from an event's
  `received_at` (stamped by a gateway) to the moment this gateway sees the list that reflects
  it. The gateway already subscribes to the lists (`reco.>`, for browsers' live streams); a
  list carries `activity_seq`, the newest ACTIVITY sequence it reflects, and the event stored
  there (one direct get) carries `received_at`. Both times are read on the gateways' clocks,
  never a service's, and the second is when the list is visible to a browser: what freshness
  means to a visitor. Sampled: at most `Freshness.QUEUE` lookups wait at a time, the rest are
  skipped; lists reflecting an event received over `Freshness.WINDOW_S` earlier (recomputed
  after a model switch, not in answer to the event) are not counted.
* Sampled from the broker on each scrape (`sample_broker`, bounded by `SAMPLE_TIMEOUT_S`):
  `consumer_pending{stream, consumer}` (lag: messages not yet delivered),
  `consumer_ack_pending{stream, consumer}`, `stream_messages{stream}`, `stream_last_seq{stream}`;
  and **per service process**, from the heartbeat each one writes to the `health` bucket
  (`engine.health`): `service_handled{service}` (messages handled since it started),
  `service_behind{service}`, `service_stuck{service}`. Services export through the gateway
  rather than each on a port of its own: the heartbeats already cross processes and machines
  through the broker, one scrape target sees every replica, and no port needs opening per
  service. `broker_sample_ok` is 0 when a scrape could not read the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import AwareDatetime, BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import health
from engine.bus import Bus
from engine.gateway.assets import WIDGETS
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.gateway.state import GatewayState, gateway_state
from engine.metrics import CONTENT_TYPE, FRESHNESS_BUCKETS, LATENCY_BUCKETS, Labels, Metrics
from engine.recommender.stats import click_through
from nerve_client.subjects import ACTIVITY, last_token

router = APIRouter()

ERROR_CAUSE = "error_cause"
"""The `request.state` attribute a route sets to name the cause of a 5xx it answers; the app's
`Edge` middleware (`engine.gateway.edge`) reads it into `http_errors_total{status, cause}`."""


def unavailable(request: Request, cause: str, detail: str) -> JSONResponse:
    """503 with `Retry-After: 1` for a service that did not answer, its cause recorded."""
    setattr(request.state, ERROR_CAUSE, cause)
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


class Connection(BaseModel):
    """The gateway's connection to NATS."""

    connected: bool
    since: float = Field(description="Unix time of the last change")
    last_error: str | None
    slow_consumer_errors: int


class Beat(BaseModel):
    """A service's last heartbeat (`engine.health`)."""

    done: int
    behind: int
    seconds_since_progress: float
    stuck: bool


class Health(BaseModel):
    """`/healthz`: the connection, each service's heartbeat (while connected), the stuck ones."""

    nats: Connection
    services: dict[str, Beat] | None = Field(default=None, description="Absent: not read")
    stuck: list[str]
    status: Literal["ok", "degraded"]


class SlotRow(BaseModel):
    """Impressions, clicks and dismissals of one slot and model version."""

    slot: str
    model_version: str
    impressions: int
    items_shown: int
    clicks: int
    dismissals: int
    ctr: float


class Stats(BaseModel):
    """`/v1/stats`: click-through since `since`."""

    since: AwareDatetime
    rows: list[SlotRow]


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/demo/" if (WIDGETS / "demo").is_dir() else "/docs")


@router.get(
    "/healthz",
    summary="Liveness, broker connection, and services that are stuck",
    response_model=Health,
    responses={
        200: {"description": "Connected, and no service is stuck"},
        503: {"description": "Not connected, or a service is stuck", "model": Health},
    },
)
async def healthz(request: Request) -> JSONResponse:
    """200 when the gateway is connected and no service is stuck; else 503 with the reason.
    `services` lists every service's heartbeat (`engine.health`): `stuck` is true for one with
    work waiting and no progress for `engine.health.STUCK_AFTER_S` seconds."""
    gateway = gateway_state(request)
    state = gateway.connection
    body: dict[str, object] = {"nats": state.as_dict()}
    stuck: list[str] = []
    if state.connected:
        with contextlib.suppress(Exception):  # the bucket may be missing or the broker slow
            found = await asyncio.wait_for(health.report(gateway.bus), 2.0)
            body["services"] = found["services"]
            stuck = list(found["stuck"])  # type: ignore[call-overload]
    body["stuck"] = stuck
    ok = state.connected and not stuck
    body["status"] = "ok" if ok else "degraded"
    if not state.connected:
        setattr(request.state, ERROR_CAUSE, "broker_disconnected")
    elif stuck:
        setattr(request.state, ERROR_CAUSE, "service_stuck")
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> Response:
    """The exposition (module doc); the broker is sampled first, for at most 2 s."""
    state = gateway_state(request)
    state.metrics.set("nats_connected", 1.0 if state.connection.connected else 0.0)
    await sample_broker(state)
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get(
    "/v1/stats",
    summary="Click-through rate per slot and model version (internal)",
    dependencies=[Depends(require_internal)],
    response_model=Stats,
    responses={**COMMON, 503: UNAVAILABLE},
    openapi_extra={"security": INTERNAL_ONLY},
)
async def get_stats(request: Request, hours: float = 24.0) -> JSONResponse:
    if not 0 < hours <= 24 * 366:
        return JSONResponse({"errors": [{"field": "hours", "reason": "0 < hours <= 8784"}]}, 422)
    since = datetime.now(UTC) - timedelta(hours=hours)
    rows = await click_through(gateway_state(request).bus, since)
    return JSONResponse({"since": since.isoformat(), "rows": [r.to_dict() for r in rows]})


# -- what /metrics measures beyond the routes' counters (module doc) ------------------------
log = logging.getLogger("nerve.gateway.ops")
SAMPLE_TIMEOUT_S = 2.0
DURATION = "http_request_duration_seconds"
FRESHNESS = "recommendation_freshness_seconds"


def describe(metrics: Metrics) -> None:
    """Describe the metrics this module keeps (the routes' counters are described by
    `engine.gateway.app.new_state`)."""
    metrics.describe(
        DURATION,
        "histogram",
        "Seconds from a request's arrival to its response's first byte, by route template",
        labels=("method", "route"),
        buckets=LATENCY_BUCKETS,
    )
    metrics.describe(
        FRESHNESS,
        "histogram",
        "Seconds from an event's received_at to this gateway seeing the list reflecting it",
        labels=("slot",),
        buckets=FRESHNESS_BUCKETS,
    )
    metrics.describe("broker_sample_ok", "gauge", "1 when the last scrape could read the broker")
    for name, what in (
        ("consumer_pending", "Messages a durable consumer has not been delivered yet (lag)"),
        ("consumer_ack_pending", "Messages delivered to a durable consumer, not yet acked"),
        ("stream_messages", "Messages a stream holds"),
        ("stream_last_seq", "A stream's newest sequence (its rate: rate(...[1m]))"),
        ("service_handled", "Messages a service process has handled (from its heartbeat)"),
        ("service_behind", "Messages waiting for a service process (from its heartbeat)"),
        ("service_stuck", "1 when a service process has work waiting and makes no progress"),
    ):
        metrics.describe(name, "gauge", what)


class Timing:
    """ASGI middleware: `http_request_duration_seconds{method, route}` (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                metrics: Metrics = scope["app"].state.gateway.metrics
                elapsed = time.perf_counter() - start
                metrics.observe(DURATION, elapsed, method=scope["method"], route=route)
            await send(message)

        await self.app(scope, receive, watched)


class Freshness:
    """`recommendation_freshness_seconds{slot}` from the lists this gateway sees (module doc).
    `on_list` is the subscription's callback and only queues; `run` looks the events up."""

    QUEUE = 256
    WINDOW_S = 600.0
    SEEN = 4096
    """(sequence, slot) pairs remembered, so a list published again is not counted twice."""

    def __init__(self, bus: Bus, metrics: Metrics) -> None:
        self.bus, self.metrics = bus, metrics
        self.queue: asyncio.Queue[tuple[int, str, float]] = asyncio.Queue(self.QUEUE)
        self.seen: dict[tuple[int, str], None] = {}
        self.failure: str | None = None

    async def on_list(self, subject: str, data: bytes) -> None:
        seq = activity_seq(data)
        key = (seq, last_token(subject))
        if not seq or key in self.seen or self.failure is not None:
            return
        self.seen[key] = None
        if len(self.seen) > self.SEEN:
            del self.seen[next(iter(self.seen))]
        with contextlib.suppress(asyncio.QueueFull):  # sampled: skip while lookups wait
            self.queue.put_nowait((seq, key[1], time.time()))

    async def run(self) -> None:
        """Look up each queued list's event and observe its age, until cancelled."""
        while True:
            seq, slot, seen_at = await self.queue.get()
            try:
                raw = await asyncio.wait_for(self.bus.message_at(ACTIVITY, seq), 2.0)
            except Exception as exc:  # e.g. a credential without reads of ACTIVITY
                self.failure = f"freshness not measured: ACTIVITY not readable ({exc!r})"
                log.warning(self.failure)
                return
            received = received_at(raw)
            if received is not None and 0 <= seen_at - received <= self.WINDOW_S:
                self.metrics.observe(FRESHNESS, seen_at - received, slot=slot)


def activity_seq(data: bytes) -> int:
    """The `activity_seq` of a stored list, read without parsing the whole list (0: none)."""
    at = data.find(b'"activity_seq":')
    if at < 0:
        return 0
    digits = data[at + 15 : at + 40].lstrip().split(b",", 1)[0].split(b"}", 1)[0]
    return int(digits) if digits.strip().isdigit() else 0


def received_at(raw: bytes | None) -> float | None:
    """The Unix time an event's `received_at` says, or None (imported history has none)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        stamp = orjson.loads(raw or b"{}").get("received_at")
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    return None


async def sample_broker(state: GatewayState) -> None:
    """Refresh the gauges read from the broker (module doc); never raises."""
    metrics = state.metrics
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT_S):
            await sample_streams(state.bus, metrics)
            found = await health.report(state.bus)
    except Exception as exc:  # not connected, a credential without these reads, a slow broker
        log.debug("broker not sampled for /metrics: %r", exc)
        metrics.set("broker_sample_ok", 0.0)
        return
    beats: dict[str, Any] = found["services"]  # type: ignore[assignment]
    for name, field in (("handled", "done"), ("behind", "behind"), ("stuck", "stuck")):
        values: dict[Labels, float] = {(("service", s),): float(b[field]) for s, b in beats.items()}
        metrics.replace(f"service_{name}", values)
    metrics.set("broker_sample_ok", 1.0)


async def sample_streams(bus: Bus, metrics: Metrics) -> None:
    """Each stream's size and newest sequence, each durable consumer's lag and ack-pending."""
    pending: dict[Labels, float] = {}
    acking: dict[Labels, float] = {}
    messages: dict[Labels, float] = {}
    last: dict[Labels, float] = {}
    for s in await bus.stream_states():
        messages[(("stream", s.name),)] = float(s.messages)
        last[(("stream", s.name),)] = float(s.last_seq)
        for c in await bus.consumer_lags(s.name):
            key = (("consumer", c.name), ("stream", c.stream))
            pending[key], acking[key] = float(c.pending), float(c.ack_pending)
    metrics.replace("consumer_pending", pending)
    metrics.replace("consumer_ack_pending", acking)
    metrics.replace("stream_messages", messages)
    metrics.replace("stream_last_seq", last)

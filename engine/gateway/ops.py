"""What operators call: `/healthz`, `/metrics`, `/v1/stats` (internal) and `/`, with the
models of their answers (`Health`; `Stats` is `engine.ops.reports`') for the OpenAPI; and what
`/metrics` measures beyond the routes' own counters (the operator console is
`engine.gateway.console`). `/v1/stats` is counted by the ops service (`nerve.ops.stats`): the
gateway's credential reads no ACTIVITY (`ask_report`, also used by `/v1/experiments`).

`/metrics` is `prometheus_client`'s exposition of the gateway's `Metrics` (`engine.metrics`):

* `http_request_duration_seconds{method, route}`, a histogram kept by the `Timing` middleware:
  the time from a request's arrival to its response's first byte, by route template. Ingestion
  is `route="/v1/events"`, serving `route="/v1/recommendations/{user_id}"` (for the live stream
  `.../stream` it is the time to open it).
* `recommendation_freshness_seconds{slot}`, a histogram kept by `Freshness`: from an event's
  `received_at` (stamped by this gateway) to the moment this gateway sees the list that
  reflects it. The gateway already subscribes to the lists (`reco.>`, for browsers' live
  streams); a list carries `activity_seq`, the newest ACTIVITY sequence it reflects. For the
  events it stored itself the gateway notes ACTIVITY sequence → `received_at` from the publish
  acknowledgements (`Received`, the newest 10,000), and looks the list's `activity_seq` up
  there: it reads nothing of ACTIVITY (its credential may not). So only events posted to this
  gateway are measured; those of other producers (`nerve import`, the demo's synthetic
  visitors, another gateway replica) are not. Both times are read on this gateway's clock, and
  the second is when the list is visible to a browser: what freshness means to a visitor. Lists
  reflecting an event received over `Freshness.WINDOW_S` earlier (recomputed after a model
  switch, not in answer to the event) are not counted.
* Gauges from the ops service's answer (`engine.services.ops`, asked on `nerve.ops.state` at
  most every `SAMPLE_EVERY_S` seconds; between two answers a scrape sees the last figures):
  `consumer_pending{stream, consumer}` (lag: messages not yet delivered),
  `consumer_ack_pending{stream, consumer}`, `stream_messages{stream}`, `stream_last_seq{stream}`;
  and **per service process**, from the heartbeat each one writes to the `health` bucket
  (`engine.health`): `service_handled{service}` (messages handled since it started),
  `service_behind{service}`, `service_stuck{service}`. Services export through the gateway
  rather than each on a port of its own: the heartbeats already cross processes and machines
  through the broker, one scrape target sees every replica, and no port needs opening per
  service. `broker_sample_ok` is 0 when the ops service did not answer (none runs) or could
  not read the streams, consumers or heartbeats. The gateway's own credential reads none of
  these: the ops service's does (`engine.credentials`, least privilege).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import health
from engine.bus import NoAnswer
from engine.gateway.assets import WIDGETS
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.gateway.state import GatewayState, gateway_state
from engine.metrics import CONTENT_TYPE, FRESHNESS_BUCKETS, LATENCY_BUCKETS, Labels, Metrics
from engine.ops import OpsState
from engine.ops.received import Received
from engine.ops.reports import MAX_HOURS, REPORT_TIMEOUT_S, Failure, Stats, StatsQuery
from nerve_client.subjects import OPS_REQUEST_SUBJECT, OPS_STATS_SUBJECT, last_token

router = APIRouter()
NO_OPS = "the ops service did not answer (is `nerve run ops` running? `nerve up` starts it)"

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
    """The exposition (module doc); the ops service is asked first (at most every 2 s)."""
    state = gateway_state(request)
    state.metrics.set("nats_connected", 1.0 if state.connection.connected else 0.0)
    sample = getattr(request.app.state, "ops_sample", None)
    if not isinstance(sample, Sample):
        sample = request.app.state.ops_sample = Sample()
    await sample_broker(state, sample)
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
    """Impressions, clicks, dismissals and CTR per slot and model version over the last
    `hours`, counted by the ops service (the gateway reads no ACTIVITY)."""
    if not 0 < hours <= MAX_HOURS:
        reason = f"0 < hours <= {MAX_HOURS}"
        return JSONResponse({"errors": [{"field": "hours", "reason": reason}]}, 422)
    return await ask_report(request, OPS_STATS_SUBJECT, StatsQuery(hours=hours), Stats)


async def ask_report(
    request: Request, subject: str, query: BaseModel, answer: type[BaseModel]
) -> JSONResponse:
    """The ops service's report on `subject` (`engine.ops.reports`) as the route's answer;
    503 with the reason when no ops service answers or it could not read the report."""
    bus = gateway_state(request).bus
    try:
        reply = await bus.request(subject, query.model_dump_json().encode(), REPORT_TIMEOUT_S)
    except NoAnswer:
        return unavailable(request, "ops_unavailable", NO_OPS)
    raw = orjson.loads(reply)
    if isinstance(raw, dict) and "error" in raw:
        failure = Failure.model_validate(raw)
        return unavailable(
            request, "ops_failed", f"the ops service could not read it: {failure.error}"
        )
    return JSONResponse(answer.model_validate(raw).model_dump(mode="json"))


# -- what /metrics measures beyond the routes' counters (module doc) ------------------------
log = logging.getLogger("nerve.gateway.ops")
SAMPLE_EVERY_S = 2.0
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
        "Seconds from received_at of an event this gateway stored to it seeing the list "
        "reflecting it",
        labels=("slot",),
        buckets=FRESHNESS_BUCKETS,
    )
    metrics.describe(
        "broker_sample_ok", "gauge", "1 when the last sample (the ops service's answer) was whole"
    )
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
    """`recommendation_freshness_seconds{slot}` from the lists this gateway sees (module doc):
    `on_list` is the callback of its subscription to `reco.>`."""

    WINDOW_S = 600.0
    SEEN = 4096
    """(sequence, slot) pairs remembered, so a list published again is not counted twice."""

    def __init__(self, metrics: Metrics, received: Received) -> None:
        self.metrics, self.received = metrics, received
        self.seen: dict[tuple[int, str], None] = {}
        self.failure: str | None = None

    async def on_list(self, subject: str, data: bytes) -> None:
        seq = activity_seq(data)
        key = (seq, last_token(subject))
        at = self.received.at.get(seq)
        if at is None or key in self.seen:
            return  # no event of this gateway's, or counted already
        self.seen[key] = None
        if len(self.seen) > self.SEEN:
            del self.seen[next(iter(self.seen))]
        age = time.time() - at
        if 0 <= age <= self.WINDOW_S:
            self.metrics.observe(FRESHNESS, age, slot=key[1])


def activity_seq(data: bytes) -> int:
    """The `activity_seq` of a stored list, read without parsing the whole list (0: none)."""
    at = data.find(b'"activity_seq":')
    if at < 0:
        return 0
    digits = data[at + 15 : at + 40].lstrip().split(b",", 1)[0].split(b"}", 1)[0]
    return int(digits) if digits.strip().isdigit() else 0


async def ask_ops(state: GatewayState) -> OpsState:
    """The ops service's answer on `nerve.ops.state`; `NoAnswer` when none runs."""
    reply = await state.bus.request(OPS_REQUEST_SUBJECT, b"{}", state.settings.request_timeout_s)
    return OpsState.model_validate_json(reply)


class Sample:
    """When `/metrics` last asked the ops service (at most every `SAMPLE_EVERY_S`)."""

    def __init__(self) -> None:
        self.at = 0.0


async def sample_broker(state: GatewayState, sample: Sample) -> None:
    """Refresh the gauges from the ops service's answer (module doc); never raises."""
    metrics = state.metrics
    if time.monotonic() - sample.at < SAMPLE_EVERY_S:
        return
    sample.at = time.monotonic()
    try:
        found = await ask_ops(state)
    except Exception as exc:  # no ops service, not connected, a slow broker
        log.debug("broker not sampled for /metrics: %r", exc)
        metrics.set("broker_sample_ok", 0.0)
        return
    gauges(metrics, found)
    failed = [p for p in found.problems if p.startswith(("streams", "consumers", "services"))]
    metrics.set("broker_sample_ok", 0.0 if failed else 1.0)


def gauges(metrics: Metrics, found: OpsState) -> None:
    """Streams' sizes and newest sequences, consumers' lag and ack-pending, services' beats."""
    streams = {(("stream", s.name),): s for s in found.streams}
    metrics.replace("stream_messages", {k: float(s.messages) for k, s in streams.items()})
    metrics.replace("stream_last_seq", {k: float(s.last_seq) for k, s in streams.items()})
    consumers = {(("consumer", c.name), ("stream", c.stream)): c for c in found.consumers}
    metrics.replace("consumer_pending", {k: float(c.pending) for k, c in consumers.items()})
    metrics.replace("consumer_ack_pending", {k: float(c.ack_pending) for k, c in consumers.items()})
    for name, field in (("handled", "done"), ("behind", "behind"), ("stuck", "stuck")):
        values: dict[Labels, float] = {
            (("service", s),): float(b[field]) for s, b in found.services.items() if field in b
        }
        metrics.replace(f"service_{name}", values)

"""What operators call: `/healthz`, `/metrics`, `/v1/stats` (internal) and `/`, with the
models of their answers (`Health`, `Stats`) for the OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import AwareDatetime, BaseModel, Field

from engine import health
from engine.gateway.assets import WIDGETS
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.gateway.state import gateway_state
from engine.recommender.stats import click_through

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
    state = gateway_state(request)
    state.metrics.set("nats_connected", 1.0 if state.connection.connected else 0.0)
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


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

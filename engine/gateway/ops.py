"""What operators call: `/healthz`, `/metrics`, `/v1/stats` (internal) and `/`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from engine.gateway.assets import WIDGETS
from engine.gateway.auth import require_internal
from engine.gateway.state import gateway_state
from engine.recommender.stats import click_through

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/demo/" if (WIDGETS / "demo").is_dir() else "/docs")


@router.get("/healthz", summary="Liveness and broker connection")
async def healthz(request: Request) -> JSONResponse:
    state = gateway_state(request).connection
    body = {"status": "ok" if state.connected else "degraded", "nats": state.as_dict()}
    return JSONResponse(body, status_code=200 if state.connected else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> Response:
    state = gateway_state(request)
    state.metrics.set("nats_connected", 1.0 if state.connection.connected else 0.0)
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get(
    "/v1/stats",
    summary="Click-through rate per slot and model version (internal)",
    dependencies=[Depends(require_internal)],
)
async def get_stats(request: Request, hours: float = 24.0) -> JSONResponse:
    if not 0 < hours <= 24 * 366:
        return JSONResponse({"errors": [{"field": "hours", "reason": "0 < hours <= 8784"}]}, 422)
    since = datetime.now(UTC) - timedelta(hours=hours)
    rows = await click_through(gateway_state(request).bus, since)
    return JSONResponse({"since": since.isoformat(), "rows": [r.to_dict() for r in rows]})

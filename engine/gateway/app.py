"""`create_app`: the gateway's FastAPI application, its shared state and its routers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engine import __version__
from engine.bus import Bus
from engine.gateway import assets, events, ops, profiles, recommendations
from engine.gateway.auth import Refused
from engine.gateway.state import GatewayState
from engine.profiles.store import ProfileStore
from engine.settings import GatewaySettings
from engine.subjects import CATALOG


def new_state(settings: GatewaySettings) -> GatewayState:
    """The state of a gateway not yet connected, with its metrics described."""
    state = GatewayState(settings, buckets=events.buckets_for(settings))
    state.metrics.describe("http_requests_total", "counter", "Requests to /v1/events by status")
    state.metrics.describe(
        "events_total", "counter", "Events by outcome: accepted, duplicate, rejected"
    )
    state.metrics.describe("nats_connected", "gauge", "1 when the gateway is connected to NATS")
    return state


async def refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def create_app(settings: GatewaySettings, nats_url: str, connect_timeout: float = 10.0) -> FastAPI:
    """The gateway application; it connects to `nats_url` on start-up and closes on shutdown."""
    state = new_state(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        bus = await Bus.connect(
            nats_url,
            "nerve-gateway",
            timeout=connect_timeout,
            state=state.connection,
            ack_timeout=settings.ack_timeout_s,
        )
        try:
            state.open(bus, await ProfileStore.open(bus))

            async def on_model() -> None:
                state.model_switched = time.time()

            await bus.on_model_published(on_model)
            async with bus.follow(CATALOG, state.catalog.update):
                yield
        finally:
            state.close()
            await bus.close()

    app = FastAPI(
        title="Nerve gateway",
        version=__version__,
        lifespan=lifespan,
        description="Event ingestion for Nerve. Event schemas: `nerve schema`.",
    )
    app.state.gateway = state
    app.add_exception_handler(Refused, refused)
    app.middleware("http")(assets.cors)
    for module in (events, profiles, recommendations, ops, assets):
        app.include_router(module.router)
    return app

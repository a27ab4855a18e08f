"""`create_app`: the gateway's FastAPI application, its shared state and its routers.

The outage contract. While the broker is unreachable, overloaded or slow, every route that
needs it answers **503 with `Retry-After`** (seconds) within a bounded time, never 500 and never
a hang: a publish (`POST /v1/events`) within the gateway's `ack_timeout_s` (the publisher's
budget for the whole call, its re-sends and its wait for a lost connection included; see
`engine.bus.publisher`), a read within its own timeout. Routes that catch the broker's errors
answer so themselves; whatever they do not catch — any `BrokerError` (`PublishError`,
`BrokerDown`, `NoAnswer`, ...) or a nats-py error meaning "unavailable" — is answered here by
`on_broker_error`. Anything else unexpected is a 500 (`on_unexpected`), logged with its
traceback.

What a client should do with a 503 (or a timeout, or a reset connection): wait `Retry-After`
and send the **same events with the same ids** again. The broker may have stored some of a
refused batch (an ack can be lost after the write), but it keeps one copy per id inside the
ACTIVITY stream's duplicate window, so a retry with the same ids stores each event exactly
once; a retry with fresh ids, or none (the gateway then assigns new ones), may store twice.

Every 5xx is counted in `/metrics` as `http_errors_total{status, cause}` by the `Edge`
middleware (`engine.gateway.edge`). The cause is what the answering code set in `request.state`
(`engine.gateway.ops.ERROR_CAUSE`); when a route built its own 5xx without one, a 503 with
`Retry-After` counts as `broker_unavailable` (the gateway's convention for "the broker refused;
retry") and any other as `unavailable` (503) or `internal`.

The OpenAPI (`/openapi.json`, rendered at `/docs` and `/redoc` from local assets, see
`engine.gateway.docs`) describes every route's success body, its errors (`responses`) and its
security (`auth.SECURITY_SCHEMES`, added to the components by `openapi`). A parameter FastAPI
refuses (`k=abc`) is answered like the routes' own bad parameters: 422 with
`{"errors": [{"field", "reason"}]}` (`on_bad_parameter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from engine import __version__
from engine.bus import Bus
from engine.bus.pipeline import NATS_ERROR, broker_unavailable
from engine.gateway import (
    assets,
    console,
    crm,
    demo,
    docs,
    events,
    experiments,
    ops,
    profiles,
    recommendations,
)
from engine.gateway.auth import SECURITY_SCHEMES, Refused
from engine.gateway.edge import Edge
from engine.gateway.ops import ERROR_CAUSE
from engine.gateway.state import GatewayState
from engine.profiles.tombstones import Tombstones
from engine.settings import GatewaySettings
from nerve_client.credentials import Credential, Tls
from nerve_client.errors import BrokerError
from nerve_client.subjects import CATALOG


def new_state(settings: GatewaySettings) -> GatewayState:
    """The state of a gateway not yet connected, with its metrics described."""
    state = GatewayState(settings, buckets=events.buckets_for(settings))
    state.metrics.describe("http_requests_total", "counter", "Requests to /v1/events by status")
    state.metrics.describe(
        "events_total", "counter", "Events by outcome: accepted, duplicate, rejected"
    )
    state.metrics.describe("nats_connected", "gauge", "1 when the gateway is connected to NATS")
    state.metrics.describe("http_errors_total", "counter", "HTTP answers >= 500 by status, cause")
    state.metrics.describe(
        "stored_refused_total", "counter", "Stored lists not served: not a valid list of the user"
    )
    state.metrics.describe(
        "streams_refused_total", "counter", "Live streams refused over the per-key/client caps"
    )
    state.metrics.describe(
        "stream_skipped_total", "counter", "Live messages skipped: not a valid list of the user"
    )
    return state


log = logging.getLogger("nerve.gateway")
RETRY_AFTER_S = 1
"""What a 503 from a broker outage tells the client to wait before sending the same ids again."""


async def refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def on_broker_error(request: Request, exc: Exception) -> JSONResponse:
    """A broker error no route caught: 503 + `Retry-After` when the broker is unavailable
    (every `BrokerError`; nats-py's timeouts, closed or reconnecting connection...), else 500."""
    if not broker_unavailable(exc):
        log.error("unexpected NATS error on %s", request.url.path, exc_info=exc)
        setattr(request.state, ERROR_CAUSE, "nats_error")
        return JSONResponse({"detail": "internal error"}, status_code=500)
    setattr(request.state, ERROR_CAUSE, "broker_unavailable")
    detail = f"the broker is unavailable, retry with the same ids: {exc}"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse({"detail": detail}, status_code=503, headers=headers)


async def on_bad_parameter(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each parameter FastAPI could not parse, as the routes name theirs."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        field = ".".join(loc[1:] if loc[:1] in (["query"], ["path"], ["header"]) else loc)
        errors.append({"field": field, "reason": str(e.get("msg", "invalid"))})
    return JSONResponse({"errors": errors}, status_code=422)


def openapi_of(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (built once): FastAPI's, with the security schemes the
    routes' `security` names (they are not FastAPI dependencies, so it cannot add them)."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = doc
    return app.openapi_schema


DESCRIPTION = """Events in, a user's lists out: the HTTP side of Nerve.

* **Security**: a browser sends its site's public key (`X-Nerve-Site-Key` or `?site_key=`);
  reading a known user's lists also needs an identity token for that user minted by the site's
  backend (`X-Nerve-Identity` or `?identity=`); servers send `Authorization: Bearer <internal
  token>`. Each operation lists the combinations it accepts.
* **Errors**: a bad parameter or field is `{"errors": [{"field", "reason"}]}`; a refusal or an
  outage `{"detail": "..."}`; a 503 or 429 says when to retry in `Retry-After`.
* **Headers**: `X-Nerve-Source` says where a list came from; `X-Nerve-Warning` is set when it
  is not quite what was asked (a `k` over the slot's maximum serves the maximum).
* **Schemas**: `nerve schema` prints the events' JSON Schemas, and `nerve schema served_list`
  the list as served here.
"""


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """The last resort: 500. Starlette runs it outside the middleware, so it counts itself."""
    request.app.state.gateway.metrics.inc("http_errors_total", status="500", cause="internal")
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(
    settings: GatewaySettings,
    nats_url: str,
    connect_timeout: float = 10.0,
    *,
    credential: Credential | None = None,
    tls: Tls | None = None,
) -> FastAPI:
    """The gateway application; it connects to `nats_url` as `credential` (the `gateway` one
    under `nerve up`; none: as the URL says) on start-up and closes on shutdown."""
    state = new_state(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        bus = await Bus.connect(
            nats_url,
            "nerve-gateway",
            timeout=connect_timeout,
            state=state.connection,
            ack_timeout=settings.ack_timeout_s,
            credential=credential,
            tls=tls,
        )
        try:
            forgotten = await Tombstones.open(bus)
            state.open(bus, forgotten)

            async def on_model() -> None:
                state.model_switched = time.time()

            await bus.on_model_published(on_model)
            await bus.on_forget(forgotten.note)
            async with bus.follow(CATALOG, state.catalog.update):
                yield
        finally:
            state.close()
            await bus.close()

    app = FastAPI(
        title="Nerve gateway",
        version=__version__,
        lifespan=lifespan,
        description=DESCRIPTION,
        docs_url=None,  # served from local assets by engine.gateway.docs
        redoc_url=None,
    )
    app.openapi = lambda: openapi_of(app)  # type: ignore[method-assign]
    app.state.gateway = state
    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(RequestValidationError, on_bad_parameter)
    app.add_exception_handler(BrokerError, on_broker_error)
    app.add_exception_handler(NATS_ERROR, on_broker_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(Edge)  # CORS and the 5xx count, pure ASGI (see engine.gateway.edge)
    for module in (events, crm, profiles, recommendations, ops, experiments, docs, demo, assets):
        app.include_router(module.router)
    console.mount(app)  # /ops, /ops/state and the request timing of /metrics
    return app

"""The operator console: `/ops` (a page, no build step, no CDN) and `/ops/state`, the JSON it
polls every 2 s.

**Who may look.** `/ops/state` needs an internal token (`Authorization: Bearer <token>`, as
`/v1/stats`); a site key is refused (401 without a bearer token, 403 for a bearer that is not
an internal token). The page itself holds nothing: it asks for the token in a form, keeps it in
the tab's `sessionStorage` (gone when the tab closes, never in a cookie, so no other site can
make the browser send it, and never in a URL, so no access log holds it) and sends it as
`Authorization` on each `fetch`. Polling rather than SSE because `EventSource` cannot send
headers, and a token in the query string would land in logs.

**Where the state comes from.** The gateway is the internet-facing process, and its broker
credential may not read stream or consumer info, DEADLETTER, SIGNALS, ANOMALIES or the registry.
`/ops/state` asks the ops service on `nerve.ops.state` (`engine.services.ops`, which holds
those reads; the state and its model are `engine.ops`), as `/v1/profiles` asks the profiles
service, and answers 503 when no ops service answers. The gateway adds what only it knows: its
own connection (`nats_connected`) and whether it measures freshness.

`mount(app)` includes the router and the `Timing` middleware `/metrics` reads
(`engine.gateway.ops`); the router's lifespan subscribes the freshness observer to the lists
beside the app's own lifespan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from engine.bus import Bus, NoAnswer
from engine.gateway import ops
from engine.gateway.assets import WIDGETS
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.gateway.state import gateway_state
from engine.ops import OpsState
from nerve_client import subjects

log = logging.getLogger("nerve.gateway.console")
PAGE = WIDGETS / "ops"
NO_OPS = "the ops service did not answer (is `nerve run ops` running? `nerve up` starts it)"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Beside the app's lifespan (which connected the bus first): the freshness observer, on
    the lists this gateway already may subscribe to; allowed to fail without stopping it."""
    gateway = app.state.gateway
    bus: Bus = gateway.bus
    ops.describe(gateway.metrics)
    freshness = app.state.freshness = ops.Freshness(gateway.metrics, gateway.received)
    async with contextlib.AsyncExitStack() as stack:
        try:
            sub = await bus.listen(subjects.reco_filter("*"), freshness.on_list)
            stack.push_async_callback(sub.unsubscribe)
        except Exception as exc:
            freshness.failure = f"freshness not measured: {exc!r}"
            log.warning("operator console: %s", freshness.failure)
        yield


router = APIRouter(lifespan=lifespan)
STATE_DOC = (
    "Everything the operator console shows, from the ops service (503 when none answers); "
    "parts it cannot read are in `problems`"
)


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
    responses={**COMMON, 503: UNAVAILABLE},
    openapi_extra={"security": INTERNAL_ONLY},
)
async def get_state(request: Request) -> Response:
    gateway = gateway_state(request)
    try:
        found = await ops.ask_ops(gateway)
    except NoAnswer:
        return ops.unavailable(request, "ops_unavailable", NO_OPS)
    freshness: ops.Freshness | None = getattr(request.app.state, "freshness", None)
    found.nats_connected = gateway.connection.connected
    found.freshness = None if freshness is None else freshness.failure
    return Response(found.model_dump_json(), media_type="application/json")


def mount(app: FastAPI) -> None:
    """The console's routes, and the request timing `/metrics` reports (`ops.Timing`)."""
    app.include_router(router)
    app.add_middleware(ops.Timing)

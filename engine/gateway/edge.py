"""`Edge`: the gateway's one middleware, pure ASGI: CORS and the count of 5xx answers.

It was two `@app.middleware("http")` functions (Starlette's `BaseHTTPMiddleware`), which run
each request in a task group and re-stream its response; stacked, they were the largest share
of the gateway's CPU per request in a profile of `GET /v1/recommendations` at 500/s, when its
p99 had risen from 7 to 40-90 ms (`bench/freshness.py` part c). This one only watches `send`:

* CORS: a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here, 204 with
  the allowed origin or 403; any other answer gets `Access-Control-Allow-Origin` when the
  request's Origin is allowed for the site key it names (`auth.cors_origin`), and
  `Access-Control-Expose-Headers` naming the gateway's own response headers (`EXPOSED`), so
  that a page's script can read `X-Nerve-Warning` and `X-Nerve-Source`.
* Errors: every answer >= 500 is counted as `http_errors_total{status, cause}`. The cause is
  what the answering code set on `request.state` (`ops.ERROR_CAUSE`); a 503 without one counts
  as `broker_unavailable` when it carries `Retry-After`, else `unavailable`; other 5xx as
  `internal`. (The last-resort 500 handler runs outside every middleware and counts itself.)
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.gateway.auth import cors_origin
from engine.gateway.ops import ERROR_CAUSE

PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Content-Type, X-Nerve-Site-Key, X-Nerve-Identity",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}
EXPOSED = "X-Nerve-Warning, X-Nerve-Source, Retry-After"
"""Response headers a browser's script may read (CORS hides all but a few by default)."""


class Edge:
    """ASGI middleware: CORS headers and preflights, and `http_errors_total` (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway: Any = scope["app"].state.gateway
        request = Request(scope)
        origin = cors_origin(request, gateway.keys)
        if scope["method"] == "OPTIONS" and request.headers.get("access-control-request-method"):
            if origin is None:
                answer = Response(status_code=403)
            else:
                headers = {"Access-Control-Allow-Origin": origin, **PREFLIGHT}
                answer = Response(status_code=204, headers=headers)
            await answer(scope, receive, send)
            return

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                if origin is not None:
                    headers = MutableHeaders(scope=message)
                    headers["Access-Control-Allow-Origin"] = origin
                    headers["Access-Control-Expose-Headers"] = EXPOSED
                    headers["Vary"] = "Origin"
                status = int(message["status"])
                if status >= 500:
                    count(gateway, scope, message, status)
            await send(message)

        await self.app(scope, receive, watched)


def count(gateway: Any, scope: Scope, message: Message, status: int) -> None:
    """Count one 5xx answer by status and cause."""
    cause = scope.get("state", {}).get(ERROR_CAUSE)
    if cause is None and status == 503:
        retry = "retry-after" in Headers(scope=message)
        cause = "broker_unavailable" if retry else "unavailable"
    gateway.metrics.inc("http_errors_total", status=str(status), cause=cause or "internal")

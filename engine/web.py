"""What the gateway serves to browsers: the widget, the demo site, live updates, CORS.

* `GET /widget.js` — `widgets/nerve.js`, with an ETag and a short public cache.
* `GET /demo/...` — the demo bank site (`widgets/demo/`); `/demo/<category>/<item>` is the item
  page of any catalogue item.
* `GET /v1/recommendations/{user}/stream?slots=home,similar&site_key=` — Server-Sent Events:
  one core NATS subscription on `reco.<user>.*` per connected browser, dropped when the browser
  goes; each `recommendations_updated` of a requested slot is sent as `event: recommendations`
  with `id:` the recommendation id; a comment every 15 s keeps proxies from closing it.
* CORS: a request that names a site key gets `Access-Control-Allow-Origin` only for an origin
  in that key's allowlist (preflights included); everything else gets no CORS headers.
* `Catalogue`: the CATALOG stream in memory, followed live, so that served lists carry each
  item's name, url, image and category (the stored events carry ids only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from engine.recommender.catalog import ItemCatalog
from engine.settings import SiteKey

WIDGETS = Path(__file__).resolve().parent.parent / "widgets"
HEARTBEAT_S = 15.0
ITEM_FIELDS = ("name", "url", "image", "category", "value")


def enrich(event: dict[str, Any], catalog: ItemCatalog) -> dict[str, Any]:
    """A copy of a recommendations_updated event whose items carry catalogue details."""
    props = event["properties"]
    items = []
    for entry in props["items"]:
        item = catalog.get(entry["item_id"])
        if item is not None:
            details = {f: getattr(item, f) for f in ITEM_FIELDS if getattr(item, f) is not None}
            entry = {**entry, "item": details}
        items.append(entry)
    return {**event, "properties": {**props, "items": items}}


def allowed_origin(request: Request, keys: dict[str, SiteKey]) -> str | None:
    """The request's Origin if the site key it names allows it."""
    origin = request.headers.get("origin")
    key = request.query_params.get("site_key") or request.headers.get("x-nerve-site-key")
    site = keys.get(key or "")
    if not origin or site is None:
        return None
    return origin if "*" in site.origins or origin in site.origins else None


def install(
    app: FastAPI,
    keys: dict[str, SiteKey],
    check_site: Callable[[Request], Response | None],
    token_of: Callable[[str, bool], str],
    widgets: Path = WIDGETS,
) -> None:
    @app.middleware("http")
    async def cors(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        origin = allowed_origin(request, keys)
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
            if origin is None:
                return Response(status_code=403)
            return Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": "Content-Type, X-Nerve-Site-Key",
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        response = await call_next(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    script = widgets / "nerve.js"

    @app.get("/widget.js", include_in_schema=False)
    async def widget(request: Request) -> Response:
        body = script.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=300"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    demo = (widgets / "demo").resolve()

    @app.get("/demo", include_in_schema=False)
    async def demo_root() -> Response:
        return Response(status_code=307, headers={"Location": "/demo/"})

    @app.get("/demo/catalog.json", include_in_schema=False)
    async def demo_catalog(request: Request) -> Response:
        """The demo bank's own product list (its "backend"; not part of the widget API)."""
        catalog: ItemCatalog = request.app.state.catalog
        items = [catalog.to_json(i) for i in sorted(catalog.items)]
        return Response(orjson.dumps(items), media_type="application/json")

    @app.get("/demo/{path:path}", include_in_schema=False)
    async def demo_file(path: str) -> Response:
        target = (demo / (path or "index.html")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(demo):
            return JSONResponse({"detail": "not found"}, status_code=404)
        if not target.exists():
            parts = path.strip("/").split("/")
            if len(parts) == 2 and "." not in parts[1]:  # /demo/<category>/<item>
                target = demo / "item.html"
            else:
                return JSONResponse({"detail": "not found"}, status_code=404)
        return FileResponse(target, headers={"Cache-Control": "no-cache"})

    @app.get(
        "/v1/recommendations/{user_id}/stream",
        summary="Live updates of a user's lists (Server-Sent Events)",
        description="`event: recommendations`, `data:` the recommendations_updated event with "
        "catalogue details, `id:` its recommendation id. Site key as `site_key=` (EventSource "
        "cannot send headers).",
    )
    async def stream(
        user_id: str, request: Request, slots: str = "", anonymous: bool = False
    ) -> Response:
        refused = check_site(request)
        if refused is not None:
            return refused
        if not user_id or len(user_id) > 128:
            return JSONResponse({"errors": [{"field": "user_id", "reason": "1-128 chars"}]}, 422)
        wanted = {s for s in slots.split(",") if s}
        token = token_of(user_id, anonymous)
        nc = request.app.state.nc
        catalog: ItemCatalog = request.app.state.catalog
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

        async def on_msg(msg: Any) -> None:
            if wanted and msg.subject.rsplit(".", 1)[-1] not in wanted:
                return
            with contextlib.suppress(asyncio.QueueFull):  # a stalled browser loses old ones
                queue.put_nowait(msg.data)

        sub = await nc.subscribe(f"reco.{token}.*", cb=on_msg)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while True:
                    try:
                        data = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": ping\n\n"
                        continue
                    event = enrich(orjson.loads(data), catalog)
                    yield (
                        b"id: "
                        + event["id"].encode()
                        + b"\nevent: recommendations\ndata: "
                        + orjson.dumps(event)
                        + b"\n\n"
                    )
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

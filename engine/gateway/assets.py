"""What the gateway serves to browsers besides the API: the widget, the demo site, CORS.

* `GET /widget.js` — `widgets/nerve.js`, with an ETag and a short public cache.
* `GET /demo/...` — the demo bank site (`widgets/demo/`); `/demo/<category>/<item>` is the item
  page of any catalogue item; `/demo/catalog.json` the catalogue it shows.
* CORS: a request that names a site key gets `Access-Control-Allow-Origin` only for an origin
  in that key's allowlist (preflights included); everything else gets no CORS headers.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from engine.gateway.state import gateway_state

WIDGETS = Path(__file__).resolve().parent.parent.parent / "widgets"
SCRIPT = WIDGETS / "nerve.js"
DEMO = (WIDGETS / "demo").resolve()
router = APIRouter(include_in_schema=False)


@router.get("/widget.js")
async def widget(request: Request) -> Response:
    body = SCRIPT.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=300"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


@router.get("/demo")
async def demo_root() -> Response:
    return Response(status_code=307, headers={"Location": "/demo/"})


@router.get("/demo/catalog.json")
async def demo_catalog(request: Request) -> Response:
    """The demo bank's own product list (its "backend"; not part of the widget API)."""
    catalog = gateway_state(request).catalog
    items = [catalog.to_json(i) for i in sorted(catalog.items)]
    return Response(orjson.dumps(items), media_type="application/json")


SAFE_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
"""What a demo path may contain once decoded: the characters RFC 3986 allows unescaped in a
path. Every demo file and catalogue item id is named so; anything else (a NUL, `%ff`, a
backslash, a space, a control character) is answered 404 before the file system sees it: a
NUL used to raise inside `Path.resolve` (a 500)."""


def demo_target(path: str) -> Path | None:
    """The file `path` names under `widgets/demo/`, or None (then: 404)."""
    if not SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
        return None
    try:
        target = (DEMO / (path or "index.html")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(DEMO):
            return None
        if target.is_file():
            return target
    except (OSError, ValueError):  # a name too long, a loop of links...
        return None
    parts = path.strip("/").split("/")
    if len(parts) == 2 and "." not in parts[1]:  # /demo/<category>/<item>
        return DEMO / "item.html"
    return None


@router.get("/demo/{path:path}")
async def demo_file(path: str) -> Response:
    target = demo_target(path)
    if target is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    return FileResponse(target, headers={"Cache-Control": "no-cache"})

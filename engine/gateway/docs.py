"""`/docs` (Swagger UI) and `/redoc` without a CDN: their assets come from a Python package.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google),
so behind a firewall, on an air-gapped host or in a bank's network they are blank. The
`fastapi-offline` package ships the same files (`swagger-ui-bundle.js`, `swagger-ui.css`,
`redoc.standalone.js`, a favicon); the gateway serves them under `/docs/assets/` and builds
the pages with FastAPI's `get_swagger_ui_html` / `get_redoc_html` pointing there. Swagger UI's
validator badge, which would send the spec to an outside service, is turned off.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

ASSETS = Path(str(files("fastapi_offline") / "static"))
SERVED = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
"""The asset files served, with their content types (nothing else under the folder is)."""
PREFIX = "/docs/assets/"

router = APIRouter(include_in_schema=False)


def title(request: Request) -> str:
    return f"{request.app.title} {request.app.version}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=title(request),
        swagger_js_url=f"{root}{PREFIX}swagger-ui-bundle.js",
        swagger_css_url=f"{root}{PREFIX}swagger-ui.css",
        swagger_favicon_url=f"{root}{PREFIX}favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=title(request),
        redoc_js_url=f"{root}{PREFIX}redoc.standalone.js",
        redoc_favicon_url=f"{root}{PREFIX}favicon.png",
        with_google_fonts=False,
    )


@router.get(PREFIX + "{name}")
async def asset(name: str) -> Response:
    media_type = SERVED.get(name)
    if media_type is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    headers = {"Cache-Control": "public, max-age=86400"}
    return FileResponse(ASSETS / name, media_type=media_type, headers=headers)

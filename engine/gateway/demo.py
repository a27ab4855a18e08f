"""The demo bank's own "site backend": what a real bank's web server would do for Nerve.

Served only when `GatewaySettings.demo_site` names a configured site key with an identity
secret (`nerve demo` does; `nerve up --demo-site KEY` for tests), under `/demo-site/` — a
prefix of its own, so that the `/demo/` file routes never shadow it, whatever the order the
routers are included in:

* `GET /demo-site/config.js` — the page's Nerve set-up: calls `Nerve.init({siteKey})` on the
  page's stub, which queues it for the widget (a real site renders its public key into its
  pages the same way). The secret never leaves the server.
* `POST /demo-site/sign-in` with `{"user_id": "..."}` — signs the customer in and answers
  `{"user_id", "token", "expires_in"}`, the token minted with `nerve_client.identity`
  exactly as a real backend would; the page then calls `Nerve.identify(user_id, token)`.
  The demo has no passwords: any well-formed customer id signs in (a real backend mints a
  token only for the customer its own login proved).
"""

from __future__ import annotations

import re

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engine.gateway.state import GatewayState, gateway_state
from engine.settings import SiteKey
from nerve_client.identity import mint_identity_token

DEMO_TOKEN_TTL_S = 3600
"""The demo signs a customer in for an hour; the page signs in again after that."""
CUSTOMER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

router = APIRouter(prefix="/demo-site", include_in_schema=False)


def demo_site(state: GatewayState) -> SiteKey | None:
    """The site key the demo plays the backend of, when one is configured with a secret."""
    name = state.settings.demo_site
    site = state.keys.get(name) if name else None
    return site if site is not None and site.identity_secret is not None else None


def not_served() -> JSONResponse:
    return JSONResponse({"detail": "not found"}, status_code=404)


@router.get("/config.js")
async def config(request: Request) -> Response:
    site = demo_site(gateway_state(request))
    if site is None:
        return not_served()
    init = orjson.dumps({"siteKey": site.key}).decode()
    # through the page's stub (or the widget itself, if it loaded first); a page without the
    # stub still gets its init queued
    body = (
        "window.Nerve = window.Nerve || {q: []};\n"
        f'if (Nerve.init) Nerve.init({init}); else Nerve.q.push(["init", {init}]);\n'
    )
    return Response(
        body, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    site = demo_site(gateway_state(request))
    if site is None or site.identity_secret is None:
        return not_served()
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    user = body.get("user_id") if isinstance(body, dict) else None
    if not isinstance(user, str) or not CUSTOMER.match(user):
        return JSONResponse(
            {"errors": [{"field": "user_id", "reason": "1-64 letters, digits or _.@-"}]},
            status_code=422,
        )
    token = mint_identity_token(
        site.identity_secret.get_secret_value(), user, site_key=site.key, ttl_s=DEMO_TOKEN_TTL_S
    )
    return JSONResponse(
        {"user_id": user, "token": token, "expires_in": DEMO_TOKEN_TTL_S},
        headers={"Cache-Control": "no-store"},
    )

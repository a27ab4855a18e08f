"""Who may call the gateway: the one site-key check and the one internal-token check.

A browser names its site key in the `X-Nerve-Site-Key` header or, where it cannot send
headers (`sendBeacon`, `EventSource`), as `?site_key=`; the key must be known and the request's
`Origin`, when it has one, in the key's allowlist. An internal caller sends
`Authorization: Bearer <token>`. The same lookup decides the CORS headers (`cors_origin`), so a
browser is never told it may call with a key the routes would refuse.

Routes take the checks as FastAPI dependencies (`require_internal`,
`require_site_or_internal`, `require_reader`); a refusal raises `Refused`, which the app
renders as `{"detail": ...}` with its status. Each check has its OpenAPI `security`
(`INTERNAL_ONLY`, `SITE_OR_INTERNAL`, `READER`, over `SECURITY_SCHEMES`), which its routes
declare in `openapi_extra`. `POST /v1/events` calls `check_site` itself, to
count its refusals in its request metrics.

Identity: a page proves its signed-in customer with a token its site's backend minted
(`nerve_client.identity`), sent as `X-Nerve-Identity` or, where headers cannot be sent,
`?identity=`.
`identity` verifies it against the site key's `identity_secret`. Reading a known user's lists
or live stream needs such a token for exactly that user, or an internal bearer token
(`require_reader`); an anonymous id (`?anonymous=true`) needs none: it is a random id only its
browser knows.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from engine.gateway.state import gateway_state
from engine.settings import SiteKey
from nerve_client.errors import NerveError
from nerve_client.identity import Identity, InvalidIdentity, verify_identity_token

SITE_KEY_HEADER = "X-Nerve-Site-Key"
IDENTITY_HEADER = "X-Nerve-Identity"

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "siteKey": {
        "type": "apiKey",
        "in": "header",
        "name": SITE_KEY_HEADER,
        "description": "A site's public key; the request's Origin must be in its allowlist.",
    },
    "siteKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "site_key",
        "description": "The site key, where a browser cannot send headers (sendBeacon, "
        "EventSource).",
    },
    "identity": {
        "type": "apiKey",
        "in": "header",
        "name": IDENTITY_HEADER,
        "description": "A signed-in customer's identity token, minted by the site's backend "
        "with the key's identity secret (`nerve_client.identity`).",
    },
    "identityQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "identity",
        "description": "The identity token, where a browser cannot send headers.",
    },
    "internalToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An internal token (`GatewaySettings.internal_tokens`): servers only.",
    },
    "crmKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A CRM backend's key (`GatewaySettings.crm_keys`, `--crm-keys`): "
        "server-side, distinct from site keys and internal tokens.",
    },
}
"""The OpenAPI security schemes of the checks below (`components.securitySchemes`)."""
SITE_OR_INTERNAL: list[dict[str, list[str]]] = [
    {"siteKey": []},
    {"siteKeyQuery": []},
    {"internalToken": []},
]
"""OpenAPI `security` of a route a browser (site key) or a server (bearer token) may call."""
INTERNAL_ONLY: list[dict[str, list[str]]] = [{"internalToken": []}]
"""OpenAPI `security` of `require_internal`."""
CRM_ONLY: list[dict[str, list[str]]] = [{"crmKey": []}]
"""OpenAPI `security` of `POST /v1/crm/events` (`engine.gateway.crm`)."""
READER: list[dict[str, list[str]]] = [
    {"siteKey": [], "identity": []},
    {"siteKeyQuery": [], "identityQuery": []},
    {"siteKey": []},
    {"siteKeyQuery": []},
    {"internalToken": []},
]
"""OpenAPI `security` of `require_reader`: a site key with an identity token for the user, a
site key alone for an anonymous id (`anonymous=true`), or an internal token."""


class Refused(NerveError):
    """A request without the credentials its route needs: `status` is 401 when none were
    given, 403 when they are not good enough."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def site_key_of(request: Request) -> str | None:
    """The site key a request names (header first, then the query parameter)."""
    return request.headers.get(SITE_KEY_HEADER) or request.query_params.get("site_key")


def origin_allowed(site: SiteKey, origin: str | None) -> bool:
    """True when `origin` may use `site` (a request without Origin is not a browser's)."""
    return not origin or "*" in site.origins or origin in site.origins


def check_site(request: Request, keys: dict[str, SiteKey]) -> SiteKey:
    """The site key of `request`, known and allowed for its origin; else `Refused`."""
    key = site_key_of(request)
    if not key:
        raise Refused(401, f"missing {SITE_KEY_HEADER} header or site_key")
    site = keys.get(key)
    if site is None:
        raise Refused(403, "unknown site key")
    origin = request.headers.get("origin")
    if not origin_allowed(site, origin):
        raise Refused(403, f"origin {origin} is not allowed for this site key")
    return site


def check_internal(request: Request, tokens: tuple[str, ...]) -> None:
    """Return when `request` carries one of the internal bearer `tokens`; else `Refused`."""
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise Refused(401, "internal endpoint: Authorization: Bearer <token>")
    given = auth[7:].strip()
    # compare_digest against every token: the time taken says nothing about which is close
    if not any([hmac.compare_digest(given, t) for t in tokens]):
        raise Refused(403, "not an internal token")


def cors_origin(request: Request, keys: dict[str, SiteKey]) -> str | None:
    """The request's Origin when the site key it names allows it (echoed in CORS headers)."""
    origin = request.headers.get("origin")
    site = keys.get(site_key_of(request) or "")
    if not origin or site is None or not origin_allowed(site, origin):
        return None
    return origin


def require_internal(request: Request) -> None:
    """Dependency: an internal caller only."""
    check_internal(request, gateway_state(request).settings.internal_tokens)


def require_site_or_internal(request: Request) -> None:
    """Dependency: a browser with a good site key, or an internal caller (when it sends
    `Authorization`, the token decides)."""
    state = gateway_state(request)
    if request.headers.get("authorization"):
        check_internal(request, state.settings.internal_tokens)
    else:
        check_site(request, state.keys)


def identity_token_of(request: Request) -> str | None:
    """The identity token a request sends (header first, then the query parameter)."""
    return request.headers.get(IDENTITY_HEADER) or request.query_params.get("identity")


def identity(site: SiteKey, token: str, user_id: str | None = None) -> Identity:
    """What `token` proves on `site` (for `user_id`, when given); else `InvalidIdentity`."""
    if site.identity_secret is None:
        raise InvalidIdentity("this site key has no identity secret (anonymous ids only)")
    return verify_identity_token(
        token, site.identity_secret.get_secret_value(), site_key=site.key, user_id=user_id
    )


def is_internal_call(request: Request) -> bool:
    """True when the request names an internal caller (its token is checked separately)."""
    return bool(request.headers.get("authorization"))


def require_reader(request: Request, user_id: str, anonymous: bool = False) -> None:
    """Dependency of a user's lists and stream: an internal caller; or a good site key and,
    for a known user (not `anonymous`), an identity token for exactly `user_id`."""
    state = gateway_state(request)
    if is_internal_call(request):
        check_internal(request, state.settings.internal_tokens)
        return
    site = check_site(request, state.keys)
    if anonymous:
        return
    token = identity_token_of(request)
    if not token:
        raise Refused(
            401,
            f"a known user's recommendations need an identity token for that user "
            f"({IDENTITY_HEADER} header or ?identity=); anonymous ids need none "
            f"(?anonymous=true)",
        )
    try:
        identity(site, token, user_id)
    except InvalidIdentity as exc:
        raise Refused(403, f"identity token refused: {exc.reason}") from None

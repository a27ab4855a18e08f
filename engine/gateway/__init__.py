"""The HTTP gateway: event ingestion, lists and their live stream, profiles for internal
callers, health and metrics, and what browsers load (the widget, the demo site, CORS).

Modules: `app` (`create_app`, lifespan), `state` (`GatewayState`, what routers share, read from
`request.app.state.gateway`), `auth` (the site-key and internal-token checks), and one router
per concern: `events`, `recommendations` (with `live`), `profiles`, `ops`, `assets`, and
`demo` (the demo bank's own site backend: its sign-in mints identity tokens).
"""

from engine.gateway.app import create_app
from engine.gateway.auth import IDENTITY_HEADER, SITE_KEY_HEADER, Refused
from engine.gateway.state import GatewayState

__all__ = ["IDENTITY_HEADER", "SITE_KEY_HEADER", "GatewayState", "Refused", "create_app"]

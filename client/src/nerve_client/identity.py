"""Signed identity tokens: how a site's backend vouches to Nerve for a signed-in customer.

A browser holds only a public site key, so it cannot prove who its visitor is. The site's
backend, which knows (it signed the customer in), mints a short-lived token with the site key's
`identity_secret` (kept on the server, never sent to a browser) and hands it to the page, which
passes it to `Nerve.identify(userId, token)`. The gateway then accepts events naming that
`user_id`, and serves that user's lists and live stream, only with a valid token for exactly
that user.

The format is a compact JWS (a JWT) signed with HMAC-SHA256, so any JWT library can mint one:

    base64url({"alg":"HS256","typ":"JWT"}) . base64url(claims) . base64url(HMAC-SHA256)

with claims `iss` (the public site key it was minted for), `sub` (the user id), `iat` and
`exp` (Unix seconds). `verify_identity_token` accepts only `alg` HS256 (never `none`), compares
the MAC in constant time, allows `CLOCK_SKEW_S` of clock difference, and refuses a token whose
`iss` is another site key, whose `sub` is another user, or that lives longer than `MAX_TTL_S`
(a backend cannot mint a token that never expires). No revocation list: a token is short-lived
instead (default 15 minutes); a site re-mints one on each page it renders for the customer.

A site backend (Flask here; any framework, or PyJWT's `jwt.encode(..., algorithm="HS256")`):

    import os

    from flask import Flask, jsonify, session
    from nerve_client.identity import mint_identity_token   # or nerve_client.client

    app = Flask(__name__)
    NERVE_SITE_KEY = "bank-web-1"                        # public, also in the <script> tag
    NERVE_SECRET = os.environ["NERVE_IDENTITY_SECRET"]  # the same secret as Nerve's, private

    @app.get("/nerve-token")
    def nerve_token():
        user = session["customer_id"]                   # whoever your login says it is
        token = mint_identity_token(NERVE_SECRET, user, site_key=NERVE_SITE_KEY, ttl_s=900)
        return jsonify(user_id=user, token=token)       # page: Nerve.identify(user_id, token)

This module imports nothing from the broker side: a backend can vendor it alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from nerve_client.ids import canonical_id

DEFAULT_TTL_S = 900
"""Lifetime of a token minted without `ttl_s`: fifteen minutes."""
MAX_TTL_S = 24 * 3600
"""No token is accepted that lives longer than this from now (a day), whatever its `exp`."""
CLOCK_SKEW_S = 30
"""Seconds of clock difference allowed between the minting backend and the gateway."""
MIN_SECRET_CHARS = 16
"""An identity secret shorter than this is refused in the settings (guessable)."""
MAX_TOKEN_CHARS = 2048
_HEADER = {"alg": "HS256", "typ": "JWT"}


class InvalidIdentity(ValueError):
    """A token that does not prove the identity it claims; `reason` says why (for a `detail`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """What a valid token proves: `user_id` is signed in on `site_key` until `expires_at`."""

    site_key: str
    user_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise InvalidIdentity("malformed token") from None


def _mac(secret: str, signing_input: str) -> bytes:
    return hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()


def mint_identity_token(
    secret: str,
    user_id: str,
    *,
    site_key: str,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A token proving that `user_id` is signed in on `site_key`, valid for `ttl_s` seconds;
    signed with that site key's identity secret. Called by the site's backend, never in a
    browser."""
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {MAX_TTL_S} seconds")
    if not user_id:
        raise ValueError("user_id must not be empty")
    issued = int(time.time() if now is None else now)
    claims = {"iss": site_key, "sub": user_id, "iat": issued, "exp": issued + ttl_s}
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{head}.{body}"
    return f"{signing_input}.{_b64(_mac(secret, signing_input))}"


def verify_identity_token(
    token: str,
    secret: str,
    *,
    site_key: str,
    user_id: str | None = None,
    now: float | None = None,
) -> Identity:
    """The identity `token` proves for `site_key` (and for `user_id`, when given), or
    `InvalidIdentity` saying why not: malformed, bad signature, expired, minted for another
    site key or another user, or living longer than `MAX_TTL_S`."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InvalidIdentity("malformed token")
    head, body, sig = token.split(".")
    try:
        header = json.loads(_unb64(head))
    except ValueError:
        raise InvalidIdentity("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidIdentity("unsupported token algorithm (HS256 only)")
    # the MAC first: nothing in an unsigned payload is trusted, not even its error messages
    if not hmac.compare_digest(_unb64(sig), _mac(secret, f"{head}.{body}")):
        raise InvalidIdentity("bad signature")
    try:
        claims = json.loads(_unb64(body))
    except ValueError:
        raise InvalidIdentity("malformed token") from None
    if not isinstance(claims, dict):
        raise InvalidIdentity("malformed token")
    return _check_claims(claims, site_key, user_id, time.time() if now is None else now)


def _check_claims(
    claims: dict[str, object], site_key: str, user_id: str | None, now: float
) -> Identity:
    sub, iss, exp = claims.get("sub"), claims.get("iss"), claims.get("exp")
    if not isinstance(sub, str) or not isinstance(iss, str) or not isinstance(exp, int):
        raise InvalidIdentity("token claims sub, iss and exp are required")
    if iss != site_key:
        raise InvalidIdentity("token minted for another site key")
    if exp + CLOCK_SKEW_S < now:
        raise InvalidIdentity("token expired")
    if exp - now > MAX_TTL_S + CLOCK_SKEW_S:
        raise InvalidIdentity(f"token lives longer than {MAX_TTL_S} s")
    iat = claims.get("iat")
    if isinstance(iat, int) and iat - CLOCK_SKEW_S > now:
        raise InvalidIdentity("token issued in the future (clock?)")
    sub = canonical_id(sub)  # a UUID is one user in any case, as in events (`nerve_client.ids`)
    if user_id is not None and sub != canonical_id(user_id):
        raise InvalidIdentity("token is for another user")
    return Identity(site_key=iss, user_id=sub, expires_at=exp)

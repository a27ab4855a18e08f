"""The `Nerve-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

The scheme is Stripe's: the timestamp is signed with the body, so a receiver that refuses
signatures older than a few minutes (`verify`'s `tolerance_s`) cannot be fed a replayed
request, and `v1` names the scheme so a later one can be added beside it during a rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Nerve-Signature"
SIGNAL_ID_HEADER = "Nerve-Signal-Id"
ATTEMPT_HEADER = "Nerve-Delivery-Attempt"
TOLERANCE_S = 300


class BadSignature(ValueError):
    """A `Nerve-Signature` that does not match the body, is malformed, or is too old."""


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Nerve-Signature` value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={digest(secret, t, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a `Nerve-Signature` header against `body`; its timestamp, or `BadSignature`."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise BadSignature("no timestamp (t=) in the signature") from None
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        raise BadSignature(f"the signature's timestamp {t} is more than {tolerance_s} s away")
    want = digest(secret, t, body)
    if not any(hmac.compare_digest(want, v) for v in parts.get("v1", [])):
        raise BadSignature("no v1 signature matches the body")
    return t

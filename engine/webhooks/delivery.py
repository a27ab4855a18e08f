"""One webhook POST, the retry schedule, and the options of both.

An attempt succeeds on any 2xx answer. Anything else — another status (a redirect too: it is
not followed, the URL is what was subscribed), a timeout, a refused connection — is a failure,
retried after `backoff(attempt)`: exponential from `backoff_s`, capped at `max_backoff_s`,
with "equal jitter" (a random half of the step is dropped), so receivers that failed together
are not all retried in the same instant. After `attempts` failures the delivery is given up
and dead-lettered (`engine.services.webhooks`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx
from pydantic import BaseModel, ConfigDict, Field

from engine import __version__
from engine.webhooks.signing import ATTEMPT_HEADER, SIGNAL_ID_HEADER, SIGNATURE_HEADER, sign
from engine.webhooks.subscriptions import Subscription

USER_AGENT = f"nerve-webhooks/{__version__}"


class DeliveryOptions(BaseModel):
    """How the webhooks service delivers (defaults: about 3.5 hours of retries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    attempts: int = Field(default=12, ge=1, le=90, description="POSTs before dead-lettering")
    backoff_s: float = Field(default=5.0, gt=0, description="Wait after the first failure")
    max_backoff_s: float = Field(default=3600.0, gt=0, description="Longest wait between tries")
    timeout_s: float = Field(default=10.0, gt=0, description="One POST, connect to last byte")
    refresh_s: float = Field(default=5.0, gt=0, description="How often subscriptions are re-read")
    concurrency: int = Field(default=8, ge=1, le=256, description="POSTs in flight per receiver")


def backoff(attempt: int, options: DeliveryOptions, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    step = min(options.max_backoff_s, options.backoff_s * 2 ** min(attempt - 1, 40))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: `ok` on 2xx, else why not (status or transport error)."""

    ok: bool
    reason: str


async def post(
    client: httpx.AsyncClient, sub: Subscription, body: bytes, signal_id: str, attempt: int
) -> Attempt:
    """POST `body` to `sub`, signed; never raises for what the receiver or network did."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(sub.secret, body),
        SIGNAL_ID_HEADER: signal_id,
        ATTEMPT_HEADER: str(attempt),
    }
    try:
        response = await client.post(sub.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if 200 <= response.status_code < 300:
        return Attempt(True, f"HTTP {response.status_code}")
    return Attempt(False, f"HTTP {response.status_code}")


def client(options: DeliveryOptions) -> httpx.AsyncClient:
    """The HTTP client of the service: bounded timeouts, no redirects, no cookies kept."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(options.timeout_s),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )

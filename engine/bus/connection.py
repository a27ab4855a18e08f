"""Connecting to NATS: retries with backoff, never-ending reconnects, errors that are reported,
and the credential (`nerve_client.credentials.Credential`) and TLS files a connection presents.

A server that refuses the credential (authorization violation) is not retried until the
timeout: the first refusal ends the attempt with `AuthRefused`, which names the user.

`url` may list several servers of a cluster, comma-separated (`--nats-url
nats://a:4222,nats://b:4222`): the client connects to any of them and, when that one goes
away, reconnects to another (nats-py's server pool, which also learns the cluster's other
nodes from the server). A user and password written in one URL of the list count for all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from nats.aio.client import Client as NATS

from engine.credentials import redact
from nerve_client.credentials import Credential, Tls, auth_options
from nerve_client.errors import BrokerUnavailable

log = logging.getLogger("nerve.bus")


class ConnectionState:
    """What `/healthz` reports: connected or not, since when, and the last error."""

    def __init__(self) -> None:
        self.connected = False
        self.since = time.time()
        self.last_error: str | None = None
        self.slow_consumer_errors = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "since": self.since,
            "last_error": self.last_error,
            "slow_consumer_errors": self.slow_consumer_errors,
        }


class AuthRefused(BrokerUnavailable):
    """The server answered but refused the credential (or its absence)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.args = (f"NATS at {url} refused the connection: {reason}",)


def _refusal(text: str) -> bool:
    lowered = text.lower()
    return "authorization violation" in lowered or "authentication" in lowered


async def connect(
    url: str,
    name: str,
    *,
    timeout: float = 10.0,
    state: ConnectionState | None = None,
    credential: Credential | None = None,
    tls: Tls | None = None,
) -> NATS:
    """Connect to `url` as `credential`, retrying every 0.25 s for up to `timeout` seconds.

    Once connected the client reconnects forever (nats-py's default gives up after about two
    minutes), and every asynchronous error is logged and recorded in `state` rather than lost.
    Raises `BrokerUnavailable` if no server answered within `timeout`, `AuthRefused` at once
    when the server refused the credential.
    """
    state = state or ConnectionState()
    shown = ",".join(map(redact, servers := server_list(url)))
    nc = NATS()
    connected = False
    first_error: list[str] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if not connected:  # still connecting: remember why, report once at the deadline
            if not refused.is_set():  # a refusal is the reason, not the resets that follow it
                first_error[:] = [str(exc) or type(exc).__name__]
            if _refusal(text):
                refused.set()
            return
        state.last_error = text
        if "slow consumer" in text.lower():
            state.slow_consumer_errors += 1
        log.warning("nats error: %s", text)

    async def on_disconnect() -> None:
        state.connected, state.since = False, time.time()
        if not connected or nc.is_closed or nc.is_draining:
            return  # never connected (reported once by connect), or our own close()
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        state.connected, state.since = True, time.time()
        log.info("reconnected to NATS")

    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": min(2.0, timeout),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # also retries the first connection until timeout
        "reconnect_time_wait": 0.25,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    attempt = asyncio.ensure_future(nc.connect(servers, **options, **auth_options(credential, tls)))
    waiter = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait(
            [attempt, waiter], timeout=timeout, return_when="FIRST_COMPLETED"
        )
    finally:
        waiter.cancel()
    if attempt not in done:
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        await _abandon(nc)
        reason = first_error[0] if first_error else "timed out"
        if refused.is_set():
            who = credential.user if credential and credential.user else "this client"
            raise AuthRefused(shown, f"{who}: {reason}")
        raise BrokerUnavailable(shown, reason)
    exc = attempt.exception()
    if exc is not None:  # nats-py raises several unrelated types here
        await _abandon(nc)
        raise BrokerUnavailable(shown, str(exc) or type(exc).__name__) from None
    connected = True
    state.connected, state.since = True, time.time()
    return nc


def server_list(url: str) -> list[str]:
    """The servers of a comma-separated `url`; one URL's user and password go to every URL
    that names none (nats-py takes each server's credential from its own URL)."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise BrokerUnavailable(repr(url), "no server URL given")
    userinfo = next((u.partition("://")[2].rpartition("@")[0] for u in servers if "@" in u), "")
    if not userinfo:
        return servers
    out = []
    for u in servers:
        scheme, sep, rest = u.rpartition("://") if "://" in u else ("nats", "://", u)
        out.append(u if "@" in rest else f"{scheme}{sep}{userinfo}@{rest}")
    return out


async def _abandon(nc: NATS) -> None:
    """Close a client whose first connection did not succeed, or that the server dropped (no
    reconnect loop left behind). nats-py may raise CancelledError from its own closing when
    the server closed the connection first; that is swallowed unless this task is cancelled."""
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("closing an abandoned connection: cancelled inside nats-py")
    except Exception as exc:  # a half-open client may fail to close in several ways
        log.debug("closing an abandoned connection: %s", exc)


async def accepts(
    url: str, credential: Credential | None, tls: Tls | None = None, timeout: float = 2.0
) -> bool:
    """True when the server at `url` accepts `credential` now, False when it refuses it;
    `BrokerUnavailable` when no server answers."""
    try:
        nc = await connect(url, "nerve-probe", timeout=timeout, credential=credential, tls=tls)
    except AuthRefused:
        return False
    try:  # a round trip: a server reloading its authorization may drop the client just after
        await nc.flush(max(1, math.ceil(timeout)))  # nats-py takes whole seconds
        return True
    except Exception:  # dropped (e.g. the credential was revoked by the reload): not accepted
        return False
    finally:
        await _abandon(nc)

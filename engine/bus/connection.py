"""Connecting to NATS: retries with backoff, never-ending reconnects, errors that are reported."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.aio.client import Client as NATS

from engine.errors import BrokerUnavailable

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


async def connect(
    url: str,
    name: str,
    *,
    timeout: float = 10.0,
    state: ConnectionState | None = None,
) -> NATS:
    """Connect to `url`, retrying every 0.25 s for up to `timeout` seconds.

    Once connected the client reconnects forever (nats-py's default gives up after about two
    minutes), and every asynchronous error is logged and recorded in `state` rather than lost.
    Raises `BrokerUnavailable` if no server answered within `timeout`.
    """
    state = state or ConnectionState()

    client: list[NATS] = []
    first_error: list[str] = []

    async def on_error(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if not client:  # still connecting: remember why, report once at the deadline
            first_error[:] = [str(exc) or type(exc).__name__]
            return
        state.last_error = text
        if "slow consumer" in text.lower():
            state.slow_consumer_errors += 1
        log.warning("nats error: %s", text)

    async def on_disconnect() -> None:
        state.connected, state.since = False, time.time()
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own close(), not a failure
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        state.connected, state.since = True, time.time()
        log.info("reconnected to NATS")

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=min(2.0, timeout),
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # also retries the first connection until timeout
                reconnect_time_wait=0.25,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout,
        )
    except TimeoutError:
        raise BrokerUnavailable(url, first_error[0] if first_error else "timed out") from None
    except Exception as exc:  # nats-py raises several unrelated types here
        raise BrokerUnavailable(url, str(exc) or type(exc).__name__) from None
    state.connected, state.since = True, time.time()
    client.append(nc)
    return nc

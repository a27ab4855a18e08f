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
    """Connect to `url`, retrying with exponential backoff for up to `timeout` seconds.

    Once connected the client reconnects forever (nats-py's default gives up after about two
    minutes), and every asynchronous error is logged and recorded in `state` rather than lost.
    Raises `BrokerUnavailable` if no server answered within `timeout`.
    """
    state = state or ConnectionState()

    async def on_error(exc: Exception) -> None:
        state.last_error = f"{type(exc).__name__}: {exc}"
        if "slow consumer" in str(exc).lower():
            state.slow_consumer_errors += 1
        log.warning("nats error: %s", state.last_error)

    client: list[NATS] = []

    async def on_disconnect() -> None:
        state.connected, state.since = False, time.time()
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own close(), not a failure
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        state.connected, state.since = True, time.time()
        log.info("reconnected to NATS")

    deadline = time.monotonic() + timeout
    delay = 0.05
    last = "no attempt"
    while True:
        try:
            nc = await nats.connect(
                url,
                name=name,
                connect_timeout=min(2.0, max(0.1, deadline - time.monotonic())),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except Exception as exc:  # nats-py raises several unrelated types here
            last = str(exc) or type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailable(url, last) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        state.connected, state.since = True, time.time()
        client.append(nc)
        return nc

"""The broker as training reaches it from plain (sync) code: the settings of a call, and one
piece of async work on a connected `Bus`, also from a notebook or an async test.

Training needs no part of the command line to talk to the broker (`engine.cli` loads training's
commands as a plug-in, so training leaning on it would be a circle waiting to close).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.broker import broker_url
from engine.bus import Bus
from engine.credentials import tls_of
from engine.credstore import for_component
from engine.settings import BrokerSettings

T = TypeVar("T")


def settings_of(
    nats_url: str | None = None,
    data_dir: Path | str | None = None,
    broker: BrokerSettings | None = None,
) -> BrokerSettings:
    """`broker` when given, else the settings of `nats_url` (None: the embedded broker of
    `data_dir` (default: `NERVE_DATA_DIR`, else `./.nerve`), started for the call when none
    runs)."""
    if broker is not None:
        return broker
    return BrokerSettings(nats_url=nats_url, data_dir=data_dir_of(data_dir))


def data_dir_of(data_dir: Path | str | None) -> Path:
    """`data_dir`, else `NERVE_DATA_DIR`, else `./.nerve`: what the `nerve` command uses."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("NERVE_DATA_DIR") or ".nerve")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion and return its result, also from code that already runs
    an event loop (a notebook, an async test): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def on_bus(settings: BrokerSettings, name: str, work: Callable[[Bus], Coroutine[Any, Any, T]]) -> T:
    """`work(bus)` on a `Bus` (client name `name`) connected with the admin credential and TLS
    files of `settings`; an embedded broker is started around it when no URL is configured."""

    async def run(url: str) -> T:
        bus = await Bus.connect(
            url,
            name,
            timeout=settings.connect_timeout,
            credential=for_component(settings, "admin"),
            tls=tls_of(settings),
        )
        try:
            return await work(bus)
        finally:
            await bus.close()

    with broker_url(settings) as url:
        return run_sync(run(url))

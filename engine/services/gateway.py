"""The gateway as a service: the HTTP app (`engine.gateway`) served by uvicorn until `stop`.

The app opens its own broker connection in its lifespan (it is also served on its own, e.g.
by tests and `uvicorn engine.gateway:...`), so this wrapper only owns the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from engine.bus import Bus
from engine.gateway import create_app
from engine.settings import GatewaySettings, Settings


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class GatewayService:
    name = "gateway"

    def __init__(self, settings: GatewaySettings, nats_url: str, connect_timeout: float) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings, nats_url, connect_timeout),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = _Server(config)
        self.ready = asyncio.Event()

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> GatewayService:
        assert settings.broker.nats_url is not None
        return cls(settings.gateway, settings.broker.nats_url, settings.broker.connect_timeout)

    def describe(self) -> str:
        base = f"http://{self.settings.host}:{self.settings.port}"
        return f"{base}/  API docs {base}/docs  health {base}/healthz"

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.05)
        self.ready.set()
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            self.server.should_exit = True
            await serving
        finally:
            stopping.cancel()

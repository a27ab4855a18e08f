"""The gateway as a service: the HTTP app (`engine.gateway`) served by uvicorn until `stop`.

The app opens its own broker connection in its lifespan (it is also served on its own, e.g.
by tests and `uvicorn engine.gateway:...`), as the `gateway` credential of the broker settings
(`engine.credstore.for_component`), so this wrapper only owns the server; the `Bus` the
runner hands `build` is not used for requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from engine.bus import Bus
from engine.credentials import tls_of
from engine.credstore import for_component
from engine.gateway import create_app
from engine.settings import GatewaySettings, Settings
from nerve_client.credentials import Credential, Tls
from nerve_client.errors import ConfigError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class GatewayService:
    name = "gateway"

    def __init__(
        self,
        settings: GatewaySettings,
        nats_url: str,
        connect_timeout: float,
        *,
        credential: Credential | None = None,
        tls: Tls | None = None,
    ) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings, nats_url, connect_timeout, credential=credential, tls=tls),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = _Server(config)
        self.ready = asyncio.Event()

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> GatewayService:
        broker = settings.broker
        assert broker.nats_url is not None
        return cls(
            settings.gateway,
            broker.nats_url,
            broker.connect_timeout,
            credential=for_component(broker, "gateway"),
            tls=tls_of(broker),
        )

    def describe(self) -> str:
        base = f"http://{self.settings.host}:{self.settings.port}"
        return f"{base}/  API docs {base}/docs  health {base}/healthz"

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.05)
        if not self.server.started:  # taken between the CLI's check and now: one clear line
            with contextlib.suppress(BaseException):
                await serving  # uvicorn logs the bind error and raises SystemExit(1)
            s = self.settings
            raise ConfigError(f"--port: the gateway could not listen on {s.host}:{s.port}")
        self.ready.set()
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            self.server.should_exit = True
            await serving
        finally:
            stopping.cancel()

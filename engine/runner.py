"""`nerve up`: provision, optionally import a history, then run the services until stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvicorn
from rich.console import Console

from engine.bus import JetStreamKV, Publisher, connect, provision
from engine.gateway import create_app
from engine.importer import import_file
from engine.settings import BrokerSettings, GatewaySettings


async def run_engine(
    url: str,
    gateway: GatewaySettings,
    broker: BrokerSettings,
    *,
    import_path: Path | None = None,
    console: Console | None = None,
) -> None:
    """Provision, import `import_path` if given, then serve the gateway until Ctrl-C."""
    console = console or Console()
    nc = await connect(url, "nerve-up", timeout=broker.connect_timeout)
    try:
        js = nc.jetstream()
        await provision(js)
        if import_path is not None:
            summary = await import_file(
                import_path, Publisher(nc), await JetStreamKV.open(js, "imports")
            )
            state = "already imported" if summary.already_complete else "imported"
            console.print(f"{import_path.name}: {state}, {summary.accepted:,} events in the log")
    finally:
        await nc.close()
    config = uvicorn.Config(
        create_app(gateway, url, broker.connect_timeout),
        host=gateway.host,
        port=gateway.port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        base = f"http://{gateway.host}:{gateway.port}"
        console.print(f"Nerve is up. Gateway {base}/  API docs {base}/docs  health {base}/healthz")
        console.print(f"NATS {url}. Ctrl-C stops.")
    await task

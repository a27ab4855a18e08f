"""Running services: `nerve up` (all of them in one process) and `nerve run NAME` (one).

Each service is an asyncio task with its own dependencies; a Ctrl-C or SIGTERM sets one stop
event, every service finishes its current batch, then the process exits with 130 / 143.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Generator
from pathlib import Path

import uvicorn
from rich.console import Console

from engine.bus import JetStreamKV, Publisher, connect, provision
from engine.gateway import create_app
from engine.importer import import_file
from engine.profiles.erasure import FORGET_SUBJECT
from engine.profiles.service import ProfileService
from engine.profiles.store import ProfileStore
from engine.recommender.core import Serving
from engine.recommender.service import RecommenderService
from engine.recommender.slots import load_slots
from engine.settings import BrokerSettings, GatewaySettings, RecommenderOptions
from engine.signals import SignalsService
from engine.warehouse import WarehouseService

SERVICES = ("gateway", "profiles", "warehouse", "recommender", "signals")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _quiet_gc() -> None:
    """Fewer, cheaper garbage collections: the services hold hundreds of thousands of small,
    acyclic dicts (profiles, lists) that reference counting frees, and a full collection walking
    them all stalled the shared event loop for 100-250 ms (the freshness p99). What exists at
    start-up is frozen out of collections, and the young generation is collected 70x less often.
    NERVE_GC_TUNING=0 keeps Python's defaults (to measure the difference)."""
    if os.environ.get("NERVE_GC_TUNING", "1") == "0":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_services(
    url: str,
    names: tuple[str, ...],
    broker: BrokerSettings,
    *,
    gateway: GatewaySettings | None = None,
    import_path: Path | None = None,
    console: Console | None = None,
    ack_wait: float = 30.0,
    flush_events: int = 50_000,
    recommender: RecommenderOptions | None = None,
    visitors: int = 0,
) -> int:
    """Run `names` until SIGINT/SIGTERM; returns the signal number that stopped them."""
    console = console or Console()
    nc = await connect(url, "nerve-services", timeout=broker.connect_timeout)
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks: list[asyncio.Task[None]] = []
    try:
        js = nc.jetstream()
        await provision(js)
        if import_path is not None:
            summary = await import_file(
                import_path, Publisher(nc), await JetStreamKV.open(nc, "imports")
            )
            state = "already imported" if summary.already_complete else "imported"
            console.print(f"{import_path.name}: {state}, {summary.accepted:,} events in the log")
        if "profiles" in names:
            store = await ProfileStore.open(nc)
            service = ProfileService(js, Publisher(nc), store, ack_wait=ack_wait)

            async def on_forget(msg: object) -> None:
                service.forget(msg.data.decode())  # type: ignore[attr-defined]

            await nc.subscribe(FORGET_SUBJECT, cb=on_forget)
            tasks.append(asyncio.create_task(service.run(stop), name="profiles"))
            console.print("profiles: projecting ACTIVITY and CRM into the profiles bucket")
        if "recommender" in names:
            opts = recommender or RecommenderOptions()
            slots, source = load_slots(opts.config, broker.data_dir)
            reco = RecommenderService(
                nc,
                Serving(slots),
                await ProfileStore.open(nc),
                Publisher(nc),
                replicas=opts.replicas,
                replica=opts.replica,
                ack_wait=ack_wait,
            )
            tasks.append(asyncio.create_task(reco.run(stop), name="recommender"))
            console.print(
                f"recommender: {reco.durable}, slots {', '.join(slots.slots)} (from {source})"
            )
        if "signals" in names:
            opts = recommender or RecommenderOptions()
            slots, source = load_slots(opts.config, broker.data_dir)
            detector = SignalsService(
                nc,
                slots.signals,
                await ProfileStore.open(nc),
                Publisher(nc),
                replicas=opts.replicas,
                replica=opts.replica,
            )
            tasks.append(asyncio.create_task(detector.run(stop), name="signals"))
            console.print(f"signals: topics {', '.join(sorted(slots.signals)) or 'none'}")
        if "warehouse" in names:
            root = broker.data_dir / "warehouse"
            warehouse = WarehouseService(js, root, flush_events=flush_events)
            tasks.append(asyncio.create_task(warehouse.run(stop), name="warehouse"))
            console.print(f"warehouse: appending ACTIVITY to Parquet under {root}")
        if visitors:
            from engine.synth import visitors as trickle

            tasks.append(
                asyncio.create_task(trickle(Publisher(nc), visitors, stop), name="visitors")  # type: ignore[arg-type]
            )
            console.print(f"visitors: a trickle of synthetic visitors among {visitors:,} users")
        server = None
        if "gateway" in names:
            assert gateway is not None
            config = uvicorn.Config(
                create_app(gateway, url, broker.connect_timeout),
                host=gateway.host,
                port=gateway.port,
                log_level="warning",
                lifespan="on",
            )
            server = _Server(config)
            tasks.append(asyncio.create_task(server.serve(), name="gateway"))
            while not server.started and not tasks[-1].done():
                await asyncio.sleep(0.05)
            if server.started:
                base = f"http://{gateway.host}:{gateway.port}"
                console.print(f"gateway: {base}/  API docs {base}/docs  health {base}/healthz")
        console.print(f"NATS {url}. Ctrl-C stops.")
        _quiet_gc()
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        if server is not None:
            server.should_exit = True
        for t in done:
            if t is not waiter and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await nc.drain()
    return received[0] if received else 0

"""Running services: `nerve up` (all of them in one process) and `nerve run NAME` (one).

Each service (`engine/services/`) is built from `(Bus, Settings)` by the one table `SERVICES`
and runs as an asyncio task; a Ctrl-C or SIGTERM sets one stop event, every service finishes
its current batch, then the process exits with 130 / 143.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from engine.bus import Bus
from engine.importer import import_file
from engine.services.gateway import GatewayService
from engine.services.profiles import ProfileService
from engine.services.recommender import RecommenderService
from engine.services.signals import SignalsService
from engine.services.warehouse import WarehouseService
from engine.settings import (
    BrokerSettings,
    GatewaySettings,
    RecommenderOptions,
    ServiceSettings,
    Settings,
)


class Service(Protocol):
    """What every service is: a name, a readiness event, a run loop until `stop`."""

    name: str
    ready: asyncio.Event

    async def run(self, stop: asyncio.Event) -> None: ...

    def describe(self) -> str: ...


SERVICES: dict[str, Callable[[Bus, Settings], Awaitable[Service]]] = {
    "gateway": GatewayService.build,
    "profiles": ProfileService.build,
    "warehouse": WarehouseService.build,
    "recommender": RecommenderService.build,
    "signals": SignalsService.build,
}
"""Every service by name, in start order, with how it is built."""


def _quiet_gc(settings: ServiceSettings) -> None:
    """Fewer, cheaper garbage collections: the services hold hundreds of thousands of small,
    acyclic dicts (profiles, lists) that reference counting frees, and a full collection walking
    them all stalled the shared event loop for 100-250 ms (the freshness p99). What exists at
    start-up is frozen out of collections, and the young generation is collected 70x less often.
    NERVE_GC_TUNING=0 keeps Python's defaults (to measure the difference)."""
    if not settings.gc_tuning:
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
    recommender: RecommenderOptions | None = None,
    visitors: int = 0,
    services: ServiceSettings | None = None,
) -> int:
    """Run `names` on the broker at `url` until SIGINT/SIGTERM; returns the signal number."""
    settings = Settings(
        broker=broker.model_copy(update={"nats_url": url}),
        gateway=gateway or GatewaySettings(),
        recommender=recommender or RecommenderOptions(),
        services=services or ServiceSettings(),
    )
    return await run(settings, names, import_path=import_path, console=console, visitors=visitors)


async def run(
    settings: Settings,
    names: tuple[str, ...],
    *,
    import_path: Path | None = None,
    console: Console | None = None,
    visitors: int = 0,
) -> int:
    """Provision, import `import_path`, build and run `names`; returns the stopping signal."""
    console = console or Console()
    url = settings.broker.nats_url
    assert url is not None
    bus = await Bus.connect(url, "nerve-services", timeout=settings.broker.connect_timeout)
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await bus.provision()
        if import_path is not None:
            await _import(bus, import_path, console)
        for name in (n for n in SERVICES if n in names):
            service = await SERVICES[name](bus, settings)
            tasks.append(asyncio.create_task(service.run(stop), name=name))
            if name == "gateway":  # wait until it listens, so its address can be printed
                await _started(service, tasks[-1])
            console.print(f"{name}: {service.describe()}")
        if visitors:
            from engine.synth import visitors as trickle

            tasks.append(asyncio.create_task(trickle(bus, visitors, stop), name="visitors"))
            console.print(f"visitors: a trickle of synthetic visitors among {visitors:,} users")
        console.print(f"NATS {url}. Ctrl-C stops.")
        _quiet_gc(settings.services)
        await _until_stopped(tasks, stop)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await bus.close()
    return received[0] if received else 0


async def _import(bus: Bus, path: Path, console: Console) -> None:
    summary = await import_file(path, bus.publisher, await bus.kv("imports"))
    state = "already imported" if summary.already_complete else "imported"
    console.print(f"{path.name}: {state}, {summary.accepted:,} events in the log")


async def _started(service: Service, task: asyncio.Task[Any]) -> None:
    while not service.ready.is_set() and not task.done():
        await asyncio.sleep(0.05)


async def _until_stopped(tasks: list[asyncio.Task[Any]], stop: asyncio.Event) -> None:
    """Wait for the stop event or the first service to end; re-raise a service's failure."""
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for t in done:
        if t is not waiter and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    await asyncio.gather(*tasks, return_exceptions=True)

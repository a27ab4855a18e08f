"""Running services: `nerve up` (all of them in one process) and `nerve run NAME` (one).

Each service (`engine/services/`) is built from `(Bus, Settings)` by the one table `SERVICES`
and runs as an asyncio task; a Ctrl-C or SIGTERM sets one stop event, every service finishes
its current batch, then the process exits with 130 / 143.

Least privilege also in one process: provisioning (and `--import`) runs on an `admin`
connection that is closed before any service starts (with a service's own `--nats-creds`, or
a NATS `.creds` file, that connection only checks that the streams and buckets exist: only an
admin creates them, with `nerve init`), and every service gets its own `Bus`
connected with its own credential (`engine.credentials`: the embedded broker's per-component
ones, or the one `--nats-creds` gave every component), so a service cannot do more than its job
even when all of them share a process. (The gateway's app opens its own connection, as the
`gateway` credential; the `Bus` handed to its `build` stays idle.)
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from engine.bus import Bus
from engine.bus.provision import require_provisioned
from engine.credentials import redact, tls_of
from engine.credstore import for_component
from engine.importer import import_file
from engine.services.anomalies import AnomalyService
from engine.services.gateway import GatewayService
from engine.services.ops import OpsService
from engine.services.profiles import ProfileService
from engine.services.recommender import RecommenderService
from engine.services.signals import SignalsService
from engine.services.warehouse import WarehouseService
from engine.services.webhooks import WebhookService
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
    "anomalies": AnomalyService.build,
    "ops": OpsService.build,
    "webhooks": WebhookService.build,
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
    embedded = broker.embedded or (broker.nats_url is None and broker.nats_creds is None)
    settings = Settings(
        broker=broker.model_copy(update={"nats_url": url, "embedded": embedded}),
        gateway=gateway or GatewaySettings(),
        recommender=recommender or RecommenderOptions(),
        services=services or ServiceSettings(),
    )
    return await run(settings, names, import_path=import_path, console=console, visitors=visitors)


async def connect_as(settings: Settings, component: str) -> Bus:
    """A `Bus` connected as `component`, with that component's credential."""
    broker = settings.broker
    assert broker.nats_url is not None
    return await Bus.connect(
        broker.nats_url,
        f"nerve-{component}",
        timeout=broker.connect_timeout,
        credential=for_component(broker, component),
        tls=tls_of(broker),
    )


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
    admin = await connect_as(settings, "admin")
    try:
        if _provisions(settings):
            await admin.provision()  # replicas and partitions unset: what exists is kept
        else:
            await require_provisioned(admin)
        if import_path is not None:
            await _import(admin, import_path, console)
    finally:
        await admin.close()
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks: list[asyncio.Task[Any]] = []
    buses: list[Bus] = []
    try:
        for name in (n for n in SERVICES if n in names):
            buses.append(await connect_as(settings, name))
            service = await SERVICES[name](buses[-1], settings)
            tasks.append(asyncio.create_task(service.run(stop), name=name))
            # Ready before the next one starts and before the last line says so: a service's
            # consumers exist then (the recommender's new durable starts at the next message,
            # so events stored before it existed would reach no list).
            await _started(service, tasks[-1])
            console.print(f"{name}: {service.describe()}")
        if visitors:
            from engine.synth import visitors as trickle

            buses.append(await connect_as(settings, "visitors"))
            # the demo's visitors plant an anomaly (a burst, an unusual amount) about every 30 s,
            # on other users each run (a fixed seed replanted the same cases, which the
            # detectors' cooldowns, rebuilt from the log, rightly held back after a restart)
            seed = secrets.randbits(32)
            work = trickle(buses[-1], visitors, stop, seed=seed, anomaly_every=30.0)
            tasks.append(asyncio.create_task(work, name="visitors"))
            console.print(f"visitors: a trickle of synthetic visitors among {visitors:,} users")
        console.print(f"NATS {redact(settings.broker.nats_url or '')}. Ctrl-C stops.")
        _quiet_gc(settings.services)
        await _until_stopped(tasks, stop)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for bus in buses:
            await bus.close()
    return received[0] if received else 0


def _provisions(settings: Settings) -> bool:
    """Whether the runner's admin connection may provision: it holds the admin credential (the
    embedded broker's, or an admin `--nats-creds`), or none (an open server). A service's own
    credential (`nerve run recommender --nats-creds recommender.json`) may not, and a NATS
    `.creds` file says nothing of its rights: then the runner only checks that what the
    services need exists."""
    credential = for_component(settings.broker, "admin")
    return credential is None or credential.role == "admin"


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

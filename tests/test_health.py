"""Heartbeats: a service with work waiting and no progress is reported stuck."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from engine.broker import EmbeddedBroker
from engine.bus import Bus
from engine.health import heartbeat, report
from tests.conftest import event
from tests.test_profiles_service import drain, publish, service


async def wait_for(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_work_waiting_without_progress_is_stuck_and_progress_clears_it(
    fresh: NATS,
) -> None:
    bus = Bus(fresh)
    state = {"done": 7, "behind": 3}

    async def progress() -> tuple[int, int]:
        return state["done"], state["behind"]

    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat(bus, "wedged.test", progress, stop, interval=0.05))
    try:

        async def stuck() -> bool:
            return (await report(bus, after=0.3))["stuck"] == ["wedged.test"]

        await wait_for(stuck)
        state["done"] = 8  # it moved: no longer stuck

        async def moving() -> bool:
            return (await report(bus, after=0.3))["stuck"] == []

        await wait_for(moving, timeout=2)
        state["behind"] = 0  # idle with nothing waiting: never stuck
        await asyncio.sleep(0.5)
        assert (await report(bus, after=0.3))["stuck"] == []
    finally:
        stop.set()
        await task


async def test_a_running_service_reports_its_progress(fresh: NATS) -> None:
    await publish(fresh, [event("item_viewed", user_id=f"h-{i}") for i in range(20)])
    await drain(fresh, await service(fresh))
    found = (await report(Bus(fresh)))["services"]
    [name] = [n for n in found if n.startswith("profiles.")]
    assert found[name]["done"] == 20 and found[name]["stuck"] is False  # type: ignore[index]


async def test_healthz_is_503_and_names_a_stuck_service(fresh: NATS, nats_url: str) -> None:
    """Before, /healthz said ok while the recommender retried one batch forever. Now a
    service whose heartbeat shows work waiting and no progress for a minute makes it 503."""
    import time

    import httpx
    import orjson

    from engine.gateway import create_app
    from engine.settings import GatewaySettings

    kv = await Bus(fresh).kv("health")
    now = time.time()
    beat = {"at": now, "done": 41, "behind": 12, "moved_at": now - 120}
    await kv.put("recommender-0-of-1.host-1", orjson.dumps(beat))
    await kv.put("profiles.host-2", orjson.dumps({**beat, "moved_at": now, "behind": 0}))
    app = create_app(GatewaySettings(), nats_url, 5)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            sick = await http.get("/healthz")
            await kv.put("recommender-0-of-1.host-1", orjson.dumps({**beat, "moved_at": now}))
            well = await http.get("/healthz")
    assert sick.status_code == 503 and sick.json()["stuck"] == ["recommender-0-of-1.host-1"]
    assert sick.json()["services"]["profiles.host-2"]["stuck"] is False
    assert well.status_code == 200 and well.json()["status"] == "ok"


async def test_the_runner_says_it_runs_only_once_every_consumer_exists(
    fresh: NATS, nats_url: str, broker: EmbeddedBroker
) -> None:
    """Before, `nerve up` printed its last line ("Ctrl-C stops") while the recommender had not
    yet created its durable consumers; a new one starts at the next message, so events stored
    in between reached no list (a fault run found 3 users without lists). Now each service is
    ready before the next starts and before that line."""
    import io
    import signal

    from rich.console import Console

    from engine.runner import run_services
    from engine.settings import BrokerSettings

    out = io.StringIO()
    names = ("profiles", "warehouse", "recommender", "signals")
    task = asyncio.create_task(
        run_services(
            nats_url, names, BrokerSettings(data_dir=broker.data_dir), console=Console(file=out)
        )
    )
    try:
        async with asyncio.timeout(30):
            while "Ctrl-C stops" not in out.getvalue():
                assert not task.done(), out.getvalue()
                await asyncio.sleep(0.002)
        js = fresh.jetstream()
        for stream in ("ACTIVITY", "CRM"):
            await js.consumer_info(stream, "recommender-p00")  # raises NotFoundError if not
            await js.consumer_info(stream, "profiles")
    finally:
        if not task.done():
            try:
                signal.raise_signal(signal.SIGINT)  # the runner's own handler stops the services
            except KeyboardInterrupt:  # failed before the runner set its handler
                task.cancel()
        await asyncio.wait_for(task, 30)

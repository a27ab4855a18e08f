"""The recommender service with experiments wired in (to add to tests/test_experiments.py once
engine/services/recommender.py calls engine.recommender.experiments)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.reader import read_all
from engine.experiments import spec
from engine.experiments.reading import experiment_report
from engine.experiments.spec import CHALLENGER, CONTROL, SHADOW_VARIANT, variant_of
from engine.profiles.store import ProfileStore
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Serving
from engine.services.recommender import RecommenderService
from nerve_client.events import parse_event
from nerve_client.subjects import SHADOW, user_token
from tests.conftest import event
from tests.reco_world import slots_config
from tests.test_experiments import USERS, publish_challenger, world  # noqa: F401


@contextlib.asynccontextmanager
async def running(nc: NATS) -> AsyncIterator[RecommenderService]:
    bus = Bus(nc)
    service = RecommenderService(
        bus, Serving(slots_config(), ItemCatalog()), await ProfileStore.open(bus)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def newest(nc: NATS, user: str, slot: str) -> dict[str, Any] | None:
    found = await read_all(nc.jetstream(), "RECOMMENDATIONS", f"reco.{user_token(user)}.{slot}")
    return orjson.loads(found[-1][2]) if found else None


async def until(nc: NATS, users: list[str], check: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [await newest(nc, u, "trending") for u in users]
        if all(f is not None and check(u, f) for u, f in zip(users, found, strict=True)):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(found)
        await asyncio.sleep(0.05)


def page(user: str) -> Any:
    return parse_event(
        event("item_viewed", user_id=user, item_id="card-gold", properties={"category": "cards"})
    )


async def test_the_service_serves_each_variant_and_stops_on_promote(
    fresh: NATS,
    world: dict[str, str],  # noqa: F811 (the fixture imported from test_experiments)
) -> None:
    registry = await Bus(fresh).registry()
    challenger = await publish_challenger(fresh)
    users = USERS[:12]
    async with running(fresh) as service:
        e = await spec.start(registry, "trending", challenger, 50)
        while e.slot not in service.experiments.running:  # the registry watch reloads
            await asyncio.sleep(0.05)
        await Publisher(fresh).publish_events([page(u) for u in users])

        def tagged(u: str, ev: dict[str, Any]) -> bool:
            p = ev["properties"]
            v = variant_of(e, user_token(u))
            want = challenger if v == CHALLENGER else world["trending"]
            return (
                p.get("experiment") == e.id
                and p.get("variant") == v
                and (p["model_version"] == want)
            )

        await until(fresh, users, tagged)
        await spec.promote(registry, e.id)
        while service.experiments.running:
            await asyncio.sleep(0.05)
        await Publisher(fresh).publish_events([page(u) for u in users])
        await until(
            fresh,
            users,
            lambda u, ev: (
                "experiment" not in ev["properties"]
                and ev["properties"]["model_version"] == challenger
            ),
        )
    variants = {v.variant: v for v in (await experiment_report(Bus(fresh), e)).variants}
    assert variants[CONTROL].lists + variants[CHALLENGER].lists >= len(users)


async def test_the_service_logs_shadow_lists_and_shows_the_control(
    fresh: NATS,
    world: dict[str, str],  # noqa: F811 (the fixture imported from test_experiments)
) -> None:
    registry = await Bus(fresh).registry()
    challenger = await publish_challenger(fresh)
    users = USERS[:5]
    async with running(fresh) as service:
        e = await spec.start(registry, "trending", challenger, 100, shadow=True)
        while e.slot not in service.experiments.running:
            await asyncio.sleep(0.05)
        await Publisher(fresh).publish_events([page(u) for u in users])
        await until(
            fresh,
            users,
            lambda u, ev: (
                ev["properties"].get("variant") == CONTROL
                and ev["properties"]["model_version"] == world["trending"]
            ),
        )
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            shadows = [orjson.loads(d) for _, _, d in await read_all(fresh.jetstream(), SHADOW)]
            if len({s["user_id"] for s in shadows}) == len(users):
                break
            assert asyncio.get_running_loop().time() < deadline, shadows
            await asyncio.sleep(0.05)
    assert {s["properties"]["variant"] for s in shadows} == {SHADOW_VARIANT}
    assert {s["properties"]["model_version"] for s in shadows} == {challenger}

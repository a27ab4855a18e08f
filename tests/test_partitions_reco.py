"""The recommender on partitions: `reco.request` is answered by exactly one replica (the owner
of the user's partition), and a user's lists stay ordered across a move: the previous owner
no longer serves the user, and a list computed from its stale view is refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Conflict, Publisher
from engine.bus.reader import read_all
from engine.partitions import partition_of
from engine.profiles.erasure import forget
from engine.profiles.replay import rebuild
from engine.profiles.store import ProfileStore
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Serving
from engine.recommender.explain import explain
from engine.services.recommender import RecommenderService
from nerve_client.events import parse_event
from nerve_client.subjects import reco_subject, user_filters, user_token
from tests.conftest import event
from tests.reco_world import publish_world, slots_config
from tests.test_partitions_replicas import LEASE_S, PARTITIONS, eventually, leased

__all__ = ["leased"]  # the fixture


@pytest.fixture
async def world(leased: NATS) -> dict[str, str]:
    return await publish_world(leased)


@contextlib.asynccontextmanager
async def running(nc: NATS, **kw: Any) -> AsyncIterator[tuple[RecommenderService, asyncio.Task]]:
    bus = Bus(nc)
    service = RecommenderService(
        bus, Serving(slots_config(), ItemCatalog()), await ProfileStore.open(bus), **kw
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 20)
    try:
        yield service, task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 20)


async def view(nc: NATS, user: str, item: str) -> None:
    e = event("item_viewed", user_id=user, item_id=item, properties={"category": "x"})
    await Publisher(nc).publish_events([parse_event(e)])


async def lists(nc: NATS, user: str, slot: str) -> list[tuple[int, dict[str, Any]]]:
    subject = reco_subject(user_token(user), slot)
    return [
        (s, orjson.loads(d))
        for s, _, d in await read_all(nc.jetstream(), "RECOMMENDATIONS", subject)
    ]


async def until_anchor(nc: NATS, user: str, item: str) -> int:
    """The sequence of the first `similar` list of `user` anchored on `item`."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        for seq, m in await lists(nc, user, "similar"):
            if m["properties"].get("anchor") == item:
                return seq
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no list of {user} anchored on {item}")
        await asyncio.sleep(0.05)


async def test_reco_request_is_answered_by_exactly_one_replica(
    leased: NATS, world: dict[str, str]
) -> None:
    async with running(leased, replicas=2) as (a, _), running(leased, replicas=2) as (b, _):
        await eventually(lambda: len(a.share.owner.held) + len(b.share.owner.held) == PARTITIONS)
        people = [f"q-{i}" for i in range(24)]
        assert {partition_of(user_token(u), PARTITIONS) for u in people} >= {0, 1, 7}
        for u in people:
            data = orjson.dumps({"user_id": u, "slot": "home"})
            answers = [await s._request(data) for s in (a, b)]
            assert sum(x is not None for x in answers) == 1, (u, answers)
            owner = a if answers[0] is not None else b
            assert owner.owns(user_token(u))
            assert orjson.loads(answers[0] or answers[1] or b"{}")["type"] == (
                "recommendations_updated"
            )
        refused = [await s._request(b"{}") for s in (a, b)]  # one error reply, not two
        assert sum(x is not None for x in refused) == 1


async def test_lists_stay_ordered_and_stale_writes_are_refused_across_a_move(
    leased: NATS, world: dict[str, str]
) -> None:
    user, token = "dee", user_token("dee")
    subject = reco_subject(token, "similar")
    async with running(leased) as (a, a_task):
        assert a.owns(token)
        await view(leased, user, "card-gold")
        stale = await until_anchor(leased, user, "card-gold")
        a_task.cancel()  # killed: nothing released, its leases expire on the server
        with contextlib.suppress(asyncio.CancelledError):
            await a_task
    async with running(leased) as (b, _):
        await eventually(lambda: b.owns(token), timeout=10 * LEASE_S)
        assert not a.owns(token)  # the old owner fenced itself before the lease expired
        await view(leased, user, "savings-plus")
        newer = await until_anchor(leased, user, "savings-plus")
        assert newer > stale
        # the previous owner's view (its last write, `stale`) can no longer be published
        payload = (await lists(leased, user, "similar"))[0][1]
        with pytest.raises(Conflict):
            await Bus(leased).publish_if_last(subject, orjson.dumps(payload), None, stale)
    stored = await lists(leased, user, "similar")
    seqs = [m["properties"]["activity_seq"] for _, m in stored]
    assert seqs == sorted(set(seqs))  # strictly increasing through the move


async def test_explain_replay_and_forget_find_every_event_of_a_partitioned_user(
    leased: NATS, world: dict[str, str]
) -> None:
    bus = Bus(leased)
    eve, visitor = user_token("eve"), user_token(None, "v-9")
    assert partition_of(eve, PARTITIONS) != partition_of(visitor, PARTITIONS)
    script = [
        event("item_viewed", user_id=None, anonymous_id="v-9", item_id="card-gold"),
        event("user_identified", user_id="eve", anonymous_id="v-9"),
        event("item_viewed", user_id="eve", item_id="loan-personal"),
        event("crm_contact_logged", user_id="eve", source="crm"),
        event("item_viewed", user_id="eve", item_id="savings-plus"),
    ]
    async with running(leased):
        for e in script:
            await Publisher(leased).publish_events([parse_event(e)])
        await until_anchor(leased, "eve", "savings-plus")
    _, newest = (await lists(leased, "eve", "similar"))[-1]
    stored = await read_all(leased.jetstream(), "ACTIVITY")
    assert all(subject.count(".") == 3 for _, subject, _ in stored)  # stored partitioned
    # explain: every event of the user up to the list, and the same list recomputed
    why = await explain(bus, newest["id"], slots_config(), user="eve")
    assert why.matches, why.notes
    kinds = [(e["stream"], e["type"]) for e in why.events]
    assert ("CRM", "crm_contact_logged") in kinds
    assert [t for s, t in kinds if s == "ACTIVITY"][-3:] == [
        "user_identified",
        "item_viewed",
        "item_viewed",
    ]
    # replay: the user's profile from the log, the visitor's history (another partition) too
    rebuilt = await rebuild(bus, token=eve)
    assert rebuilt.events == len(script) and rebuilt.refused == 0
    # erasure: every event of the user, in both streams (its profile, which would name the
    # visitor it was, is the profiles service's, not running here: the visitor is erased apart)
    report = await forget(bus, eve)
    assert report.erased["ACTIVITY"] == 3 and report.erased["CRM"] == 1
    assert (await forget(bus, visitor)).erased["ACTIVITY"] == 1
    for token in (eve, visitor):
        for stream, subject in user_filters(token).items():
            if stream in ("ACTIVITY", "CRM"):
                assert await read_all(leased.jetstream(), stream, subject) == []

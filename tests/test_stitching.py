"""Login stitching: a visitor's anonymous history joins the profile it logs in to."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.profiles import content, settle_floor, stitch
from engine.profiles.reading import read_profile
from engine.profiles.replay import rebuild
from engine.profiles.store import ProfileStore
from engine.services.profiles import ProfileService
from nerve_client.events import parse_event
from nerve_client.subjects import REQUEST_SUBJECT, user_token
from tests.conftest import event
from tests.reco_world import publish_world
from tests.test_recommender_service import items, running, send, until

VISITOR, USER = "visitor-9", "carla"
A, U = user_token(None, VISITOR), user_token(USER)


def ev(etype: str, minute: int, *, anonymous: bool, **fields: Any) -> dict[str, Any]:
    data = event(etype, time=f"2026-05-01T10:{minute:02d}:00Z", **fields)
    if anonymous:
        del data["user_id"]
        data["anonymous_id"] = VISITOR
    return orjson.loads(parse_event(data).to_json())


def visit() -> list[dict[str, Any]]:
    """A visitor browses loans, agrees to everything in the banner, logs in, browses on."""
    consent = {"analytics": True, "personalization": True, "marketing": True}
    return [
        ev("consent_updated", 0, anonymous=True, properties=consent),
        ev("item_viewed", 1, anonymous=True, item_id="loan-car", properties={"category": "loans"}),
        ev(
            "simulator_used",
            2,
            anonymous=True,
            item_id="loan-car",
            properties={"simulator": "car_loan", "amount": 15000, "term_months": 48},
        ),
        ev("user_identified", 3, anonymous=False, user_id=USER, anonymous_id=VISITOR),
        ev("item_viewed", 4, anonymous=False, user_id=USER, item_id="fund-esg"),
        # the identity token expired: the same browser is anonymous again for a while
        ev("item_viewed", 5, anonymous=True, item_id="card-gold", properties={"category": "cards"}),
    ]


def fold_all(
    events: list[dict[str, Any]], order: list[int] | None = None, settle: bool = False
) -> dict[str, dict[str, Any]]:
    profiles: dict[str, dict[str, Any]] = {}
    for i in order if order is not None else range(len(events)):
        e = events[i]
        token = user_token(e.get("user_id"), e.get("anonymous_id"))
        for t in stitch.fold(profiles, token, e, "activity", i + 1):
            if settle:  # in order only, as the replay does
                settle_floor(profiles[t], "activity", i + 1)
    return profiles


def test_after_login_the_user_profile_holds_the_visitors_history() -> None:
    profiles = fold_all(visit(), settle=True)
    user, visitor = profiles[U], profiles[A]
    assert [r["item_id"] for r in user["recent_items"]] == [
        "card-gold",  # after the login, attributed too
        "fund-esg",
        "loan-car",
        "loan-car",
    ]
    assert user["counts"]["item_viewed"] == 3 and user["counts"]["simulator_used"] == 1
    assert user["categories"] == {"loans": 2, "cards": 1}
    assert user["simulators"]["car_loan"]["last_parameters"]["amount"] == 15000
    assert user["first_seen"] == visitor["first_seen"]
    assert user["positions"]["activity"]["max"] == len(visit())
    assert user["stitched"] == [VISITOR] and user["anonymous_ids"] == [VISITOR]
    assert visitor["identified_as"] == USER
    # the banner's consent stays the visitor's: the customer's is not widened
    assert user["consent"].get("marketing") is None and visitor["consent"]["marketing"] is True
    assert user["counts"]["consent_updated"] == 1  # counted as history all the same


def test_stitching_is_idempotent_and_order_independent() -> None:
    events = visit()
    once = fold_all(events)
    again = copy.deepcopy(once)
    for i, e in enumerate(events):  # every event delivered a second time
        token = user_token(e.get("user_id"), e.get("anonymous_id"))
        assert stitch.fold(again, token, e, "activity", i + 1) == []
    assert again == once
    rng = random.Random(7)
    for _ in range(30):
        order = list(range(len(events)))
        rng.shuffle(order)
        shuffled = fold_all(events, order)
        assert {t: content(p) for t, p in shuffled.items()} == {
            t: content(p) for t, p in once.items()
        }, order
    # a second login from the same browser merges nothing twice
    relogin = ev("user_identified", 9, anonymous=False, user_id=USER, anonymous_id=VISITOR)
    stitch.fold(again, U, relogin, "activity", len(events) + 1)
    assert again[U]["counts"]["item_viewed"] == once[U]["counts"]["item_viewed"]
    assert again[U]["counts"]["user_identified"] == 2


def test_a_visitor_stitched_once_only_links_a_second_user_and_refusal_is_kept() -> None:
    events = visit()[:4]
    other = ev("user_identified", 8, anonymous=False, user_id="dan", anonymous_id=VISITOR)
    profiles = fold_all([*events, other])
    dan = profiles[user_token("dan")]
    assert dan["anonymous_ids"] == [VISITOR] and dan["stitched"] == []
    assert dan["recent_items"] == [] and profiles[A]["identified_as"] == USER
    refusing = [
        ev(
            "consent_updated",
            0,
            anonymous=True,
            properties={"analytics": True, "personalization": False, "marketing": False},
        ),
        *visit()[1:4],
    ]
    profiles = fold_all(refusing)
    assert profiles[U]["stitched"] == [] and profiles[U]["recent_items"] == []
    assert profiles[A]["identified_as"] is None


# -- against a real nats-server ---------------------------------------------------------------


@pytest.fixture
async def world(fresh: NATS) -> dict[str, str]:
    return await publish_world(fresh)


@pytest.fixture
async def profiles_service(fresh: NATS) -> AsyncIterator[ProfileService]:
    bus = Bus(fresh)
    service = ProfileService(bus, await ProfileStore.open(bus))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    yield service
    stop.set()
    await asyncio.wait_for(task, 10)


async def stored_until(nc: NATS, check: Any, timeout: float = 15) -> dict[str, Any]:
    """Poll the stored profile of the user until `check` holds (no timing is asserted)."""
    store = await ProfileStore.open(Bus(nc))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await read_profile(store.fresh(), USER)
        if found is not None and check(found.model_dump()):
            return found.model_dump(mode="json")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stored profile of {USER}: {found}")
        await asyncio.sleep(0.05)


def anonymous(etype: str, item: str | None = None, **props: Any) -> dict[str, Any]:
    data = event(etype, properties=props, anonymous_id=VISITOR)
    del data["user_id"]
    if item is not None:
        data["item_id"] = item
    return data


async def test_after_login_the_list_is_personal_and_replay_gives_the_same_profile(
    fresh: NATS, world: dict[str, str], profiles_service: ProfileService
) -> None:
    nc = fresh
    async with running(nc):
        await send(
            nc,
            anonymous("item_viewed", "loan-personal", category="loans"),
            anonymous(
                "simulator_used", "loan-personal", simulator="loan", amount=9000, term_months=36
            ),
        )
        await send(nc, event("user_identified", user_id=USER, anonymous_id=VISITOR))
        live = await stored_until(nc, lambda p: p["stitched"] == [VISITOR])
        assert [r["item_id"] for r in live["recent_items"]] == ["loan-personal"] * 2
        body = {"user_id": USER, "slot": "home", "k": 3}
        reply = orjson.loads((await nc.request(REQUEST_SUBJECT, orjson.dumps(body), 5)).data)
        props = reply["properties"]
        assert "fallback" not in props and props["model_version"] == world["home"]
        assert props["items"][0]["item_id"] == "loan-personal"
        # the same browser, anonymous again (token expired): still the customer's history
        await send(nc, anonymous("item_viewed", "savings-plus", category="savings"))
        live = await stored_until(nc, lambda p: p["counts"].get("item_viewed") == 2)
    store = await ProfileStore.open(Bus(nc))
    stored = {t: await store.read(t) for t in (U, A)}
    full = await rebuild(Bus(nc))
    one = await rebuild(Bus(nc), token=U)
    for rebuilt in (full.profiles, one.profiles):
        for t in (U, A):
            assert content(rebuilt[t]) == content(stored[t] or {}), t


async def test_the_list_pushed_at_login_is_personal_and_follows_the_visitor_after_it(
    fresh: NATS, world: dict[str, str]
) -> None:
    nc = fresh
    async with running(nc):
        await send(
            nc,
            anonymous("item_viewed", "loan-personal", category="loans"),
            anonymous(
                "simulator_used", "loan-personal", simulator="loan", amount=9000, term_months=36
            ),
            event("user_identified", user_id=USER, anonymous_id=VISITOR),
        )
        first = await until(nc, USER, "home", lambda m: True)
        assert "fallback" not in first["properties"]
        assert items(first)[0] == "loan-personal"
        # anonymous again (token expired): the visitor's next view is the customer's too
        await send(nc, anonymous("item_viewed", "savings-plus", category="savings"))
        await until(nc, USER, "similar", lambda m: m["properties"].get("anchor") == "savings-plus")


async def test_a_login_merges_the_visitors_events_even_before_their_partition_delivers_them(
    fresh: NATS, world: dict[str, str]
) -> None:
    """The log is partitioned by user: a visitor's views and the login naming it travel in two
    partitions, in no order between them. Here the service holds the user's partition and not
    the visitor's (one replica of two expected), so the visitor's views never reach it: before,
    the login merged an empty visitor and the first list was cold; now the login reads the
    visitor's earlier events from the log."""
    from engine.partitions import partition_of

    async with running(fresh, replicas=2) as service:
        held = service.share.owner.held
        partitions = len(held) * 2
        user = next(
            f"u{i}" for i in range(1000) if partition_of(user_token(f"u{i}"), partitions) in held
        )
        visitor = next(
            f"v{i}"
            for i in range(1000)
            if partition_of(user_token(None, f"v{i}"), partitions) not in held
        )
        views = [
            {
                **anonymous("item_viewed", "loan-personal", category="loans"),
                "anonymous_id": visitor,
            },
            {
                **anonymous(
                    "simulator_used", "loan-personal", simulator="loan", amount=9000, term_months=36
                ),
                "anonymous_id": visitor,
            },
        ]
        await send(fresh, *views)
        await send(fresh, event("user_identified", user_id=user, anonymous_id=visitor))
        first = await until(fresh, user, "home", lambda m: True)
        assert "fallback" not in first["properties"]
        assert items(first)[0] == "loan-personal"

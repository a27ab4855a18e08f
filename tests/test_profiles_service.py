"""The profiles service against a real nats-server: exactly-once, replicas, replay, poison."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Outgoing, Publisher, connect
from engine.bus.consumer import DurableConsumer
from engine.profiles import Profile, content
from engine.profiles.reading import read_profile
from engine.profiles.replay import rebuild, verify
from engine.profiles.store import ProfileStore
from engine.services.profiles import ProfileService
from nerve_client.events import parse_event
from nerve_client.subjects import user_token
from tests.conftest import count, event, stored
from tests.test_profile import script

TYPES = ["page_viewed", "item_viewed", "simulator_used", "item_purchased", "consent_updated"]


def history(n: int, users: int = 40) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        etype = TYPES[i % len(TYPES)]
        data = event(etype, user_id=f"user-{i % users}")
        if etype == "item_viewed":
            data["properties"] = {"category": ["loans", "funds", "cards"][i % 3]}
        out.append(orjson.loads(parse_event(data).to_json()))
    return out


async def publish(nc: NATS, events: list[dict[str, Any]]) -> None:
    await Publisher(nc).publish_events([parse_event(e) for e in events])


def expected_counts(events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        out[user_token(e.get("user_id"), e.get("anonymous_id"))][e["type"]] += 1
    return out


async def service(nc: NATS, **kw: Any) -> ProfileService:
    return ProfileService(Bus(nc), await ProfileStore.open(Bus(nc)), **kw)


async def drain(nc: NATS, *services: ProfileService, timeout: float = 30) -> None:
    """Run the services until both durable consumers have nothing pending or unacknowledged."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    js = nc.jetstream()
    try:
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.sleep(0.2)
                idle = True
                for stream in ("ACTIVITY", "CRM"):
                    info = await js.consumer_info(stream, "profiles")
                    idle &= (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0
                if idle:
                    break
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def live_profiles(nc: NATS) -> dict[str, dict[str, Any]]:
    return await (await ProfileStore.open(Bus(nc))).read_all()


@pytest.fixture
async def second(nats_url: str) -> AsyncIterator[NATS]:
    nc = await connect(nats_url, "replica-2", timeout=5)
    yield nc
    await nc.close()


async def test_a_scripted_history_is_projected_into_the_profile(fresh: NATS) -> None:
    await publish(fresh, script())
    await drain(fresh, await service(fresh))
    profile = await read_profile(await ProfileStore.open(Bus(fresh)), "u-1")
    assert profile is not None
    assert profile.counts["simulator_used"] == 2 and profile.counts["consent_updated"] == 2
    assert list(profile.held) == ["loan-car"]
    assert profile.simulators["car_loan"].last_parameters["amount"] == 18000
    assert profile.consent.marketing is True
    assert profile.anonymous_ids == ["anon-7"]
    assert profile.positions["activity"].max == len(script())


async def test_a_batch_stored_but_not_acknowledged_is_redelivered_and_changes_nothing(
    fresh: NATS,
) -> None:
    events = history(200)
    await publish(fresh, events)
    svc = await service(fresh)
    consumer = DurableConsumer(fresh.jetstream(), "ACTIVITY", "profiles", ack_wait=1.0)
    await consumer.start()
    first = await consumer.fetch(120, timeout=2)
    assert len(first) == 120
    await svc._store("activity", first, floor=0)  # stored, then "crashed" before the ack
    await consumer.stop()
    await asyncio.sleep(1.2)  # ack_wait passes: the 120 come again
    await drain(fresh, await service(fresh))
    live = await live_profiles(fresh)
    expected = expected_counts(events)
    assert {t: Counter(p["counts"]) for t, p in live.items()} == expected
    assert svc.stats.applied == 120


async def test_two_replicas_on_one_consumer_give_the_profiles_one_gives(
    fresh: NATS, second: NATS
) -> None:
    events = history(3000, users=25)  # few users: replicas constantly touch the same profiles
    await publish(fresh, events)
    a, b = await service(fresh, batch=50), await service(second, batch=50)
    await drain(fresh, a, b)
    assert a.stats.applied > 0 and b.stats.applied > 0, "both replicas must have worked"
    live = await live_profiles(fresh)
    assert {t: Counter(p["counts"]) for t, p in live.items()} == expected_counts(events)
    rebuilt = await rebuild(Bus(fresh))
    assert {t: content(p) for t, p in live.items()} == {
        t: content(p) for t, p in rebuilt.profiles.items()
    }
    for p in live.values():
        Profile.model_validate(p)


async def test_replay_equals_the_live_projection_and_single_user_replay_too(fresh: NATS) -> None:
    events = history(1500)
    crm = event(
        "crm_contact_logged",
        user_id="user-3",
        item_id="mort-fixed",
        properties={"channel": "phone", "outcome": "declined"},
    )
    await publish(fresh, events)
    await Publisher(fresh).publish([Outgoing.event(parse_event(crm))])
    await drain(fresh, await service(fresh))
    live = await ProfileStore.open(Bus(fresh))
    full = await rebuild(Bus(fresh))
    assert full.events == 1501 and full.refused == 0
    assert await verify(live, full.profiles, every_key=True) == []
    one = await rebuild(Bus(fresh), token="user-3")
    assert list(one.profiles) == ["user-3"]
    assert one.events == sum(1 for i in range(1500) if i % 40 == 3) + 1
    assert one.profiles["user-3"]["crm"]["mort-fixed"]["outcome"] == "declined"
    assert await verify(live, one.profiles, every_key=False) == []
    # A difference is reported: change one live profile behind the service's back.
    slot = (await live.load(["user-3"], create_keys=False))["user-3"]
    assert slot.profile is not None
    slot.profile["counts"]["page_viewed"] = 1
    await live.write([(slot, slot.profile)])
    diffs = await verify(live, full.profiles, every_key=True)
    assert [(d.token, d.fields) for d in diffs] == [("user-3", ["counts"])]


async def test_a_poison_event_is_dead_lettered_and_later_events_still_apply(fresh: NATS) -> None:
    js = fresh.jetstream()
    await publish(fresh, history(10))
    await js.publish(
        "activity.user-0.page_viewed", b"{this is not json", headers={"Nats-Msg-Id": "poison-1"}
    )
    await js.publish(
        "activity.user-0.item_viewed",
        orjson.dumps({"type": "item_viewed"}),
        headers={"Nats-Msg-Id": "poison-2"},
    )
    later = history(10)
    await publish(fresh, later)
    await drain(fresh, await service(fresh))
    assert await count(fresh, "DEADLETTER") == 2
    letters = await stored_deadletters(fresh)
    assert letters[0]["source"] == "profiles" and "JSON" in letters[0]["reason"]
    assert "time" in letters[1]["reason"]
    live = await live_profiles(fresh)
    assert sum(sum(p["counts"].values()) for p in live.values()) == 20


async def stored_deadletters(nc: NATS) -> list[dict[str, Any]]:
    from engine.bus.reader import read_all

    return [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "DEADLETTER")]


async def test_system_events_make_no_profile(fresh: NATS) -> None:
    await publish(fresh, [event("user_forgotten"), *history(5)])
    await drain(fresh, await service(fresh))
    assert "~system" not in await live_profiles(fresh)
    assert len(await stored(fresh)) == 6


async def test_profiles_api_is_for_internal_callers_only(fresh: NATS, nats_url: str) -> None:
    import httpx

    from engine.gateway import SITE_KEY_HEADER, create_app
    from engine.settings import GatewaySettings, SiteKey

    await publish(fresh, history(20, users=2))
    await drain(fresh, await service(fresh))
    settings = GatewaySettings(
        site_keys=(SiteKey(key="site-key-123"),), internal_tokens=("internal-secret",)
    )
    app = create_app(settings, nats_url, 5)
    svc, stop = await service(fresh), asyncio.Event()  # the gateway asks it: it holds the keys
    task = asyncio.create_task(svc.run(stop))
    await asyncio.wait_for(svc.ready.wait(), 10)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            ok = await c.get(
                "/v1/profiles/user-1", headers={"Authorization": "Bearer internal-secret"}
            )
            site = await c.get("/v1/profiles/user-1", headers={SITE_KEY_HEADER: "site-key-123"})
            wrong = await c.get("/v1/profiles/user-1", headers={"Authorization": "Bearer nope"})
            missing = await c.get(
                "/v1/profiles/nobody", headers={"Authorization": "Bearer internal-secret"}
            )
        stop.set()
        await task
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            down = await c.get(
                "/v1/profiles/user-1", headers={"Authorization": "Bearer internal-secret"}
            )
    assert ok.status_code == 200 and sum(ok.json()["counts"].values()) == 10
    assert (site.status_code, wrong.status_code, missing.status_code) == (401, 403, 404)
    assert down.status_code == 503 and down.headers["retry-after"] == "1"


async def test_the_service_survives_its_stream_being_recreated(fresh: NATS) -> None:
    svc = await service(fresh)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        await publish(fresh, history(10, users=2))
        async with asyncio.timeout(10):
            while svc.stats.applied < 10:
                await asyncio.sleep(0.05)
        js = fresh.jetstream()
        await js.delete_stream("ACTIVITY")  # its durable consumer goes with it
        from engine.bus import provision

        await provision(js)
        await publish(fresh, [event("page_viewed", user_id="after-recreate")])
        async with asyncio.timeout(20):
            while svc.stats.applied < 11:
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
    assert "after-recreate" in await live_profiles(fresh)


async def test_events_written_straight_to_the_bus_are_validated_and_must_match_their_subject(
    fresh: NATS,
) -> None:
    """The one decoder validates what services read against the event models and the subject:
    a CRM outcome outside the contract, and a payload about another user than its subject, are
    dead-lettered with the field and reason, and fold into no profile (before, the first was
    folded and the second was filed under the subject's user)."""
    js = fresh.jetstream()
    bad_outcome = event("crm_contact_logged", user_id="user-1")
    bad_outcome["properties"]["outcome"] = "maybe"
    await js.publish("crm.user-1.crm_contact_logged", orjson.dumps(bad_outcome))
    about_bob = event("item_viewed", user_id="bob")
    await js.publish("activity.alice.item_viewed", orjson.dumps(about_bob))
    good = event("item_viewed", user_id="carol")
    await publish(fresh, [good])
    await drain(fresh, await service(fresh))
    reasons = sorted(d["reason"] for d in await stored_deadletters(fresh))
    assert len(reasons) == 2
    assert reasons[0].startswith("properties.outcome:")
    assert reasons[1] == (
        "subject: stored on activity.alice.item_viewed, but the event belongs on "
        "activity.bob.item_viewed"
    )
    profiles = await live_profiles(fresh)
    assert set(profiles) == {"carol"}


async def test_a_rebuild_refuses_what_the_live_service_refuses(fresh: NATS) -> None:
    """Replay reads through the same decoder as the live projection, so a payload filed under
    another user's subject is refused by both rather than rebuilt into a profile nobody served."""
    about_bob = event("item_viewed", user_id="bob")
    await fresh.jetstream().publish("activity.alice.item_viewed", orjson.dumps(about_bob))
    await publish(fresh, [event("item_viewed", user_id="carol")])
    rebuilt = await rebuild(Bus(fresh))
    assert set(rebuilt.profiles) == {"carol"} and rebuilt.refused == 1

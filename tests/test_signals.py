"""Interest signals and the CRM loop, against a real nats-server, through the public client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.reader import read_all
from engine.profiles.store import ProfileStore
from engine.recommender.slots import SignalDef
from engine.services.signals import SignalsService
from engine.signals import Detector
from nerve_client.client import CrmContact, InterestSignal, NerveClient
from nerve_client.events import parse_event
from tests.conftest import event
from tests.reco_world import publish_world
from tests.test_recommender_service import items, running, until

LOAN = SignalDef.model_validate(
    {
        "window_days": 7,
        "cooldown_days": 14,
        "conditions": [
            {"type": "simulator_used", "simulator": ["loan"], "min_count": 2},
            {"type": "item_viewed", "category": ["loans"], "min_count": 1},
        ],
    }
)
NOW = datetime.now(UTC)


def act(
    user: str, etype: str, item: str | None = None, at: datetime | None = None, **props: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {"user_id": user, "properties": props, "time": (at or NOW).isoformat()}
    if item is not None:
        fields["item_id"] = item
    return event(etype, **fields)


def consent(user: str, marketing: bool = True) -> dict[str, Any]:
    return act(user, "consent_updated", analytics=True, personalization=True, marketing=marketing)


def simulate(user: str, at: datetime | None = None) -> dict[str, Any]:
    return act(
        user, "simulator_used", "loan-personal", at, simulator="loan", amount=9000, term_months=36
    )


def view(user: str, at: datetime | None = None) -> dict[str, Any]:
    return act(user, "item_viewed", "loan-personal", at, category="loans")


def test_detector_windows_and_evidence() -> None:
    d = Detector({"loan": LOAN})
    day = timedelta(days=1)
    seq = 0

    def feed(e: dict[str, Any]) -> list[Any]:
        nonlocal seq
        seq += 1
        return d.observe("ann", e, "ACTIVITY", seq)

    assert feed(simulate("ann", NOW - 10 * day)) == []
    assert feed(view("ann", NOW - 9 * day)) == []
    assert feed(simulate("ann", NOW)) == []  # the first simulation fell out of the window
    fired = feed(simulate("ann", NOW + timedelta(minutes=1)))
    assert fired == []  # two simulations, but the view is 9 days old
    hit = feed(view("ann", NOW + timedelta(minutes=2)))
    assert len(hit) == 1 and hit[0].topic == "loan"
    assert [e.seq for e in hit[0].evidence] == [3, 4, 5]
    assert hit[0].score == pytest.approx(1.0)


async def send(nc: NATS, *events: dict[str, Any]) -> None:
    await Publisher(nc).publish_events([parse_event(e) for e in events])


@contextlib.asynccontextmanager
async def signals(nc: NATS, **defs: SignalDef) -> AsyncIterator[SignalsService]:
    bus = Bus(nc)
    service = SignalsService(bus, defs or {"loan": LOAN}, await ProfileStore.open(bus))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def stored_signals(nc: NATS) -> list[dict[str, Any]]:
    return [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "SIGNALS")]


async def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_one_signal_with_its_evidence_then_cooldown_and_restart(fresh: NATS) -> None:
    nc = fresh
    async with signals(nc) as svc:
        await send(nc, consent("bea"), view("bea"), simulate("bea"))
        await asyncio.sleep(0.3)
        assert await stored_signals(nc) == []  # one simulation: below the threshold
        deciding = simulate("bea")
        await send(nc, deciding)
        await wait_until(lambda: _count(nc, 1))
        [signal] = await stored_signals(nc)
        assert parse_event(signal).type == "interest_signal"
        props = signal["properties"]
        assert signal["user_id"] == "bea" and props["topic"] == "loan"
        ids = [e["event_id"] for e in props["evidence"]]
        assert deciding["id"] in ids and len(ids) == 3
        assert props["consent"]["marketing"] is True and props["offer"] == "loan-personal"
        await send(nc, simulate("bea"), view("bea"))  # still interested, inside the cooldown
        await asyncio.sleep(0.5)
        assert svc.stats.cooled >= 1
    async with signals(nc) as again:  # a restart replays the window: nothing new
        await asyncio.sleep(1.0)
        assert again.stats.firings >= 1 and again.stats.published == 0
    assert len(await stored_signals(nc)) == 1


async def _count(nc: NATS, n: int) -> bool:
    return len(await stored_signals(nc)) >= n


async def test_no_signal_without_marketing_consent_or_for_anonymous(fresh: NATS) -> None:
    nc = fresh
    async with signals(nc) as svc:
        await send(
            nc, consent("cal", marketing=False), view("cal"), simulate("cal"), simulate("cal")
        )
        anon = [
            dict(e, user_id=None, anonymous_id="visitor-9")
            for e in (view("x"), simulate("x"), simulate("x"))
        ]
        for e in anon:
            e.pop("user_id")
        await send(nc, *anon)
        await wait_until(lambda: _true(svc.stats.firings >= 2))
        await asyncio.sleep(0.3)
        assert svc.stats.no_consent >= 1 and svc.stats.published == 0
    assert await stored_signals(nc) == []


async def _true(value: bool) -> bool:
    return value


async def test_two_replicas_of_the_same_users_publish_once(fresh: NATS) -> None:
    nc = fresh
    async with signals(nc) as a, signals(nc) as b:  # both think they own every user
        await send(nc, consent("dan"), view("dan"), simulate("dan"), simulate("dan"))
        await wait_until(lambda: _true(a.stats.firings >= 1 and b.stats.firings >= 1))
        await asyncio.sleep(0.5)
    assert len(await stored_signals(nc)) == 1


async def test_a_replica_publishes_every_users_signal_even_when_expecting_a_second(
    fresh: NATS,
) -> None:
    """Before: replicas split users by partition lease, and a firing whose partition had no
    holder (a dead replica's lease not yet expired; here: half the partitions, left for a
    second replica that never came) was published by nobody. Every replica now tries every
    firing; the cooldown compare-and-set stores each once."""
    nc = fresh
    people = [f"pat{i}" for i in range(6)]
    bus = Bus(nc)
    service = SignalsService(bus, {"loan": LOAN}, await ProfileStore.open(bus), replicas=2)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        for u in people:
            await send(nc, consent(u), view(u), simulate(u), simulate(u))
        await wait_until(lambda: _count(nc, len(people)))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sorted(s["user_id"] for s in await stored_signals(nc)) == sorted(people)


async def test_client_resumes_and_a_declined_contact_changes_the_offers(
    fresh: NATS, nats_url: str
) -> None:
    nc = fresh
    await publish_world(nc)
    async with signals(nc), running(nc):
        await send(nc, consent("eli"), view("eli"), simulate("eli"), simulate("eli"))
        await until(nc, "eli", "home", lambda m: items(m)[0] == "loan-personal")
        await send(nc, consent("fox"), view("fox"), simulate("fox"), simulate("fox"))
        client = await NerveClient.connect(nats_url)
        got: list[InterestSignal] = []
        async for signal in client.interest_signals(topic="loan", durable="crm-test"):
            got.append(signal)
            break  # leaving the loop hands this signal back
        await client.close()
        client = await NerveClient.connect(nats_url)
        async for signal in client.interest_signals(topic="loan", durable="crm-test"):
            got.append(signal)
            if len(got) == 3:
                break
        assert got[1].id == got[0].id  # handed back, delivered again first
        assert {s.user_id for s in got} == {"eli", "fox"}
        eli = next(s for s in got if s.user_id == "eli")
        await client.publish(
            CrmContact(
                user_id="eli",
                offer="loan-personal",
                channel="phone",
                outcome="declined",
                signal_id=eli.id,
            )
        )
        with pytest.raises(Exception, match="outcome"):
            await client.publish(
                {
                    **CrmContact(
                        user_id="eli", offer="x", channel="phone", outcome="declined"
                    ).to_event(),
                    "properties": {"channel": "phone", "outcome": "maybe"},
                }
            )
        await client.close()
        after = await until(nc, "eli", "home", lambda m: "loan-personal" not in items(m))
        assert after["properties"]["crm_seq"] >= 1


async def test_reference_crm_stores_leads_and_logs_outcomes_once(
    fresh: NATS, nats_url: str, tmp_path: Any
) -> None:
    from engine.crm_demo import leads, run

    nc = fresh
    async with signals(nc):
        await send(nc, consent("gil"), view("gil"), simulate("gil"), simulate("gil"))
        await wait_until(lambda: _count(nc, 1))
    db = tmp_path / "crm.sqlite"
    lines: list[str] = []
    assert await asyncio.wait_for(run(nats_url, db, "crm-ref", lines.append, limit=1), 10) == 1
    [lead] = leads(db)
    assert lead[1] == "gil" and lead[2] == "loan" and lead[3] == "loan-personal"
    assert lead[6] in ("interested", "declined", "converted") and "gil" in lines[0]
    contacts = [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "CRM")]
    assert [(c["user_id"], c["properties"]["outcome"]) for c in contacts] == [("gil", lead[6])]
    [signal] = await stored_signals(nc)
    assert contacts[0]["properties"]["signal_id"] == signal["id"]
    # the same signal again (another consumer name): nothing new is logged
    await asyncio.wait_for(run(nats_url, db, "crm-ref-2", lines.append, limit=1), 10)
    assert len(leads(db)) == 1
    assert len(await read_all(nc.jetstream(), "CRM")) == 1


async def test_unreadable_messages_are_dead_lettered_once_not_on_every_replay(
    fresh: NATS,
) -> None:
    """Before, the signals service skipped what it could not read and told nobody. Now what
    arrives while it runs is dead-lettered (source signals) and the users behind it still get
    their signals; a restart, which re-reads the window, does not dead-letter it again."""
    nc = fresh
    js = nc.jetstream()
    await js.publish("activity.old.item_viewed", b"stored before the service started")
    async with signals(nc) as svc:
        await js.publish("activity.x.item_viewed", b"\x00 not json")
        await js.publish("crm.y.crm_contact_logged", b"[]")
        await send(nc, consent("cai"), view("cai"), simulate("cai"), simulate("cai"))
        await wait_until(lambda: _count(nc, 1))
        await wait_until(lambda: _true(svc.stats.deadlettered == 2))
        assert svc.stats.refused == 3
    async with signals(nc) as again:
        await asyncio.sleep(0.5)
        assert again.stats.refused == 3 and again.stats.deadlettered == 0
    dead = [orjson.loads(d) for _, _, d in await read_all(js, "DEADLETTER")]
    origins = sorted(d["origin"].split("#")[0] for d in dead if d["source"] == "signals")
    assert origins == ["ACTIVITY", "CRM"]

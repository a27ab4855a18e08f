"""`nerve forget`: no trace of the user through the API, nor in the server's files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.broker import EmbeddedBroker
from engine.bus import Bus, Outgoing, connect
from engine.profiles.erasure import forget
from engine.profiles.reading import read_profile
from engine.profiles.store import ProfileStore
from engine.services.warehouse import WarehouseService
from engine.settings import BrokerSettings
from nerve_client.errors import FieldError
from nerve_client.events import DeadLetter, parse_event
from nerve_client.subjects import reco_subject, signal_subject, user_token
from tests.conftest import count, event, stored
from tests.test_profiles_service import drain, history, service
from tests.test_warehouse import run_until
from training import load_history

USER = "forget-me-7f3a@example.com"
ANON = "anon-forget-91c2"
SECRET = "property-only-this-user-has-5d1e"  # payload bytes to search for


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A server of its own: its store directory is searched byte by byte."""
    b = EmbeddedBroker(BrokerSettings(data_dir=tmp_path_factory.mktemp("forget")))
    b.start()
    yield b
    b.stop()


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {n!r}" for n in needles if n in data]
    return hits


async def test_forget_leaves_no_trace_in_streams_buckets_or_files(
    own_broker: EmbeddedBroker,
) -> None:
    assert own_broker.url
    nc: NATS = await connect(own_broker.admin_url, "forget-test")
    try:
        bus = Bus(nc)
        await bus.provision()
        pub = bus.publisher
        mine = [
            event("page_viewed", user_id=None, anonymous_id=ANON),
            event("user_identified", user_id=USER, anonymous_id=ANON),
            event("search_performed", user_id=USER, properties={"query": SECRET}),
            event(
                "simulator_used",
                user_id=USER,
                properties={"simulator": "loan", "amount": 7777, "term_months": 12},
            ),
            event(
                "crm_contact_logged",
                user_id=USER,
                item_id="loan-personal",
                properties={"channel": "phone", "outcome": "interested"},
            ),
        ]
        others = history(50)
        await pub.publish_events([parse_event(e) for e in [*others, *mine]])
        token = user_token(USER)
        await pub.publish(
            [
                Outgoing(
                    reco_subject(token, "home"), orjson.dumps({"user": USER, "q": SECRET}), "r-1"
                ),
                Outgoing(signal_subject("loan", token), orjson.dumps({"user": USER}), "s-1"),
            ]
        )
        bad = orjson.dumps({"type": "nope", "user_id": USER, "x": SECRET})
        await pub.deadletter(
            [
                DeadLetter.build(
                    "gateway",
                    bad,
                    [FieldError("type", "unknown")],
                    parse_event(event()).time,
                    "test",
                )
            ]
        )
        await drain(nc, await service(nc))
        assert (await read_profile(await ProfileStore.open(bus), USER)) is not None
        warehouse = own_broker.data_dir / "warehouse"
        await run_until(
            WarehouseService(bus, warehouse, flush_seconds=0.1),
            (await nc.jetstream().stream_info("ACTIVITY")).state.last_seq,
        )
        assert token in load_history("warehouse", data_dir=own_broker.data_dir)["user"].values
        store = own_broker.data_dir / "jetstream"
        needles = [USER.encode(), token.encode(), ANON.encode(), SECRET.encode()]
        await asyncio.sleep(1.5)  # let the server write its blocks
        assert files_containing(store, needles), "the search must see the data before erasure"

        report = await forget(bus, token, warehouse)

        assert report.erased["ACTIVITY"] == 4 and report.erased["CRM"] == 1
        assert report.erased["RECOMMENDATIONS"] == 1 and report.erased["SIGNALS"] == 1
        assert report.erased["DEADLETTER"] == 1 and report.erased["profiles"] >= 1
        assert report.erased["warehouse rows"] == 4  # as in ACTIVITY: the anonymous visit too
        rows = load_history("warehouse", data_dir=own_broker.data_dir)
        assert len(rows) == 50 and token not in rows["user"].values
        assert await read_profile(await ProfileStore.open(bus), USER) is None
        assert await read_profile(await ProfileStore.open(bus), ANON, anonymous=True) is None
        remaining = await stored(nc)
        assert all(e.user_id != USER and e.anonymous_id != ANON for e in remaining)
        assert len(remaining) == 50 + 1  # the others, and the user_forgotten event
        forgotten = remaining[-1]
        assert forgotten.type == "user_forgotten"
        assert (
            USER.encode() not in forgotten.to_json() and token.encode() not in forgotten.to_json()
        )
        assert await count(nc, "CRM") == 0
        # A replay afterwards does not bring the user back.
        from engine.profiles.replay import rebuild

        rebuilt = await rebuild(bus)
        assert token not in rebuilt.profiles and user_token(None, ANON) not in rebuilt.profiles
    finally:
        await nc.close()
    # On disk (store and warehouse): nothing, also after the server has flushed and restarted.
    settings = own_broker.settings
    own_broker.stop()
    assert files_containing(own_broker.data_dir, needles) == []
    restarted = EmbeddedBroker(settings)
    restarted.start()
    restarted.stop()
    assert files_containing(own_broker.data_dir, needles) == []


async def test_a_forgotten_user_stays_forgotten(fresh: NATS, nats_url: str) -> None:
    """Before, a request for a forgotten user's recommendations stored a new list under their
    id seconds after the erasure, and their next event made a new profile. The tombstone
    written by `nerve forget` stops both; other users are served as before."""
    from nerve_client.subjects import REQUEST_SUBJECT
    from tests.reco_world import publish_world
    from tests.test_recommender_service import act, lists, running, send, until

    nc = fresh
    bus = Bus(nc)
    await publish_world(nc)
    gone, token = "gone-4b1d@example.com", user_token("gone-4b1d@example.com")
    async with running(nc):
        await send(nc, act(gone, "item_viewed", "card-gold", category="cards"))
        await until(nc, gone, "home", lambda m: True)
        await forget(bus, token)
        assert await lists(nc, gone, "home") == []
        ask = orjson.dumps({"user_id": gone, "slot": "home"})
        reply = orjson.loads((await nc.request(REQUEST_SUBJECT, ask, timeout=5)).data)
        assert reply["error"]["status"] == 410 and reply["error"]["field"] == "user_id"
        await send(nc, act(gone, "item_viewed", "loan-personal", category="loans"))
        await send(nc, act("stays", "item_viewed", "card-gold", category="cards"))
        await until(nc, "stays", "home", lambda m: True)
        assert await lists(nc, gone, "home") == []
    await drain(nc, await service(nc))
    assert await read_profile(await ProfileStore.open(bus), gone) is None
    assert await read_profile(await ProfileStore.open(bus), "stays") is not None
    # ... and the gateway refuses the user's lists and events (its tombstones load on start)
    import httpx

    from engine.gateway import create_app
    from engine.settings import GatewaySettings

    app = create_app(GatewaySettings(internal_tokens=("t0ken-internal",)), nats_url, 5)
    auth = {"Authorization": "Bearer t0ken-internal"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            lists_reply = await http.get(f"/v1/recommendations/{gone}", headers=auth)
            posted = await http.post("/v1/events", json=act(gone, "page_viewed"), headers=auth)
    assert lists_reply.status_code == 410
    assert posted.status_code == 422
    assert "forgotten" in posted.json()["rejected"][0]["errors"][0]["reason"]
    assert await lists(nc, gone, "home") == []

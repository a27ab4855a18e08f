"""The recommender service against a real nats-server: scripted users, hot reload, replicas."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.consumer import Delivery
from engine.bus.reader import read_all
from engine.profiles.store import ProfileStore
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Serving
from engine.replicas import owner
from engine.services.recommender import RecommenderService
from models import Interactions, make
from nerve_client.events import parse_event
from nerve_client.subjects import REQUEST_SUBJECT, user_token
from tests.conftest import event
from tests.reco_world import publish_model, publish_world, slots_config
from tests.test_robust import ops_running


async def send(nc: NATS, *events: dict[str, Any]) -> None:
    await Publisher(nc).publish_events([parse_event(e) for e in events])


def act(user: str, etype: str, item: str | None = None, **props: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"user_id": user, "properties": props}
    if item is not None:
        fields["item_id"] = item
    return event(etype, **fields)


@contextlib.asynccontextmanager
async def running(nc: NATS, **kw: Any) -> AsyncIterator[RecommenderService]:
    bus = Bus(nc)
    service = RecommenderService(
        bus, Serving(slots_config(), ItemCatalog()), await ProfileStore.open(bus), **kw
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def lists(nc: NATS, user: str, slot: str) -> list[dict[str, Any]]:
    """Every stored recommendations_updated of (user, slot), oldest first."""
    subject = f"reco.{user_token(user)}.{slot}"
    return [
        orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "RECOMMENDATIONS", subject)
    ]


async def until(nc: NATS, user: str, slot: str, check: Any, timeout: float = 10) -> dict[str, Any]:
    """Wait for the newest list of (user, slot) to satisfy `check`; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await lists(nc, user, slot)
        if found and check(found[-1]):
            return found[-1]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{user}/{slot}: newest is {found[-1] if found else None}")
        await asyncio.sleep(0.05)


def items(message: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in message["properties"]["items"]]


@pytest.fixture
async def world(fresh: NATS) -> dict[str, str]:
    return await publish_world(fresh)


async def test_scripted_user_from_cold_start_to_loan_offer(
    fresh: NATS, world: dict[str, str]
) -> None:
    nc = fresh
    async with running(nc):
        await send(nc, act("ana", "page_viewed"))
        await asyncio.sleep(0.5)
        assert await lists(nc, "ana", "home") == []  # a page view alone recomputes nothing
        await send(nc, act("ana", "item_viewed", "card-gold", category="cards"))
        first = await until(nc, "ana", "home", lambda m: True)
        assert parse_event(first).type == "recommendations_updated"  # a valid event
        props = first["properties"]
        assert props["model_version"] == world["home"] and props["activity_seq"] >= 2
        assert items(first)[0] != "loan-personal"
        await send(
            nc,
            act(
                "ana",
                "simulator_used",
                "loan-personal",
                simulator="loan",
                amount=9000,
                term_months=36,
            ),
        )
        top = await until(nc, "ana", "home", lambda m: items(m)[0] == "loan-personal")
        assert "simulated" in top["properties"]["items"][0]["reason"]
        similar = await until(
            nc, "ana", "similar", lambda m: m["properties"].get("anchor") == "loan-personal"
        )
        assert items(similar)[0] == "loan-car"
        # buying it removes it from every slot
        await send(nc, act("ana", "item_purchased", "loan-personal", value=9000))
        for slot in ("home", "similar", "trending"):
            await until(nc, "ana", slot, lambda m: "loan-personal" not in items(m))
        # nothing is published twice in a row: every stored list differs from the one before
        for slot in ("home", "similar", "trending"):
            stored = await lists(nc, "ana", slot)
            sigs = [[(i["item_id"], i["reason"]) for i in m["properties"]["items"]] for m in stored]
            assert all(a != b for a, b in itertools.pairwise(sigs)), slot
            seqs = [m["properties"]["activity_seq"] for m in stored]
            assert seqs == sorted(seqs)


async def test_request_reply_cold_user_and_errors(fresh: NATS, world: dict[str, str]) -> None:
    nc = fresh
    async with running(nc) as service:
        reply = await nc.request(
            REQUEST_SUBJECT,
            orjson.dumps({"anonymous_id": "new-visitor", "slot": "home", "k": 2}),
            5,
        )
        answer = orjson.loads(reply.data)
        props = answer["properties"]
        assert props["fallback"] == "cold_start" and props["served_by"] == "trending"
        assert len(props["items"]) == 2 and props["model_version"] == world["trending"]
        # it was stored, so its id can be explained and attributed
        subject = f"reco.{user_token(anonymous_id='new-visitor')}.home"
        found = await read_all(nc.jetstream(), "RECOMMENDATIONS", subject)
        assert [orjson.loads(d)["id"] for _, _, d in found] == [answer["id"]]
        # asking again returns the same stored list, not a new one
        again = orjson.loads(
            (
                await nc.request(
                    REQUEST_SUBJECT,
                    orjson.dumps({"anonymous_id": "new-visitor", "slot": "home"}),
                    5,
                )
            ).data
        )
        assert again["id"] == answer["id"] and len(again["properties"]["items"]) == 3
        for body, field in [
            ({"user_id": "x", "slot": "nowhere"}, "slot"),
            ({"slot": "home"}, "user_id"),
            ({"user_id": "x", "slot": "home", "colour": 1}, "colour"),
        ]:
            err = orjson.loads((await nc.request(REQUEST_SUBJECT, orjson.dumps(body), 5)).data)
            assert err["error"]["field"] == field, (body, err)
        # a k above the slot's maximum serves the maximum and says so, instead of failing
        big = {"anonymous_id": "new-visitor", "slot": "home", "k": 50}
        served = orjson.loads((await nc.request(REQUEST_SUBJECT, orjson.dumps(big), 5)).data)
        assert len(served["properties"]["items"]) == 3, served
        assert "served its maximum, 3" in served["warning"]
        assert service.stats.requests >= 2


async def test_frequency_cap_and_dismissal_through_the_log(
    fresh: NATS, world: dict[str, str]
) -> None:
    nc = fresh
    async with running(nc):
        await send(
            nc,
            act(
                "bo", "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
            ),
        )
        first = await until(nc, "bo", "home", lambda m: items(m)[0] == "loan-personal")
        rid = first["properties"]["recommendation_id"]
        shown = {
            "recommendation_id": rid,
            "slot": "home",
            "items": [{"item_id": "loan-personal", "position": 0}],
        }
        await send(
            nc,
            act("bo", "recommendation_shown", **shown),
            act("bo", "recommendation_shown", **shown),
        )
        await until(nc, "bo", "home", lambda m: "loan-personal" not in items(m))
        await send(
            nc,
            act(
                "cy", "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
            ),
        )
        await until(nc, "cy", "home", lambda m: items(m)[0] == "loan-personal")
        await send(nc, act("cy", "offer_dismissed", "loan-personal", reason="not_interested"))
        await until(nc, "cy", "home", lambda m: "loan-personal" not in items(m))


async def test_hot_reload_without_a_failed_request(fresh: NATS, world: dict[str, str]) -> None:
    nc = fresh
    async with running(nc) as service:
        failures: list[str] = []
        versions: list[str] = []
        stop = asyncio.Event()

        async def hammer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"anonymous_id": f"v{n}-{i % 20}", "slot": "trending"}
                try:
                    reply = orjson.loads(
                        (await nc.request(REQUEST_SUBJECT, orjson.dumps(body), 2)).data
                    )
                    if "error" in reply:
                        failures.append(str(reply["error"]))
                    else:
                        versions.append(reply["properties"]["model_version"])
                except Exception as exc:
                    failures.append(repr(exc))

        tasks = [asyncio.create_task(hammer(n)) for n in range(4)]
        await asyncio.sleep(0.5)
        new = await publish_model(nc, make("popular").fit(interactions_funds()), "trending")
        for _ in range(100):
            if service.serving.models["trending"].version == new:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert failures == []
        assert world["trending"] in versions and new in versions
        switch = versions.index(new)
        assert set(versions[switch:]) == {new}  # once switched, never back
        assert service.stats.reloads >= 4


async def test_two_replicas_split_users_without_duplicates_or_disorder(
    fresh: NATS, world: dict[str, str]
) -> None:
    nc = fresh
    users = [f"r-{i}" for i in range(12)]
    assert {owner(user_token(u), 2) for u in users} == {0, 1}
    async with running(nc, replicas=2, replica=0) as a, running(nc, replicas=2, replica=1) as b:
        script = []
        for round_ in range(4):
            for u in users:
                item = ["card-gold", "savings-plus", "loan-personal", "fund-world"][round_]
                script.append(act(u, "item_viewed", item, category="x"))
        await send(nc, *script)
        for u in users:
            await until(nc, u, "similar", lambda m: m["properties"].get("anchor") == "fund-world")
        assert a.stats.published > 0 and b.stats.published > 0
        assert a.stats.conflicts == 0 and b.stats.conflicts == 0
    for u in users:
        for slot in ("home", "similar", "trending"):
            stored = await lists(nc, u, slot)
            seqs = [m["properties"]["activity_seq"] for m in stored]
            assert seqs == sorted(set(seqs)), (u, slot, seqs)  # strictly increasing: no disorder
            sigs = [
                tuple(items(m)) + tuple(i["reason"] for i in m["properties"]["items"])
                for m in stored
            ]
            assert all(x != y for x, y in itertools.pairwise(sigs)), (u, slot)


async def test_a_stale_view_loses_the_compare_and_set(fresh: NATS, world: dict[str, str]) -> None:
    """Two services that both believe they own every user (a bad deployment): the per-subject
    compare-and-set still keeps each subject free of repeats and in order."""
    nc = fresh
    async with running(nc, durable="left") as a, running(nc, durable="right") as b:
        for item in ["card-gold", "savings-plus", "loan-personal"]:
            await send(nc, act("dee", "item_viewed", item, category="x"))
            await until(
                nc, "dee", "similar", lambda m, item=item: m["properties"].get("anchor") == item
            )
            await asyncio.sleep(0.3)
    assert a.stats.conflicts + b.stats.conflicts > 0
    stored = await lists(nc, "dee", "similar")
    assert [m["properties"]["anchor"] for m in stored] == [
        "card-gold",
        "savings-plus",
        "loan-personal",
    ]


async def test_gateway_serves_stored_then_asks_and_refuses_bad_input(
    fresh: NATS, nats_url: str, world: dict[str, str]
) -> None:
    import httpx
    from pydantic import SecretStr

    from engine.gateway import SITE_KEY_HEADER, create_app
    from engine.settings import GatewaySettings, SiteKey
    from nerve_client.identity import mint_identity_token

    nc = fresh
    site = SiteKey(key="site-key-1", identity_secret=SecretStr("recommender-test-secret"))
    app = create_app(GatewaySettings(site_keys=(site,), internal_tokens=("secret",)), nats_url, 5)

    def signed_in(user: str) -> dict[str, str]:  # a known user's lists need their token
        tok = mint_identity_token("recommender-test-secret", user, site_key="site-key-1")
        return {SITE_KEY_HEADER: "site-key-1", "X-Nerve-Identity": tok}

    headers = signed_in("eve")
    async with running(nc), ops_running(Bus(nc)), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            r = await http.get("/v1/recommendations/eve?slot=home", headers=headers)
            assert r.status_code == 200 and r.headers["x-nerve-source"] == "computed"
            first = r.json()
            assert first["properties"]["fallback"] == "cold_start"
            r = await http.get("/v1/recommendations/eve?slot=home&k=2", headers=headers)
            assert r.headers["x-nerve-source"] == "stored" and r.json()["id"] == first["id"]
            assert len(r.json()["properties"]["items"]) == 2
            # the user acts: the recommender stores a new list, the gateway serves it
            await send(
                nc,
                act(
                    "eve",
                    "simulator_used",
                    "loan-personal",
                    simulator="loan",
                    amount=1,
                    term_months=12,
                ),
            )
            await until(nc, "eve", "home", lambda m: items(m)[0] == "loan-personal")
            r = await http.get("/v1/recommendations/eve", headers=headers)
            assert r.json()["properties"]["items"][0]["item_id"] == "loan-personal"
            # a new model: stored lists are no longer fresh, so the gateway asks
            await publish_model(nc, make("popular").fit(interactions_funds()), "trending")
            await asyncio.sleep(0.3)
            r = await http.get("/v1/recommendations/zed?slot=trending", headers=signed_in("zed"))
            assert r.headers["x-nerve-source"] == "computed"
            assert [
                (
                    await http.get("/v1/recommendations/eve?slot=nowhere", headers=headers)
                ).status_code,
                (await http.get("/v1/recommendations/eve?slot=a.b", headers=headers)).status_code,
                (await http.get("/v1/recommendations/eve")).status_code,
                (
                    await http.get("/v1/recommendations/eve", headers={SITE_KEY_HEADER: "x"})
                ).status_code,
            ] == [404, 422, 401, 403]
            # k above the slot's maximum (3): the maximum, with a warning the widget can read
            r = await http.get("/v1/recommendations/eve?slot=home&k=9", headers=headers)
            assert r.status_code == 200 and len(r.json()["properties"]["items"]) == 3
            assert "served its maximum, 3" in r.headers["x-nerve-warning"]
            assert "warning" not in r.json()
            # impressions and clicks -> CTR per slot and model version
            rid = first["properties"]["recommendation_id"]
            shown = {
                "recommendation_id": rid,
                "slot": "home",
                "items": [{"item_id": "card-gold", "position": 0}],
            }
            await send(
                nc,
                act("eve", "recommendation_shown", **shown),
                act("eve", "recommendation_shown", **shown),
                act(
                    "eve",
                    "recommendation_clicked",
                    "card-gold",
                    recommendation_id=rid,
                    slot="home",
                    position=0,
                ),
            )
            assert (await http.get("/v1/stats", headers=headers)).status_code == 401
            r = await http.get("/v1/stats?hours=1", headers={"Authorization": "Bearer secret"})
            rows = {(x["slot"], x["model_version"]): x for x in r.json()["rows"]}
            row = rows[("home", world["trending"])]
            assert (row["impressions"], row["clicks"], row["ctr"]) == (2, 1, 0.5)


def interactions_funds() -> Interactions:
    return Interactions.from_triples(
        ["a", "a", "b", "c"], ["fund-bonds", "fund-world", "fund-bonds", "card-basic"]
    )


async def test_explain_reconstructs_a_recommendation(fresh: NATS, world: dict[str, str]) -> None:
    from engine.recommender.explain import NotFound, explain

    nc = fresh
    async with running(nc):
        await send(
            nc,
            act("fay", "item_viewed", "card-gold", category="cards"),
            act("fay", "item_purchased", "card-gold", value=200),
            act(
                "fay", "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
            ),
        )
        message = await until(nc, "fay", "home", lambda m: items(m)[0] == "loan-personal")
        await send(nc, act("fay", "item_viewed", "savings-plus", category="savings"))  # after it
        await asyncio.sleep(0.3)
    rid = message["id"]
    for user in ("fay", None):
        ex = await explain(Bus(nc), rid, slots_config(), user=user)
        assert ex.matches, ex.notes
        assert ex.stored["id"] == rid
        assert [e["type"] for e in ex.events] == ["item_viewed", "item_purchased", "simulator_used"]
        assert ex.card is not None and ex.card["version"] == world["home"]
        assert ex.outcome is not None and ("card-gold", "held") in ex.outcome.removed
    with pytest.raises(NotFound):
        await explain(Bus(nc), "0190d6c4-0000-7000-8000-000000000000", slots_config(), user="fay")


async def test_recomputes_when_the_stored_profile_is_ahead(
    fresh: NATS, world: dict[str, str]
) -> None:
    """The profiles service may store an event before the recommender sees it: the recommender
    then loads a profile that already holds the event, and must still publish the new list."""
    from engine.services.profiles import ProfileService

    nc = fresh
    async with running(nc):
        pass  # the durable consumer exists; the next events wait for it
    await send(
        nc,
        act("gus", "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12),
    )
    profiles = ProfileService(Bus(nc), await ProfileStore.open(Bus(nc)))
    stop = asyncio.Event()
    task = asyncio.create_task(profiles.run(stop))
    while profiles.stats.applied < 1:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    async with running(nc):
        top = await until(nc, "gus", "home", lambda m: True)
    assert items(top)[0] == "loan-personal"


async def test_a_json_array_on_activity_is_dead_lettered_and_the_stream_moves_on(
    fresh: NATS, world: dict[str, str]
) -> None:
    """A message that is JSON but not an object (an array, a string) goes to DEADLETTER with
    its reason (read through the one decoder, engine.bus.decode) instead of failing the batch
    forever; the events behind it still get their lists."""
    nc = fresh
    async with running(nc) as service:
        await nc.jetstream().publish("activity.x.item_viewed", b"[1, 2]")
        await nc.jetstream().publish("activity.y.item_viewed", b'"a string"')
        await send(nc, act("hal", "item_viewed", "card-gold", category="cards"))
        await until(nc, "hal", "home", lambda m: True)
        assert service.stats.deadlettered == 2
    dead = [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "DEADLETTER")]
    reasons = [e["errors"][0]["reason"] for e in dead if e["source"] == "recommender"]
    assert reasons == ["not a JSON object", "not a JSON object"]


async def test_non_json_and_misaddressed_messages_are_dead_lettered_while_others_update(
    fresh: NATS, world: dict[str, str]
) -> None:
    """Bytes that are not JSON, and a valid event stored under another user's subject, are
    dead-lettered with their reason; the lists of the users behind them keep updating."""
    nc = fresh
    misfiled = act("mallory", "item_viewed", "card-gold", category="cards")
    async with running(nc) as service:
        await nc.jetstream().publish("activity.x.item_viewed", b"\xff\xfenot json")
        victim = f"activity.{user_token('victim')}.item_viewed"
        await nc.jetstream().publish(victim, orjson.dumps(misfiled))
        await send(nc, act("ivy", "item_viewed", "card-gold", category="cards"))
        await until(nc, "ivy", "home", lambda m: True)
        assert service.stats.deadlettered == 2
    assert await lists(nc, "victim", "home") == []
    dead = [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "DEADLETTER")]
    reasons = [e["errors"][0]["reason"] for e in dead if e["source"] == "recommender"]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1].startswith("subject: stored on activity.")


class FailsOn(RecommenderService):
    """A recommender whose processing fails whenever a batch holds `marker` (fault
    injection: a message that reads well but cannot be processed, e.g. a model bug)."""

    marker = b"explodes-on-processing"

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        if any(self.marker in d.data for d in deliveries):
            raise RuntimeError("injected failure")
        await super().process(deliveries)


async def test_a_message_that_always_fails_is_dead_lettered_and_its_batch_stored(
    fresh: NATS, world: dict[str, str]
) -> None:
    """Before, a batch that kept failing was retried forever and every user waited; now it is
    split, the good events are processed, and the culprit is dead-lettered with its error."""
    nc = fresh
    bus = Bus(nc)
    service = FailsOn(bus, Serving(slots_config(), ItemCatalog()), await ProfileStore.open(bus))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        query = FailsOn.marker.decode()
        bad = event("search_performed", user_id="jon", properties={"query": query})
        await send(
            nc,
            bad,
            act("kim", "item_viewed", "card-gold", category="cards"),
        )
        await until(nc, "kim", "home", lambda m: True, timeout=20)
        deadline = asyncio.get_running_loop().time() + 20
        while service.stats.deadlettered < 1:
            assert asyncio.get_running_loop().time() < deadline, "never dead-lettered"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    dead = [orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "DEADLETTER")]
    mine = [e for e in dead if e["source"] == "recommender"]
    assert len(mine) == 1
    assert "injected failure" in mine[0]["reason"]
    assert FailsOn.marker.decode() in base64.b64decode(mine[0]["raw_b64"]).decode()

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.bus.reader import read_all
from engine.cloudevents import to_cloudevent
from engine.gateway import SITE_KEY_HEADER, GatewayState, create_app
from engine.gateway.live import LatestPerSlot
from engine.gateway.recommendations import sse_events
from engine.settings import GatewaySettings, SiteKey
from nerve_client.events import DeadLetter
from nerve_client.ids import uuid7
from nerve_client.subjects import reco_subject, user_token
from tests.conftest import count
from tests.conftest import event as known_event

KEY = "test-site-key"
HEADERS = {SITE_KEY_HEADER: KEY}


def event(etype: str = "page_viewed", **fields: Any) -> dict[str, Any]:
    """A valid event of an anonymous visitor (what a browser with only a site key may send;
    a `user_id` needs an identity token, see tests/test_identity.py)."""
    return known_event(etype, **{"user_id": None, "anonymous_id": "anon-1", **fields})


def make_app(nats_url: str, **settings: Any) -> FastAPI:
    keys = settings.pop("site_keys", (SiteKey(key=KEY),))
    return create_app(GatewaySettings(site_keys=keys, **settings), nats_url, 5)


@pytest.fixture
async def client(fresh: NATS, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(nats_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


def malformed(i: int) -> Any:
    """Ten kinds of bad event, chosen by i."""
    future = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    kinds: list[Any] = [
        event(type="no_such_type"),
        event(id="123"),
        event(time="yesterday"),
        event(anonymous_id=None),
        event("simulator_used", properties={"simulator": "loan", "amount": 0, "term_months": 1}),
        event("item_viewed", item_id=None),
        event("item_viewed", properties={"position": "first"}),
        event(time=future),
        "just a string",
        event("crm_contact_logged"),
    ]
    return kinds[(i // 10) % len(kinds)]


async def test_1000_events_with_100_malformed_end_as_900_and_100(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    batch: list[Any] = []
    for i in range(1000):
        batch.append(
            malformed(i) if i % 10 == 3 else event("item_viewed", anonymous_id=f"a{i % 37}")
        )
    valid = [e for i, e in enumerate(batch) if i % 10 != 3]
    for start in range(0, 1000, 100):
        r = await client.post("/v1/events", json=batch[start : start + 100], headers=HEADERS)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == 90 and len(body["rejected"]) == 10
        for rej in body["rejected"]:
            assert rej["index"] % 10 == 3
            assert rej["errors"] and all(e["reason"] for e in rej["errors"])
    assert await count(fresh, "ACTIVITY") == 900
    assert await count(fresh, "DEADLETTER") == 100
    records = [
        DeadLetter.model_validate_json(d)
        for _, _, d in await read_all(fresh.jetstream(), "DEADLETTER")
    ]
    assert all(r.reason and r.source == "gateway" for r in records)
    assert len({r.reason.split(":")[0] for r in records}) >= 8, "assorted reasons expected"
    assert orjson.loads(records[0].raw) == batch[3]
    # The 900 again: nothing new anywhere.
    for start in range(0, 900, 300):
        r = await client.post("/v1/events", json=valid[start : start + 300], headers=HEADERS)
        assert r.status_code == 202 and r.json()["duplicates"] == 300
    assert await count(fresh, "ACTIVITY") == 900
    assert await count(fresh, "DEADLETTER") == 100


async def test_a_single_bad_event_gets_422_with_field_and_reason(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/events",
        json=event("simulator_used", properties={"simulator": "loan", "amount": -1}),
        headers=HEADERS,
    )
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["rejected"][0]["errors"]}
    assert "properties.amount" in fields


async def test_gateway_assigns_ids_and_received_at(client: httpx.AsyncClient, fresh: NATS) -> None:
    data = event()
    del data["id"]
    r = await client.post("/v1/events", json=data, headers=HEADERS)
    assert r.status_code == 202
    (stored,) = [orjson.loads(d) for _, _, d in await read_all(fresh.jetstream(), "ACTIVITY")]
    assert stored["id"] == r.json()["ids"][0]
    assert stored["received_at"].endswith("Z")


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({SITE_KEY_HEADER: "wrong-key-123"}, 403)],
)
async def test_requests_without_a_valid_site_key_store_nothing(
    client: httpx.AsyncClient, fresh: NATS, headers: dict[str, str], status: int
) -> None:
    r = await client.post("/v1/events", json=[event(), event()], headers=headers)
    assert r.status_code == status
    assert await count(fresh, "ACTIVITY") == 0
    assert await count(fresh, "DEADLETTER") == 0


async def test_site_key_may_come_as_a_query_parameter_for_beacons(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    r = await client.post(
        f"/v1/events?site_key={KEY}",
        content=orjson.dumps([event()]),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202
    assert await count(fresh, "ACTIVITY") == 1


async def test_oversized_bodies_and_batches_get_413_and_store_nothing(
    fresh: NATS, nats_url: str
) -> None:
    app = make_app(nats_url, max_body_bytes=4096, max_batch=5)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            big = [event(properties={"page_type": "home", "title": "x" * 290}) for _ in range(20)]
            r = await c.post("/v1/events", json=big, headers=HEADERS)
            assert r.status_code == 413 and "exceeds" in r.json()["detail"]
            r = await c.post("/v1/events", json=[event() for _ in range(6)], headers=HEADERS)
            assert r.status_code == 413 and "batch limit" in r.json()["detail"]
    assert await count(fresh, "ACTIVITY") == 0


async def test_a_body_that_is_not_json_is_dead_lettered_whole(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    raw = b'{"type": "page_viewed", oops'
    r = await client.post(
        "/v1/events", content=raw, headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    [(_, _, data)] = await read_all(fresh.jetstream(), "DEADLETTER")
    record = DeadLetter.model_validate_json(data)
    assert record.raw == raw
    assert base64.b64decode(record.raw_b64) == raw


async def test_cloudevents_batches_are_accepted(client: httpx.AsyncClient, fresh: NATS) -> None:
    from nerve_client.events import parse_event

    ces = [
        to_cloudevent(orjson.loads(parse_event(event("item_viewed")).to_json())) for _ in range(3)
    ]
    r = await client.post(
        "/v1/events",
        content=orjson.dumps(ces),
        headers={**HEADERS, "Content-Type": "application/cloudevents-batch+json"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == 3
    assert await count(fresh, "ACTIVITY") == 3


async def test_rate_limit_answers_429_with_retry_after(fresh: NATS, nats_url: str) -> None:
    app = make_app(nats_url, site_keys=(SiteKey(key=KEY, rate_per_s=1, burst=10),))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            ok = await c.post("/v1/events", json=[event() for _ in range(10)], headers=HEADERS)
            assert ok.status_code == 202
            r = await c.post("/v1/events", json=[event() for _ in range(5)], headers=HEADERS)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert await count(fresh, "ACTIVITY") == 10


async def test_origin_allowlist_is_enforced(fresh: NATS, nats_url: str) -> None:
    app = make_app(nats_url, site_keys=(SiteKey(key=KEY, origins=("https://bank.example",)),))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            bad = await c.post(
                "/v1/events", json=event(), headers={**HEADERS, "Origin": "https://evil.example"}
            )
            good = await c.post(
                "/v1/events", json=event(), headers={**HEADERS, "Origin": "https://bank.example"}
            )
    assert (bad.status_code, good.status_code) == (403, 202)


async def test_health_metrics_and_openapi(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["nats"]["connected"] is True
    await client.post("/v1/events", json=[event(), event(id="bad")], headers=HEADERS)
    metrics = (await client.get("/metrics")).text
    assert 'nerve_events_total{outcome="accepted"} 1' in metrics
    assert 'nerve_events_total{outcome="rejected"} 1' in metrics
    assert "nerve_nats_connected 1" in metrics
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/events" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/")).headers["location"] == "/demo/"  # the demo site


async def test_cors_per_site_key_and_the_demo_files(fresh: NATS, nats_url: str) -> None:
    keys = (SiteKey(key="shop-key-1", origins=("https://shop.example",)),)
    app = make_app(nats_url, site_keys=keys)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            pre = {"Access-Control-Request-Method": "GET"}
            ok = await c.options(
                "/v1/recommendations/u1?site_key=shop-key-1",
                headers={**pre, "Origin": "https://shop.example"},
            )
            assert ok.status_code == 204
            assert ok.headers["access-control-allow-origin"] == "https://shop.example"
            bad = await c.options(
                "/v1/recommendations/u1?site_key=shop-key-1",
                headers={**pre, "Origin": "https://evil.example"},
            )
            assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
            post = await c.post(
                "/v1/events?site_key=shop-key-1",
                content=orjson.dumps([event()]),
                headers={"Origin": "https://shop.example", "Content-Type": "text/plain"},
            )
            assert post.status_code == 202
            assert post.headers["access-control-allow-origin"] == "https://shop.example"
            refused = await c.post(
                "/v1/events?site_key=shop-key-1",
                content=orjson.dumps([event()]),
                headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
            )
            assert refused.status_code == 403
            assert "access-control-allow-origin" not in refused.headers
            page = await c.get("/demo/")
            assert page.status_code == 200 and "<nerve-recommendations" in page.text
            item = await c.get("/demo/loans/loan-personal")
            assert item.status_code == 200 and 'id="product"' in item.text
            assert (await c.get("/demo/../pyproject.toml")).status_code == 404
            assert (await c.get("/demo/%2e%2e/pyproject.toml")).status_code == 404
            assert (await c.get("/demo/nothing.html")).status_code == 404


def reco_list(n: int, slot: str = "home", user: str = "u1", anonymous: bool = False) -> bytes:
    """A valid recommendations_updated event of `user` as the recommender stores it; `n` is
    carried as its `activity_seq`."""
    rid = uuid7()
    items = [{"item_id": f"item-{n}", "position": 0, "score": 1.0, "reason": "popular"}]
    props = {"recommendation_id": rid, "slot": slot, "items": items}
    event: dict[str, Any] = {
        "id": rid,
        "type": "recommendations_updated",
        "time": datetime.now(UTC).isoformat(),
        "source": "recommender",
        "properties": {**props, "activity_seq": n, "crm_seq": 0},
        ("anonymous_id" if anonymous else "user_id"): user,
    }
    return orjson.dumps(event)


def n_of(frame: bytes) -> int:
    n: int = orjson.loads(frame.split(b"data: ", 1)[1])["properties"]["activity_seq"]
    return n


async def test_a_full_buffer_keeps_the_newest_list_of_each_slot() -> None:
    unread = LatestPerSlot()
    for n in range(150):
        unread.put("home", reco_list(n))
    unread.put("similar", reco_list(0, "similar"))
    unread.put("home", reco_list(150))
    assert len(unread) == 2
    first, second = [orjson.loads(await unread.get())["properties"] for _ in range(2)]
    assert (first["slot"], second["slot"]) == ("similar", "home")  # in order of arrival
    assert second["activity_seq"] == 150  # not a stale list
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(unread.get(), 0.05)


def stalled_browser() -> Request:
    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # never disconnects
        return {}

    return Request({"type": "http", "method": "GET", "headers": [], "path": "/"}, receive)


async def test_a_stalled_stream_resumes_with_the_newest_list_and_skips_what_is_not_json(
    fresh: NATS, bus: Bus
) -> None:
    state = GatewayState(GatewaySettings())
    state.open(bus)
    frames = sse_events(stalled_browser(), state, "u1", {"home"})
    assert await anext(frames) == b": connected\n\n"  # subscribed; now the browser stalls
    for n in range(150):  # more than the old 100-message queue held
        await fresh.publish(reco_subject("u1", "home"), reco_list(n))
    await fresh.publish(reco_subject("u1", "other"), reco_list(999, "other"))
    await fresh.flush()
    await asyncio.sleep(0.2)
    frame = await asyncio.wait_for(anext(frames), 2)
    assert n_of(frame) == 149
    # the browser reads again: a message that is not JSON is skipped, the stream goes on
    waiting = asyncio.ensure_future(anext(frames))
    await fresh.publish(reco_subject("u1", "home"), b"{not json")
    await fresh.flush()
    await asyncio.sleep(0.2)
    await fresh.publish(reco_subject("u1", "home"), reco_list(150))
    frame = await asyncio.wait_for(waiting, 2)
    assert n_of(frame) == 150
    assert state.metrics.get("stream_skipped_total") == 1
    await frames.aclose()


async def test_the_stream_sends_lists_over_http_with_a_site_key(fresh: NATS, nats_url: str) -> None:
    app = make_app(nats_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:
            assert (await c.get("/v1/recommendations/a2/stream")).status_code == 401
            url = f"/v1/recommendations/a2/stream?slots=home&anonymous=true&site_key={KEY}"
            async with c.stream("GET", url) as r:
                lines = r.aiter_lines()
                assert await anext(lines) == ": connected"
                subject = reco_subject(user_token(None, "a2"), "home")
                await fresh.publish(subject, reco_list(7, user="a2", anonymous=True))
                assert await anext(lines) == ""
                got = [await anext(lines) for _ in range(3)]
        assert got[0].startswith("id: ") and got[1] == "event: recommendations"
        assert orjson.loads(got[2].removeprefix("data: "))["properties"]["activity_seq"] == 7
    finally:
        server.should_exit = True
        await task


async def test_every_site_key_route_refuses_a_foreign_origin_with_the_same_answer(
    fresh: NATS, nats_url: str
) -> None:
    app = make_app(nats_url, site_keys=(SiteKey(key=KEY, origins=("https://bank.example",)),))
    evil = {**HEADERS, "Origin": "https://evil.example"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            answers = [
                await c.post("/v1/events", json=event(), headers=evil),
                await c.get("/v1/recommendations/u1", headers=evil),
                await c.get("/v1/recommendations/u1/stream", headers=evil),
                await c.get("/v1/recommendations/u1?k=0"),
            ]
            internal = await c.get("/v1/stats", headers=HEADERS)
    detail = "origin https://evil.example is not allowed for this site key"
    assert [(r.status_code, r.json()["detail"]) for r in answers[:3]] == [(403, detail)] * 3
    assert answers[3].status_code == 401 and "site_key" in answers[3].json()["detail"]
    assert internal.status_code == 401
    assert await count(fresh, "ACTIVITY") == 0

"""Signed identity (issue 12, finding 2): a public site key cannot act as a customer.

The token itself (`nerve_client.identity`), the producers table, and the gateway end to end on a
real nats-server: the seven-POST takeover, reading a known user's lists and stream, the demo bank's
backend, the rate budget of refused input and the caps on live streams."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from engine.gateway import SITE_KEY_HEADER, create_app
from engine.gateway import demo as demo_routes
from engine.settings import GatewaySettings, SiteKey
from nerve_client.errors import ConfigError, EventRejected
from nerve_client.events import parse_event
from nerve_client.events.producers import BEHAVIOURAL, PRODUCERS, admit, check_producer
from nerve_client.identity import (
    CLOCK_SKEW_S,
    InvalidIdentity,
    mint_identity_token,
    verify_identity_token,
)
from nerve_client.ids import uuid7
from nerve_client.subjects import reco_subject, user_token
from tests.conftest import count, event

KEY, OTHER = "bank-site-key", "other-site-key"
SECRET, OTHER_SECRET = "bank-identity-secret-0123456789", "other-identity-secret-987654321"
INTERNAL = "internal-token-for-tests"
VICTIM, ATTACKER = "cust-000042", "attacker-anon-1"
SITE = {SITE_KEY_HEADER: KEY, "Content-Type": "text/plain"}
SERVER = {"Authorization": f"Bearer {INTERNAL}", "Content-Type": "application/json"}


def token(user: str = VICTIM, **kw: Any) -> str:
    kw.setdefault("site_key", KEY)
    return mint_identity_token(kw.pop("secret", SECRET), user, **kw)


def with_token(tok: str) -> dict[str, str]:
    return {**SITE, "X-Nerve-Identity": tok}


def sites(**kw: Any) -> tuple[SiteKey, ...]:
    return (
        SiteKey(key=KEY, identity_secret=SecretStr(SECRET), **kw),
        SiteKey(key=OTHER, identity_secret=SecretStr(OTHER_SECRET)),
    )


def make_app(nats_url: str, **settings: Any) -> FastAPI:
    keys = settings.pop("site_keys", sites())
    gs = GatewaySettings(site_keys=keys, internal_tokens=(INTERNAL,), **settings)
    app = create_app(gs, nats_url, 5)
    if not any(getattr(r, "path", "").startswith("/demo-site/") for r in app.routes):
        app.include_router(demo_routes.router)  # until app.py includes it
    return app


@pytest.fixture
async def client(fresh: NATS, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(nats_url, demo_site=KEY)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


def takeover() -> list[dict[str, Any]]:
    """The seven text/plain POSTs of finding 2, for a guessable customer id."""
    loan = {"simulator": "loan", "amount": 25000, "term_months": 60}
    return [
        event("user_identified", user_id=VICTIM, anonymous_id=ATTACKER),
        event("consent_updated", user_id=VICTIM, properties={
            "analytics": True, "personalization": True, "marketing": True}),
        event("item_purchased", user_id=VICTIM, item_id="mortgage-prime",
              properties={"value": 250_000, "currency": "EUR"}),
        event("simulator_used", user_id=VICTIM, properties=loan),
        event("simulator_used", user_id=VICTIM, properties=loan),
        event("simulator_used", user_id=VICTIM, properties=loan),
        event("page_viewed", user_id=VICTIM, context={"consent": {"marketing": True}}),
    ]  # fmt: skip


def anon(etype: str = "page_viewed", **fields: Any) -> dict[str, Any]:
    return event(etype, **{"user_id": None, "anonymous_id": "visitor-1", **fields})


def reasons(body: dict[str, Any]) -> dict[str, str]:
    """Field -> reason of the first refused event of a response body."""
    return {e["field"]: e["reason"] for e in body["rejected"][0]["errors"]}


# -- the token ------------------------------------------------------------------------------


def test_a_minted_token_verifies_for_its_site_and_user() -> None:
    proven = verify_identity_token(token(), SECRET, site_key=KEY, user_id=VICTIM)
    assert (proven.site_key, proven.user_id) == (KEY, VICTIM)
    assert proven.expires_at > time.time()


@pytest.mark.parametrize(
    ("tok", "reason"),
    [
        (lambda: token(secret="wrong-secret-0123456789"), "bad signature"),
        (lambda: token("cust-000043"), "another user"),
        (lambda: token(site_key=OTHER, secret=SECRET), "another site key"),
        (lambda: token(ttl_s=60, now=time.time() - 60 - CLOCK_SKEW_S - 5), "expired"),
        (lambda: token(ttl_s=60, now=time.time() + 3600), "future"),
        (lambda: token()[:-3] + "AAA", "bad signature"),
        (lambda: "not.a-token", "malformed"),
    ],
)
def test_forged_expired_and_foreign_tokens_are_refused(tok: Any, reason: str) -> None:
    with pytest.raises(InvalidIdentity, match=reason):
        verify_identity_token(tok(), SECRET, site_key=KEY, user_id=VICTIM)


def test_an_unsigned_token_and_an_endless_one_are_refused() -> None:
    import base64

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims = {"iss": KEY, "sub": VICTIM, "exp": int(time.time()) + 60}
    unsigned = part({"alg": "none"}) + "." + part(claims) + "."
    with pytest.raises(InvalidIdentity, match="HS256"):
        verify_identity_token(unsigned, SECRET, site_key=KEY)
    forever = token(ttl_s=3600)  # a well-signed token claiming a far exp is checked too
    verify_identity_token(forever, SECRET, site_key=KEY)
    with pytest.raises(ValueError, match="ttl_s"):
        token(ttl_s=10 * 24 * 3600)


def test_a_short_identity_secret_is_refused_in_the_settings() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        SiteKey(key=KEY, identity_secret=SecretStr("short"))
    assert SECRET not in repr(SiteKey(key=KEY, identity_secret=SecretStr(SECRET)))


# -- the producers table ----------------------------------------------------------------------


def test_the_table_gives_a_site_key_behaviour_only_and_the_server_the_rest() -> None:
    assert "item_purchased" not in PRODUCERS["site"] and "consent_updated" not in BEHAVIOURAL
    assert "crm_contact_logged" not in PRODUCERS["site"]
    assert {"item_purchased", "consent_updated", "crm_contact_logged"} <= PRODUCERS["server"]
    assert "recommendations_updated" not in PRODUCERS["server"]
    with pytest.raises(EventRejected) as exc:
        check_producer("site", parse_event(event("page_viewed", user_id=VICTIM)))
    assert exc.value.errors[0].field == "user_id"
    ok = check_producer("site", parse_event(event(user_id=VICTIM)), identified=VICTIM)
    assert ok.user_id == VICTIM


def test_a_type_the_producer_may_not_send_is_refused_as_such_before_its_fields() -> None:
    """Before: a site key's item_purchased with a bad property was told about the property,
    as if fixing it would get the purchase in."""
    bad = event("item_purchased", user_id=None, anonymous_id="a-1", item_id="card-gold")
    bad["properties"] = {"price": "lots"}
    with pytest.raises(EventRejected) as exc:
        admit("site", bad)
    [error] = exc.value.errors
    assert error.field == "type" and "not accepted from a site key" in error.reason


# -- the takeover through the gateway ---------------------------------------------------------


async def test_the_seven_post_takeover_is_refused_without_a_token(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    answers = [
        await client.post("/v1/events", content=orjson.dumps(e), headers=SITE) for e in takeover()
    ]
    assert [r.status_code for r in answers] == [422] * 7  # before the fix: 202 each
    assert reasons(answers[0].json())["user_id"].startswith("an event naming a user_id needs")
    assert "server-side producer" in reasons(answers[2].json())["type"]
    assert await count(fresh, "ACTIVITY") == 0
    assert await count(fresh, "DEADLETTER") == 7


async def test_with_a_token_the_behaviour_is_accepted_but_purchase_and_consent_record_never(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    """The proven user's own banner may grant marketing on their events (`producers` docstring);
    a purchase or a `consent_updated` record still never comes from a browser."""
    posts = takeover()
    answers = [
        await client.post("/v1/events", content=orjson.dumps(e), headers=with_token(token()))
        for e in posts
    ]
    assert [r.status_code for r in answers] == [202, 422, 422, 202, 202, 202, 202]
    assert "type" in reasons(answers[1].json()) and "type" in reasons(answers[2].json())
    assert await count(fresh, "ACTIVITY") == 5
    # the bank's backend, with its internal token, may record them
    for e in (posts[1], posts[2]):
        r = await client.post("/v1/events", content=orjson.dumps(e), headers=SERVER)
        assert r.status_code == 202, r.text
    assert await count(fresh, "ACTIVITY") == 7


@pytest.mark.parametrize(
    ("tok", "why"),
    [
        (lambda: token(secret="wrong-secret-0123456789"), "bad signature"),
        (lambda: token("cust-000043"), "another user"),
        (lambda: token(site_key=OTHER, secret=OTHER_SECRET), "bad signature"),
        (lambda: token(site_key=OTHER, secret=SECRET), "another site key"),
        (lambda: token(ttl_s=5, now=time.time() - 120), "expired"),
    ],
)
async def test_a_bad_token_refuses_the_events_naming_the_user_and_keeps_the_rest(
    client: httpx.AsyncClient, fresh: NATS, tok: Any, why: str
) -> None:
    batch = [event("simulator_used", user_id=VICTIM), anon()]
    r = await client.post("/v1/events", content=orjson.dumps(batch), headers=with_token(tok()))
    assert r.status_code == 202 and r.json()["accepted"] == 1
    assert r.json()["rejected"][0]["index"] == 0
    assert why in reasons(r.json())["user_id"]
    assert await count(fresh, "ACTIVITY") == 1


async def test_a_bad_internal_token_stores_nothing(client: httpx.AsyncClient, fresh: NATS) -> None:
    purchase = takeover()[2]
    r = await client.post(
        "/v1/events", json=purchase, headers={"Authorization": "Bearer guessed-token"}
    )
    assert r.status_code == 403
    assert await count(fresh, "ACTIVITY") == 0 and await count(fresh, "DEADLETTER") == 0


async def test_anonymous_browsing_needs_no_token(client: httpx.AsyncClient, fresh: NATS) -> None:
    batch = [anon(), anon("simulator_used"), anon(context={"consent": {"personalization": True}})]
    r = await client.post("/v1/events", content=orjson.dumps(batch), headers=SITE)
    assert r.status_code == 202 and r.json()["accepted"] == 3


# -- reading a known user's lists -----------------------------------------------------------------


def a_list(user: str, slot: str = "home", anonymous: bool = False, **props: Any) -> bytes:
    rid = uuid7()
    items = [{"item_id": "loan-personal", "position": 0, "score": 1.0, "reason": "for you"}]
    return orjson.dumps(
        {
            "id": rid,
            "type": "recommendations_updated",
            "time": datetime.now(UTC).isoformat(),
            "source": "recommender",
            ("anonymous_id" if anonymous else "user_id"): user,
            "properties": {
                "recommendation_id": rid,
                "slot": slot,
                "items": items,
                "activity_seq": 1,
                "crm_seq": 0,
                **props,
            },
        }
    )


async def test_a_known_users_list_needs_a_token_for_that_user(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    await fresh.jetstream().publish(reco_subject(user_token(VICTIM), "home"), a_list(VICTIM))
    url = f"/v1/recommendations/{VICTIM}?slot=home"
    none = await client.get(url, headers={SITE_KEY_HEADER: KEY})
    other = await client.get(url, headers=with_token(token("cust-000043")))
    good = await client.get(url, headers=with_token(token()))
    query = await client.get(f"{url}&site_key={KEY}&identity={token()}")
    internal = await client.get(url, headers=SERVER)
    assert none.status_code == 401 and "identity token" in none.json()["detail"]
    assert other.status_code == 403 and "another user" in other.json()["detail"]
    assert [r.status_code for r in (good, query, internal)] == [200, 200, 200]
    assert good.headers["x-nerve-source"] == "stored"


async def test_an_anonymous_list_needs_no_token(client: httpx.AsyncClient, fresh: NATS) -> None:
    subject = reco_subject(user_token(None, "visitor-1"), "home")
    await fresh.jetstream().publish(subject, a_list("visitor-1", anonymous=True))
    r = await client.get(
        "/v1/recommendations/visitor-1?anonymous=true", headers={SITE_KEY_HEADER: KEY}
    )
    assert r.status_code == 200 and r.headers["x-nerve-source"] == "stored"


async def test_a_planted_list_is_not_served_as_stored(fresh: NATS, nats_url: str) -> None:
    js = fresh.jetstream()
    subject = reco_subject(user_token(VICTIM), "home")
    phishing = {"id": uuid7(), "properties": {"slot": "home", "items": [{"item_id": "x"}]}}
    app = make_app(nats_url, request_timeout_s=0.2)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            for planted in (orjson.dumps(phishing), a_list("someone"), a_list(VICTIM, "other")):
                await js.publish(subject, planted)
                r = await c.get(f"/v1/recommendations/{VICTIM}", headers=SERVER)
                # nothing valid is stored and no recommender runs: before the fix, 200 "stored"
                assert r.status_code == 503, r.text
            await js.publish(subject, a_list(VICTIM))
            r = await c.get(f"/v1/recommendations/{VICTIM}", headers=SERVER)
            assert r.status_code == 200 and r.headers["x-nerve-source"] == "stored"


# -- streams ----------------------------------------------------------------------------------


class Server:
    """The gateway under uvicorn on a free port (streams need a real HTTP server)."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    async def __aenter__(self) -> Server:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task


def stream_url(user: str, key: str = KEY, **params: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"site_key": key, **params}.items())
    return f"/v1/recommendations/{user}/stream?{q}"


async def test_a_known_users_stream_needs_a_token(fresh: NATS, nats_url: str) -> None:
    async with Server(make_app(nats_url)) as srv, httpx.AsyncClient(base_url=srv.base) as c:
        assert (await c.get(stream_url(VICTIM))).status_code == 401
        bad = await c.get(stream_url(VICTIM, identity=token("cust-000043")))
        assert bad.status_code == 403
        async with c.stream("GET", stream_url(VICTIM, identity=token())) as r:
            lines = r.aiter_lines()
            assert r.status_code == 200 and await anext(lines) == ": connected"
            await fresh.publish(reco_subject(user_token(VICTIM), "home"), a_list("someone-else"))
            await fresh.publish(reco_subject(user_token(VICTIM), "home"), a_list(VICTIM))
            frame = [await anext(lines) for _ in range(4)][1:]  # the planted one is skipped
        assert frame[1] == "event: recommendations"
        assert orjson.loads(frame[2].removeprefix("data: "))["user_id"] == VICTIM


async def open_stream(c: httpx.AsyncClient, url: str) -> tuple[Any, httpx.Response]:
    cm = c.stream("GET", url)
    response = await cm.__aenter__()
    return cm, response


async def test_streams_are_capped_per_key_and_per_client(fresh: NATS, nats_url: str) -> None:
    app = make_app(nats_url, max_streams_per_key=2, max_streams_per_client=3)
    async with Server(app) as srv, httpx.AsyncClient(base_url=srv.base, timeout=5) as c:
        url = stream_url("visitor-1", anonymous="true")
        opened = [await open_stream(c, url) for _ in range(2)]
        assert [r.status_code for _, r in opened] == [200, 200]
        over_key = await c.get(url)
        assert over_key.status_code == 429 and int(over_key.headers["Retry-After"]) >= 1
        other = await open_stream(c, stream_url("visitor-2", OTHER, anonymous="true"))
        assert other[1].status_code == 200  # another key, same client: its third
        over_client = await c.get(stream_url("visitor-3", OTHER, anonymous="true"))
        assert over_client.status_code == 429  # the client's cap, though OTHER has room
        for cm, _ in [*opened, other]:
            await cm.__aexit__(None, None, None)
        deadline = time.monotonic() + 5  # the server notices the closed streams
        while await status_of(c, url) == 429:
            assert time.monotonic() < deadline, "caps never released"
            await asyncio.sleep(0.05)


async def status_of(c: httpx.AsyncClient, url: str) -> int:
    """The status of a stream request (the stream, when opened, is closed at once)."""
    async with c.stream("GET", url) as r:
        return r.status_code


# -- the rate budget of refused input ----------------------------------------------------------


async def test_invalid_bodies_cannot_fill_the_deadletter_stream_past_the_budget(
    fresh: NATS, nats_url: str
) -> None:
    rate, burst = 10.0, 5
    app = make_app(nats_url, site_keys=sites(rate_per_s=rate, burst=burst))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            started = time.monotonic()
            statuses = [
                (await c.post("/v1/events", content=b"{not json", headers=SITE)).status_code
                for _ in range(60)
            ]
            elapsed = time.monotonic() - started
    dead = await count(fresh, "DEADLETTER")
    assert dead <= burst + rate * elapsed, (dead, elapsed)  # before the fix: 60
    assert 429 in statuses and statuses.count(400) == dead


# -- the demo bank's backend --------------------------------------------------------------------


async def test_the_demo_backend_mints_a_token_and_never_shows_its_secret(
    client: httpx.AsyncClient,
) -> None:
    config = await client.get("/demo-site/config.js")
    assert config.status_code == 200 and KEY in config.text and SECRET not in config.text
    r = await client.post("/demo-site/sign-in", json={"user_id": "u0000001"})
    assert r.status_code == 200
    proven = verify_identity_token(r.json()["token"], SECRET, site_key=KEY, user_id="u0000001")
    assert proven.user_id == "u0000001"
    assert (await client.post("/demo-site/sign-in", json={"user_id": ""})).status_code == 422


async def test_without_a_demo_site_the_backend_is_not_served(fresh: NATS, nats_url: str) -> None:
    app = make_app(nats_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            assert (await c.post("/demo-site/sign-in", json={"user_id": "u1"})).status_code == 404
            assert (await c.get("/demo-site/config.js")).status_code == 404


def test_the_demo_site_key_is_generated_once_private(tmp_path: Path) -> None:
    from engine.cli.gatewayopts import demo_site_key

    first = demo_site_key(tmp_path)
    path = tmp_path / "demo" / "site.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.identity_secret is not None and demo_site_key(tmp_path) == first


def test_site_secrets_come_as_key_equals_secret() -> None:
    from engine.cli.gatewayopts import gateway_settings as _gateway

    gw = _gateway("127.0.0.1", 0, f"{KEY},{OTHER}", "", 10, 10, f"{KEY}={SECRET}", KEY)
    by_key = {k.key: k for k in gw.site_keys}
    assert by_key[KEY].identity_secret is not None and by_key[OTHER].identity_secret is None
    assert gw.demo_site == KEY
    with pytest.raises(ConfigError, match="not one of --site-keys"):
        _gateway("127.0.0.1", 0, KEY, "", 10, 10, f"nope={SECRET}")
    with pytest.raises(ConfigError, match="needs a secret"):
        _gateway("127.0.0.1", 0, f"{KEY},{OTHER}", "", 10, 10, f"{KEY}={SECRET}", OTHER)

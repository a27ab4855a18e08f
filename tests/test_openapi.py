"""The gateway's OpenAPI against what it really answers: a real gateway under uvicorn, with the
recommender and profiles services on a real nats-server, each route called over HTTP and its
request and live answer validated with openapi-core against the served `/openapi.json`; and
`/docs` rendered by Chromium with no host but the gateway's."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jsonschema
import orjson
import pytest
from nats.aio.client import Client as NATS
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.request.exceptions import InvalidRequestBody
from pydantic import SecretStr
from werkzeug.datastructures import Headers, ImmutableMultiDict

from engine.bus import Bus
from engine.gateway import IDENTITY_HEADER, SITE_KEY_HEADER, create_app
from engine.profiles.store import ProfileStore
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Serving
from engine.services.ops import OpsService
from engine.services.profiles import ProfileService
from engine.services.recommender import RecommenderService
from engine.settings import GatewaySettings, SiteKey
from nerve_client.events import json_schema
from nerve_client.events.producers import PRODUCERS
from nerve_client.events.served import document_schema
from nerve_client.identity import mint_identity_token
from tests.conftest import event, serving
from tests.reco_world import ITEMS, publish_world, slots_config

KEY = "openapi-site-key"
SECRET = "openapi-identity-secret-0123"
TOKEN = "openapi-internal-token"
ORIGIN = "https://bank.example"
SITE = {SITE_KEY_HEADER: KEY}
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}
CRM = {"Authorization": "Bearer openapi-crm-key-0123456789"}
CHROMIUM = "/usr/bin/chromium"
PUBLIC = {("get", "/healthz"), ("get", "/metrics")}
"""The operations anyone may call; every other one must declare its security."""


class Req:
    """An httpx request as openapi-core reads one."""

    def __init__(self, request: httpx.Request) -> None:
        url = request.url
        self.host_url = f"{url.scheme}://{url.netloc.decode()}"
        self.path = url.path
        self.method = request.method.lower()
        query = parse_qsl(url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )
        self.content_type = request.headers.get("content-type", "")
        self.body = request.content or None


class Resp:
    """An httpx response as openapi-core reads one."""

    def __init__(self, response: httpx.Response, data: bytes | None = None) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(list(response.headers.items()))
        self.data = response.content if data is None else data


@contextlib.asynccontextmanager
async def services(nc: NATS) -> AsyncIterator[None]:
    """The recommender, the profiles and the ops service, running until the block ends."""
    bus = Bus(nc)
    store = await ProfileStore.open(bus)
    running: list[RecommenderService | ProfileService | OpsService] = [
        RecommenderService(bus, Serving(slots_config(), ItemCatalog()), store),
        ProfileService(bus, await ProfileStore.open(bus)),
        OpsService(bus),  # /v1/stats is read by the ops service
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in running]
    for s in running:
        await asyncio.wait_for(s.ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


@pytest.fixture
async def gateway(fresh: NATS, nats_url: str) -> AsyncIterator[str]:
    """The bank's catalogue and models published, its services running, and a gateway (site key
    with an identity secret, an internal token) under uvicorn; yields the gateway's URL."""
    await publish_world(fresh)
    site = SiteKey(key=KEY, origins=(ORIGIN,), identity_secret=SecretStr(SECRET))
    crm_key = CRM["Authorization"].removeprefix("Bearer ")
    settings = GatewaySettings(site_keys=(site,), internal_tokens=(TOKEN,), crm_keys=(crm_key,))
    async with services(fresh), serving(create_app(settings, nats_url, 5)) as url:
        yield url


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as c:
        yield c


async def spec_of(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def as_text(data: bytes, **params: str) -> str:
    return data.decode(params.get("charset", "utf-8"))


async def api_of(client: httpx.AsyncClient) -> OpenAPI:
    """The served OpenAPI, for openapi-core; an event stream is read as text (it is UTF-8)."""
    text: dict[str, Callable[[bytes], Any]] = {"text/event-stream": as_text}
    return OpenAPI.from_dict(
        await spec_of(client), config=Config(extra_media_type_deserializers=text)
    )


def identity(user: str) -> dict[str, str]:
    return {**SITE, IDENTITY_HEADER: mint_identity_token(SECRET, user, site_key=KEY)}


def check(
    api: OpenAPI, response: httpx.Response, data: bytes | None = None, *, valid: bool = True
) -> None:
    """The answer is what the OpenAPI says, and so is the request when it is a `valid` one
    (openapi-core raises if not)."""
    request = Req(response.request)
    if valid:
        api.validate_request(request)
    api.validate_response(request, Resp(response, data))


async def until_ok(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """GET `url` until it answers 200 (a service applies what was just sent)."""
    async with asyncio.timeout(20):
        while (r := await client.get(url, headers=headers)).status_code != 200:
            await asyncio.sleep(0.1)
    return r


async def test_every_operation_has_response_schemas_errors_and_its_security(
    client: httpx.AsyncClient,
) -> None:
    doc = await spec_of(client)
    schemes = doc["components"]["securitySchemes"]
    assert {schemes[n]["type"] for n in schemes} == {"apiKey", "http"}
    assert {(s.get("in"), s.get("name")) for s in schemes.values()} >= {
        ("header", SITE_KEY_HEADER),
        ("query", "site_key"),
        ("header", IDENTITY_HEADER),
        ("query", "identity"),
    }
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    seen = set()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            seen.add((method, path))
            where = f"{method.upper()} {path}"
            for status, resp in op["responses"].items():
                content = resp.get("content")
                assert content, f"{where} {status}: no content"
                assert all(m.get("schema") for m in content.values()), f"{where} {status}"
                if status >= "400":
                    assert "application/json" in content, f"{where} {status}: not JSON"
            if method in ("post", "put", "patch"):
                assert op.get("requestBody", {}).get("content"), f"{where}: no request body"
            if (method, path) not in PUBLIC:
                assert {"401", "403"} <= set(op["responses"]), f"{where}: no refusals"
                security = op.get("security")
                assert security, f"{where}: no security"
                assert all(n in schemes for req in security for n in req), where
    assert {("post", "/v1/events"), ("get", "/v1/recommendations/{user_id}")} <= seen
    stream = doc["paths"]["/v1/recommendations/{user_id}/stream"]["get"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"]  # not declared as JSON
    served = doc["paths"]["/v1/recommendations/{user_id}"]["get"]["responses"]["200"]
    assert served["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ServedList"
    }
    assert {"X-Nerve-Source", "X-Nerve-Warning"} <= set(served["headers"])


async def test_live_answers_of_every_route_match_the_served_openapi(
    client: httpx.AsyncClient,
) -> None:
    api = await api_of(client)
    anon = "/v1/recommendations/visitor-1?anonymous=true"
    ok = await client.get(anon, headers=SITE)
    assert ok.status_code == 200, ok.text
    check(api, ok)
    assert any("item" in i for i in ok.json()["properties"]["items"])  # enriched: items[].item
    known = await client.get("/v1/recommendations/ana?slot=trending", headers=identity("ana"))
    assert known.status_code == 200, known.text
    check(api, known)
    known_url = "/v1/recommendations/ana"
    answers = {  # name: (answer, its status, whether the request is valid by the spec)
        "unknown slot": (await client.get(anon + "&slot=nope", headers=SITE), 404, True),
        "k out of range": (await client.get(anon + "&k=0", headers=SITE), 422, False),
        "k not a number": (await client.get(anon + "&k=many", headers=SITE), 422, False),
        "bad slot name": (await client.get(anon + "&slot=a.b", headers=SITE), 422, False),
        "no site key": (await client.get(anon), 401, False),
        "no identity": (await client.get(known_url, headers=SITE), 401, True),
        "wrong identity": (await client.get(known_url, headers=identity("bo")), 403, True),
        "profile, no token": (await client.get("/v1/profiles/visitor-1"), 401, False),
        "no profile": (await client.get("/v1/profiles/nobody", headers=INTERNAL), 404, True),
        "health": (await client.get("/healthz"), 200, True),
        "metrics": (await client.get("/metrics"), 200, True),
        "stats": (await client.get("/v1/stats?hours=1", headers=INTERNAL), 200, True),
        "stats, bad hours": (await client.get("/v1/stats?hours=0", headers=INTERNAL), 422, True),
        "stream, no site key": (await client.get(anon.replace("?", "/stream?")), 401, False),
    }
    for name, (r, status, valid) in answers.items():
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        check(api, r, valid=valid)
    for name in ("k out of range", "k not a number"):
        assert answers[name][0].json()["errors"][0]["field"] == "k"


async def test_events_accepted_and_refused_and_a_profile_match_the_served_openapi(
    client: httpx.AsyncClient,
) -> None:
    api = await api_of(client)
    visit = event("item_viewed", user_id=None, anonymous_id="visitor-2")
    accepted = await client.post("/v1/events", json=[visit], headers=SITE)
    assert accepted.status_code == 202, accepted.text
    check(api, accepted)
    refused = await client.post("/v1/events", json=[event(id="not-an-id")], headers=SITE)
    assert refused.status_code == 422
    check(api, refused)
    profile = await until_ok(client, "/v1/profiles/visitor-2?anonymous=true", INTERNAL)
    check(api, profile)


async def test_crm_events_declare_one_crm_event_or_a_batch_and_their_answers_match(
    client: httpx.AsyncClient,
) -> None:
    """Before: `POST /v1/crm/events` declared no request body at all."""
    api = await api_of(client)
    op = (await spec_of(client))["paths"]["/v1/crm/events"]["post"]
    native = op["requestBody"]["content"]["application/json"]["schema"]
    mapping = native["$defs"]["CrmEvent"]["discriminator"]["mapping"]
    assert set(mapping) == PRODUCERS["crm"]  # the CRM types only, not all a server may send
    contact = event("crm_contact_logged", user_id="ana", item_id="loan-personal")
    one = await client.post("/v1/crm/events", json=contact, headers=CRM)
    assert one.status_code == 202, one.text
    check(api, one)
    batch = [event("crm_contact_logged", user_id=u) for u in ("bo", "cy")]
    many = await client.post("/v1/crm/events", json=batch, headers=CRM)
    assert many.status_code == 202 and many.json()["accepted"] == 2, many.text
    check(api, many)
    anonymous = event("crm_contact_logged", user_id=None, anonymous_id="visitor-9")
    refused = await client.post("/v1/crm/events", json=[anonymous], headers=CRM)
    assert refused.status_code == 422, refused.text  # as declared, yet refused: no user
    check(api, refused)
    behavioural = await client.post("/v1/crm/events", json=[event("page_viewed")], headers=CRM)
    assert behavioural.status_code == 422, behavioural.text
    check(api, behavioural, valid=False)
    with pytest.raises(InvalidRequestBody):  # the spec, too, says it is no CRM event
        api.validate_request(Req(behavioural.request))


async def test_the_stream_is_an_event_stream_as_declared(client: httpx.AsyncClient) -> None:
    api = await api_of(client)
    declared = api.spec / "paths" / "/v1/recommendations/{user_id}/stream" / "get"
    media = list((declared / "responses" / "200" / "content").keys())
    url = f"/v1/recommendations/visitor-3/stream?anonymous=true&site_key={KEY}"
    async with client.stream("GET", url) as r:
        lines = r.aiter_lines()
        assert await anext(lines) == ": connected"
        assert r.status_code == 200
        assert media == ["text/event-stream"]
        assert r.headers["content-type"].split(";")[0] == "text/event-stream"
        check(api, r, data=b": connected\n\n")


async def test_a_k_over_the_slots_maximum_serves_it_with_a_warning_browsers_can_read(
    client: httpx.AsyncClient,
) -> None:
    api = await api_of(client)
    headers = {**SITE, "Origin": ORIGIN}
    r = await client.get("/v1/recommendations/visitor-4?anonymous=true&k=50", headers=headers)
    assert r.status_code == 200, r.text
    check(api, r)
    assert len(r.json()["properties"]["items"]) == 3  # the home slot's maximum
    assert "k=50" in r.headers["x-nerve-warning"]
    assert "warning" not in r.json()
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert "x-nerve-warning" in exposed
    plain = await client.get("/v1/recommendations/visitor-4?anonymous=true&k=2", headers=SITE)
    assert plain.status_code == 200 and "x-nerve-warning" not in plain.headers


async def test_the_served_list_has_its_own_published_schema(client: httpx.AsyncClient) -> None:
    served = await client.get("/v1/recommendations/visitor-5?anonymous=true", headers=SITE)
    body = served.json()
    jsonschema.validate(body, document_schema("served_list"))
    stored = json_schema("recommendations_updated")
    with pytest.raises(jsonschema.ValidationError):  # items[].item is not in the log's contract
        jsonschema.validate(body, stored)
    names = {i.item_id: i.name for i in ITEMS}
    for entry in body["properties"]["items"]:
        assert entry["item"]["name"] == names[entry["item_id"]]


async def test_docs_render_from_the_gateways_own_assets_only(
    client: httpx.AsyncClient, gateway: str
) -> None:
    from playwright.async_api import async_playwright

    for page_url in ("/docs", "/redoc"):
        html = (await client.get(page_url)).text
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert refs and not [u for u in refs if re.match(r"^(https?:)?//", u)], refs
        assert not re.search(r"https?://", html), "an outside URL in the page"
        for ref in refs:
            asset = await client.get(ref)
            assert asset.status_code == 200 and asset.content, ref
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    requested: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            page.on("request", lambda req: requested.append(req.url))
            await page.goto(gateway + "/docs")
            await page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            text = await page.inner_text("body")
        finally:
            await browser.close()
    assert "Nerve gateway" in text and "/v1/recommendations/{user_id}" in text
    outside = [u for u in requested if not u.startswith(gateway)]
    assert not outside, outside
    assert orjson.loads((await client.get("/openapi.json")).content)["openapi"].startswith("3.")

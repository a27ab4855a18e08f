"""CloudEvents made by the official SDK (`cloudevents`), posted to a real gateway under uvicorn
over a real nats-server, in structured, batch and binary mode; read back from the log."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.aio.client import Client as NATS

from engine.cloudevents import from_cloudevent, nerve_id
from engine.gateway import SITE_KEY_HEADER, create_app
from engine.settings import GatewaySettings, SiteKey
from nerve_client.errors import EventRejected
from nerve_client.events.producers import BEHAVIOURAL, PRODUCERS
from tests.conftest import serving, stored

KEY = "ce-site-key"
TOKEN = "ce-internal-token"
SITE = {SITE_KEY_HEADER: KEY}
SERVER = {"Authorization": f"Bearer {TOKEN}"}
VIEW = {"anonymous_id": "anon-7", "item_id": "loan-personal", "properties": {"category": "loans"}}


@pytest.fixture
async def gw(fresh: NATS, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A real gateway (uvicorn, lifespan on) with one site key and one internal token."""
    settings = GatewaySettings(site_keys=(SiteKey(key=KEY),), internal_tokens=(TOKEN,))
    app = create_app(settings, nats_url, 5)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        yield c


def cloudevent(ce_type: str = "com.shop.item_viewed", **attributes: Any) -> CloudEvent:
    data = attributes.pop("data", VIEW)
    return CloudEvent({"type": ce_type, "source": "https://shop.example/web", **attributes}, data)


async def post(gw: httpx.AsyncClient, msg: HTTPMessage, **headers: str) -> httpx.Response:
    return await gw.post("/v1/events", content=msg.body, headers={**SITE, **msg.headers, **headers})


def errors_of(r: httpx.Response) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in r.json()["rejected"][0]["errors"]}


async def test_a_structured_sdk_event_with_a_uri_source_and_a_prefixed_type_is_stored(
    gw: httpx.AsyncClient, fresh: NATS
) -> None:
    ce = cloudevent(partitionkey="p-1", dataschema="https://shop.example/schemas/view")
    r = await post(gw, to_structured_event(ce))
    assert r.status_code == 202, r.text
    [event] = await stored(fresh)
    assert event.type == "item_viewed" and event.source == "https://shop.example/web"
    assert event.id == ce.get_id() and r.json()["ids"] == [ce.get_id()]
    assert event.time == ce.get_time()
    assert (event.anonymous_id, event.item_id) == ("anon-7", "loan-personal")
    assert event.properties.model_dump(exclude_none=True) == {"category": "loans"}
    assert event.received_at is not None


async def test_a_binary_sdk_event_is_stored_from_its_ce_headers_and_body(
    gw: httpx.AsyncClient, fresh: NATS
) -> None:
    ce = cloudevent("item_viewed", source="/web", datacontenttype="application/json")
    msg = to_binary_event(ce)
    assert "ce-type" in msg.headers and orjson.loads(msg.body) == VIEW
    r = await post(gw, msg)
    assert r.status_code == 202, r.text
    [event] = await stored(fresh)
    assert (event.id, event.type, event.source) == (ce.get_id(), "item_viewed", "/web")
    assert event.time == ce.get_time() and event.item_id == "loan-personal"


async def test_a_batch_of_sdk_events_is_stored_in_order(gw: httpx.AsyncClient, fresh: NATS) -> None:
    ces = [cloudevent(data={**VIEW, "item_id": f"item-{i}"}) for i in range(3)]
    body = b"[" + b",".join(JSONFormat().write(ce) for ce in ces) + b"]"
    headers = {**SITE, "Content-Type": "application/cloudevents-batch+json"}
    r = await gw.post("/v1/events", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
    assert [e.item_id for e in await stored(fresh)] == ["item-0", "item-1", "item-2"]


async def test_a_non_uuid_id_maps_to_one_stable_id_so_a_resend_is_stored_once(
    gw: httpx.AsyncClient, fresh: NATS
) -> None:
    msg = to_structured_event(cloudevent(id="A234-1234-1234"))
    first, again = await post(gw, msg), await post(gw, msg)
    assert first.status_code == again.status_code == 202
    assert again.json()["duplicates"] == 1
    [event] = await stored(fresh)
    assert (
        event.id == nerve_id("A234-1234-1234", "https://shop.example/web") == first.json()["ids"][0]
    )
    assert nerve_id("A234-1234-1234", "/other") != event.id  # CloudEvents: unique per source


async def test_a_cloudevent_without_time_is_stamped_when_received(
    gw: httpx.AsyncClient, fresh: NATS
) -> None:
    ce = orjson.loads(to_structured_event(cloudevent()).body)
    del ce["time"]
    headers = {**SITE, "Content-Type": "application/cloudevents+json"}
    assert (
        await gw.post("/v1/events", content=orjson.dumps(ce), headers=headers)
    ).status_code == 202
    [event] = await stored(fresh)
    assert event.time == event.received_at


async def test_subject_is_the_user_for_a_server_side_producer(
    gw: httpx.AsyncClient, fresh: NATS
) -> None:
    data = {"item_id": "mort-fixed", "properties": {"value": 1000, "currency": "EUR"}}
    ce = cloudevent("com.bank.item_purchased", subject="cust-42", data=data)
    r = await gw.post(
        "/v1/events",
        content=to_structured_event(ce).body,
        headers={**SERVER, "Content-Type": "application/cloudevents+json"},
    )
    assert r.status_code == 202, r.text
    [event] = await stored(fresh)
    assert (event.type, event.user_id, event.item_id) == ("item_purchased", "cust-42", "mort-fixed")


async def test_binary_mode_without_ce_type_names_the_header(gw: httpx.AsyncClient) -> None:
    msg = to_binary_event(cloudevent())
    headers = {k: v for k, v in msg.headers.items() if k != "ce-type"}
    r = await gw.post("/v1/events", content=msg.body, headers={**SITE, **headers})
    assert r.status_code == 422
    assert errors_of(r) == {"ce-type": "required header"}
    assert "None" not in r.text


async def test_binary_mode_errors_name_the_header_or_the_data_field(gw: httpx.AsyncClient) -> None:
    ce = cloudevent(data={**VIEW, "properties": {"colour": "red"}})
    r = await post(gw, to_binary_event(ce), **{"ce-time": "yesterday"})
    assert r.status_code == 422
    got = errors_of(r)
    assert "RFC 3339" in got["ce-time"] and got["data.properties.colour"] == "unknown field"
    xml = await post(gw, to_binary_event(cloudevent()), **{"content-type": "application/xml"})
    assert errors_of(xml) == {"content-type": "only JSON data is accepted"}


async def test_structured_errors_name_cloudevents_fields(gw: httpx.AsyncClient) -> None:
    headers = {**SITE, "Content-Type": "application/cloudevents+json"}
    base = orjson.loads(to_structured_event(cloudevent()).body)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"user_id": "u-1"}, "user_id", "not a CloudEvents attribute name"),
        ({"specversion": "0.3"}, "specversion", "must be '1.0'"),
        ({"datacontenttype": "text/xml"}, "datacontenttype", "only JSON"),
        ({"data": {**VIEW, "oops": 1}}, "data.oops", "unknown field"),
        ({"data": {**VIEW, "item_id": None}}, "data.item_id", "required for item_viewed"),
        ({"source": "my web site"}, "source", "URI-reference"),
    ]
    for change, field, needle in cases:
        body = orjson.dumps({**base, **change})
        r = await gw.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 422, change
        assert needle in errors_of(r).get(field, ""), (change, r.json())
    del base["type"]
    r = await gw.post("/v1/events", content=orjson.dumps(base), headers=headers)
    assert errors_of(r) == {"type": "required attribute"}


def known_of(reason: str) -> set[str]:
    return set(reason.split("(known: ")[1].split(")")[0].split(", "))


async def test_an_unknown_type_lists_only_what_the_sender_may_send_with_a_hint(
    gw: httpx.AsyncClient,
) -> None:
    native = {"type": "Product Viewed", "time": "2026-01-01T00:00:00Z", "anonymous_id": "a-1"}
    site = errors_of(await gw.post("/v1/events", json=native, headers=SITE))["type"]
    assert known_of(site) == BEHAVIOURAL and "did you mean item_viewed?" in site
    server = errors_of(await gw.post("/v1/events", json=native, headers=SERVER))["type"]
    assert known_of(server) == PRODUCERS["server"]
    ce = orjson.loads(to_structured_event(cloudevent("Order Completed")).body)
    headers = {**SITE, "Content-Type": "application/cloudevents+json"}
    bought = errors_of(await gw.post("/v1/events", content=orjson.dumps(ce), headers=headers))
    assert "item_purchased" in bought["type"] and "may not send" in bought["type"]
    assert known_of(bought["type"]) == BEHAVIOURAL
    untyped = {k: v for k, v in native.items() if k != "type"}
    missing = errors_of(await gw.post("/v1/events", json=untyped, headers=SITE))["type"]
    assert missing.startswith("required") and "None" not in missing
    assert known_of(missing) == BEHAVIOURAL


def test_the_sdk_and_nerve_agree_on_a_round_trip() -> None:
    ce = cloudevent(subject="u-3", data={"item_id": "loan-personal"})
    back = from_cloudevent(orjson.loads(JSONFormat().write(ce)))
    assert back["user_id"] == "u-3" and back["type"] == "item_viewed"
    with pytest.raises(EventRejected, match="data_base64"):
        from_cloudevent(orjson.loads(JSONFormat().write(cloudevent(data=b"\x00\x01"))))


async def test_openapi_describes_every_accepted_body_with_resolvable_schemas(
    gw: httpx.AsyncClient,
) -> None:
    spec = (await gw.get("/openapi.json")).json()
    op = spec["paths"]["/v1/events"]["post"]
    content = op["requestBody"]["content"]
    assert {
        "application/json",
        "text/plain",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
    } <= set(content)

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target: Any = spec
                for part in node["$ref"].removeprefix("#/").split("/"):
                    target = target[part.replace("~1", "/").replace("~0", "~")]
                return resolve(target)
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    ce_schema = resolve(content["application/cloudevents+json"]["schema"])
    assert {"specversion", "id", "source", "type"} <= set(ce_schema["required"])
    assert "user_id" in ce_schema["properties"]["data"]["anyOf"][0]["properties"]
    native = resolve(content["application/json"]["schema"])
    variants = native["anyOf"][0]["oneOf"]
    assert {v["properties"]["type"]["const"] for v in variants} == PRODUCERS["server"]
    ok = resolve(op["responses"]["202"]["content"]["application/json"]["schema"])
    assert {"accepted", "ids", "duplicates", "rejected"} <= set(ok["properties"])

"""`POST /v1/crm/events` (issue 16 item 11): CRM events over HTTP with a CRM key.

Before: a CRM that does not speak NATS had no way in (404), and the gateway's broker grant
could not publish on `crm.>`. The gateway here runs under uvicorn as the `gateway` credential
against the real nats-server, so the test also proves its grant covers what the route stores.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NATS

from engine import credstore
from engine.broker import EmbeddedBroker
from engine.bus.reader import read_all
from engine.gateway import SITE_KEY_HEADER, crm
from engine.gateway.app import create_app
from engine.settings import GatewaySettings, SiteKey
from nerve_client.subjects import crm_subject, logical_subject, user_token
from tests.conftest import event, serving

SITE = "site-key-0123456789"
INTERNAL = "internal-token-0123456789"
CRM_KEY = "crm-key-0123456789abcdef"


def with_crm_route(app: FastAPI) -> FastAPI:
    """The app with the CRM router (until `create_app` includes it itself)."""
    if not any(getattr(r, "path", None) == "/v1/crm/events" for r in app.routes):
        app.include_router(crm.router)
    return app


@contextlib.asynccontextmanager
async def gateway(broker: EmbeddedBroker) -> AsyncIterator[httpx.AsyncClient]:
    assert broker.url is not None
    settings = GatewaySettings(
        site_keys=(SiteKey(key=SITE),), internal_tokens=(INTERNAL,), crm_keys=(CRM_KEY,)
    )
    cred = credstore.component(broker.data_dir, "gateway")
    app = with_crm_route(create_app(settings, broker.url, 5.0, credential=cred))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


def contact(**fields: Any) -> dict[str, Any]:
    base = event("crm_contact_logged", user_id="ada", item_id="loan-personal")
    base.update(fields)
    return base


async def post(
    client: httpx.AsyncClient, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Authorization": f"Bearer {CRM_KEY}", "Content-Type": "application/json"}
    return await client.post("/v1/crm/events", content=data, headers={**hdrs, **(headers or {})})


async def stored(nc: NATS, stream: str) -> list[tuple[str, dict[str, Any]]]:
    return [(s, orjson.loads(d)) for _, s, d in await read_all(nc.jetstream(), stream)]


async def test_a_crm_event_with_the_crm_key_is_stored_in_crm_with_producer_crm(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    async with gateway(broker) as client:
        sent = contact()
        r = await post(client, sent)
        assert r.status_code == 202, r.text
        assert r.json()["ids"] == [sent["id"]] and r.json()["rejected"] == []
        again = await post(client, sent)  # a retry with the same id is stored once
        assert again.status_code == 202 and again.json()["duplicates"] == 1
    ((subject, body),) = await stored(fresh, "CRM")
    assert logical_subject(subject) == crm_subject(user_token("ada"), "crm_contact_logged")
    assert body["id"] == sent["id"] and body["source"] == "crm"
    assert body["properties"] == {"channel": "phone", "outcome": "interested"}
    assert await stored(fresh, "ACTIVITY") == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": ""}, 401),
        ({"Authorization": "", SITE_KEY_HEADER: SITE}, 401),  # a site key alone
        ({"Authorization": f"Bearer {SITE}"}, 403),  # a site key as a bearer
        ({"Authorization": f"Bearer {INTERNAL}"}, 403),  # an internal token is not a CRM key
        ({"Authorization": f"Bearer {CRM_KEY}x"}, 403),
    ],
)
async def test_without_the_crm_key_nothing_is_stored(
    fresh: NATS, broker: EmbeddedBroker, headers: dict[str, str], status: int
) -> None:
    async with gateway(broker) as client:
        data = orjson.dumps(contact())
        hdrs = {"Content-Type": "application/json", **headers}
        hdrs = {k: v for k, v in hdrs.items() if v}
        r = await client.post("/v1/crm/events", content=data, headers=hdrs)
    assert r.status_code == status, r.text
    assert "CRM key" in r.json()["detail"]
    assert await stored(fresh, "CRM") == [] and await stored(fresh, "DEADLETTER") == []


async def test_refused_events_name_the_field_and_reason_and_the_good_ones_are_stored(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    async with gateway(broker) as client:
        behavioural = event("page_viewed")
        bad_channel = contact(properties={"channel": "pigeon", "outcome": "interested"})
        good = contact()
        r = await post(client, [behavioural, bad_channel, good])
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["ids"] == [good["id"]]
        (first, second) = body["rejected"]
        assert first["index"] == 0 and first["errors"][0]["field"] == "type"
        assert "not accepted from a CRM client" in first["errors"][0]["reason"]
        assert second["index"] == 1 and second["errors"][0]["field"] == "properties.channel"
        anonymous = contact(user_id=None, anonymous_id="visitor-1")
        r = await post(client, [anonymous])
        assert r.status_code == 422 and r.json()["rejected"][0]["errors"][0]["field"]
        r = await post(client, b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = await post(client, [good], {"Content-Type": "application/xml"})
        assert r.status_code == 415
    assert [b["id"] for _, b in await stored(fresh, "CRM")] == [good["id"]]
    assert len(await stored(fresh, "DEADLETTER")) == 4  # 2 + 1 events, 1 body


def test_a_crm_key_equal_to_a_site_key_or_internal_token_is_refused() -> None:
    with pytest.raises(ValueError, match="CRM key must differ"):
        GatewaySettings(site_keys=(SiteKey(key=SITE),), crm_keys=(SITE,))
    with pytest.raises(ValueError, match="CRM key must differ"):
        GatewaySettings(internal_tokens=(CRM_KEY,), crm_keys=(CRM_KEY,))

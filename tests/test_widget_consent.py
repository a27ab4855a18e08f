"""Consent from the widget, through the gateway on a real nats-server: a site key may grant
marketing only on an identity-proven event (`nerve_client.events.producers`), and such a grant is
what lets the signals service tell a CRM about the customer. Also: what a site key is told when it
sends a type Nerve does not know."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS

from nerve_client.errors import EventRejected
from nerve_client.events.producers import BEHAVIOURAL, admit
from tests.conftest import count, event
from tests.test_identity import SITE, VICTIM, make_app, reasons, token, with_token
from tests.test_signals import LOAN, signals, stored_signals

MARKETING = {"consent": {"analytics": True, "personalization": True, "marketing": True}}


@pytest.fixture
async def client(fresh: NATS, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(nats_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


def loan_interest(**who: Any) -> list[dict[str, Any]]:
    """What a widget sends for a visitor who looks at a loan and runs the simulator twice,
    each event carrying the banner's consent with marketing granted."""
    sim = {"simulator": "loan", "amount": 9000, "term_months": 36}
    fields = {"user_id": None, **who, "context": MARKETING}
    return [
        event("item_viewed", item_id="loan-personal", properties={"category": "loans"}, **fields),
        event("simulator_used", item_id="loan-personal", properties=sim, **fields),
        event("simulator_used", item_id="loan-personal", properties=sim, **fields),
    ]


async def post(client: httpx.AsyncClient, body: Any, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v1/events", content=orjson.dumps(body), headers=headers)


async def test_a_marketing_grant_is_accepted_only_on_an_identity_proven_event(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    proven = event("page_viewed", user_id=VICTIM, context=MARKETING)
    r = await post(client, proven, with_token(token()))
    assert r.status_code == 202, r.text  # before: 422, marketing never from a site key
    anonymous = event("page_viewed", user_id=None, anonymous_id="visitor-1", context=MARKETING)
    r = await post(client, anonymous, with_token(token()))  # a token, but the event names no one
    assert r.status_code == 422
    assert "identity token" in reasons(r.json())["context.consent.marketing"]
    r = await post(client, {**proven, "id": event()["id"]}, SITE)  # no token: proves nothing
    assert r.status_code == 422 and "context.consent.marketing" in reasons(r.json())
    r = await post(client, {**proven, "id": event()["id"]}, with_token(token("cust-other")))
    assert r.status_code == 422 and "context.consent.marketing" in reasons(r.json())
    withdrawn = {"consent": {"marketing": False}}
    r = await post(client, event(user_id=None, anonymous_id="visitor-1", context=withdrawn), SITE)
    assert r.status_code == 202  # withdrawing is always allowed
    assert await count(fresh, "ACTIVITY") == 2


async def test_an_identified_visitors_marketing_grant_lets_an_interest_signal_fire(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    async with signals(fresh, loan=LOAN):
        anon = await post(client, loan_interest(anonymous_id="visitor-2"), SITE)
        assert anon.status_code == 422  # anonymous grants refused: nothing stored
        r = await post(client, loan_interest(user_id=VICTIM), with_token(token()))
        assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
        for _ in range(200):
            found = await stored_signals(fresh)
            if found:
                break
            await asyncio.sleep(0.05)
    [signal] = found
    assert signal["user_id"] == VICTIM and signal["properties"]["topic"] == "loan"
    assert signal["properties"]["consent"]["marketing"] is True


def test_an_unknown_type_names_only_what_a_site_key_may_send_and_hints() -> None:
    with pytest.raises(EventRejected) as exc:
        admit("site", event("Product Viewed", user_id=None, anonymous_id="visitor-3"))
    [error] = exc.value.errors
    assert error.field == "type" and error.reason.endswith("did you mean item_viewed?")
    known = error.reason.split("(known: ")[1].split(")")[0].split(", ")
    assert set(known) == BEHAVIOURAL  # before: the whole catalogue, item_purchased and all
    with pytest.raises(EventRejected) as exc:  # a CloudEvents-style reverse-DNS prefix
        admit("site", event("com.shop.Product Viewed", user_id=None, anonymous_id="visitor-3"))
    assert exc.value.errors[0].reason.endswith("did you mean item_viewed?")
    with pytest.raises(EventRejected) as exc:
        admit("site", event("item_viewd", user_id=None, anonymous_id="visitor-3"))
    assert "did you mean item_viewed?" in exc.value.errors[0].reason
    with pytest.raises(EventRejected) as exc:
        admit("site", event("Order Completed", user_id=None, anonymous_id="visitor-3"))
    assert "item_purchased, which a site key may not send" in exc.value.errors[0].reason
    with pytest.raises(EventRejected) as exc:
        admit("server", event("Order Completed"))
    assert "did you mean item_purchased?" in exc.value.errors[0].reason
    ok = admit("site", event(user_id=VICTIM), identified=VICTIM)
    assert ok.user_id == VICTIM


async def test_the_gateway_tells_a_site_key_only_its_own_types_with_a_hint(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    r = await post(client, event("Product Viewed", user_id=None, anonymous_id="visitor-4"), SITE)
    assert r.status_code == 422
    reason = reasons(r.json())["type"]
    assert reason.endswith("did you mean item_viewed?"), reason
    assert "item_purchased" not in reason and "consent_updated" not in reason

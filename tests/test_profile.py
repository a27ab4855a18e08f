"""The projection alone: no broker needed."""

import random
from typing import Any

import orjson
import pytest

from engine.profiles import CannotApply, Profile, apply, content, new_profile, settle_floor
from nerve_client.events import parse_event
from tests.conftest import event

T0 = "2026-05-01T10:00:00Z"


def ev(etype: str, minute: int, **fields: Any) -> dict[str, Any]:
    data = event(etype, time=f"2026-05-01T10:{minute:02d}:00Z", **fields)
    return orjson.loads(parse_event(data).to_json())


def script() -> list[dict[str, Any]]:
    return [
        ev("page_viewed", 0),
        ev("user_identified", 1, anonymous_id="anon-7"),
        ev(
            "consent_updated",
            2,
            properties={"analytics": True, "personalization": True, "marketing": False},
        ),
        ev("item_viewed", 3, item_id="loan-car", properties={"category": "loans"}),
        ev(
            "simulator_used",
            4,
            item_id="loan-car",
            properties={"simulator": "car_loan", "amount": 15000, "term_months": 48},
        ),
        ev(
            "simulator_used",
            6,
            item_id="loan-car",
            properties={"simulator": "car_loan", "amount": 18000, "term_months": 60},
        ),
        ev("item_viewed", 7, item_id="fund-esg", properties={"category": "funds"}),
        ev("item_purchased", 9, item_id="loan-car", properties={"value": 1100.0}),
        ev(
            "recommendation_shown",
            10,
            properties={
                "recommendation_id": "r1",
                "slot": "home",
                "items": [
                    {"item_id": "fund-esg", "position": 0},
                    {"item_id": "card-gold", "position": 1},
                ],
            },
        ),
        ev("offer_dismissed", 11, item_id="card-gold", properties={"slot": "home"}),
        ev(
            "recommendation_clicked",
            12,
            item_id="fund-esg",
            properties={"recommendation_id": "r1", "slot": "home", "position": 0},
        ),
        ev(
            "consent_updated",
            13,
            properties={"analytics": True, "personalization": True, "marketing": True},
        ),
    ]


def project(events: list[dict[str, Any]], order: list[int] | None = None) -> dict[str, Any]:
    p = new_profile("u-1", "u-1", None)
    for i in order if order is not None else range(len(events)):
        apply(p, events[i], "activity", i + 1)
    return p


def test_a_scripted_history_gives_the_expected_profile() -> None:
    p = project(script())
    Profile.model_validate(p)
    assert p["counts"] == {
        "page_viewed": 1,
        "user_identified": 1,
        "consent_updated": 2,
        "item_viewed": 2,
        "simulator_used": 2,
        "item_purchased": 1,
        "recommendation_shown": 1,
        "offer_dismissed": 1,
        "recommendation_clicked": 1,
    }
    assert p["categories"] == {"loans": 1, "funds": 1}
    assert p["anonymous_ids"] == ["anon-7"]
    assert list(p["held"]) == ["loan-car"] and p["held"]["loan-car"]["value"] == 1100.0
    sim = p["simulators"]["car_loan"]
    assert sim["count"] == 2 and sim["last_parameters"]["amount"] == 18000
    assert p["offers"]["card-gold"]["dismissed"] == 1 and p["offers"]["card-gold"]["shown"] == 1
    assert p["offers"]["fund-esg"]["clicked"] == 1
    assert p["consent"]["marketing"] is True
    assert [r["item_id"] for r in p["recent_items"]][:2] == ["fund-esg", "loan-car"]
    assert p["positions"]["activity"]["max"] == 12


def test_any_order_gives_the_same_profile() -> None:
    events = script()
    reference = content(project(events))
    rnd = random.Random(3)
    for _ in range(20):
        order = list(range(len(events)))
        rnd.shuffle(order)
        assert content(project(events, order)) == reference


def test_redelivered_events_are_skipped_above_and_below_the_floor() -> None:
    events = script()
    p = project(events)
    before = content(p)
    assert not apply(p, events[3], "activity", 4)
    settle_floor(p, "activity", 10)
    assert p["positions"]["activity"]["applied"] == [11, 12]
    assert not apply(p, events[0], "activity", 1)
    assert not apply(p, events[11], "activity", 12)
    assert content(p) == before


def test_an_event_that_cannot_be_applied_changes_nothing() -> None:
    p = project(script())
    before = orjson.dumps(p)
    bad = ev("item_viewed", 20, item_id="x")
    bad["time"] = "yesterday"
    with pytest.raises(CannotApply, match="time"):
        apply(p, bad, "activity", 99)
    broken = ev(
        "simulator_used", 21, properties={"simulator": "loan", "amount": 1, "term_months": 2}
    )
    del broken["properties"]["simulator"]
    with pytest.raises(CannotApply, match="simulator"):
        apply(p, broken, "activity", 100)
    assert orjson.dumps(p) == before


def test_crm_contacts_are_kept_per_offer_and_conversion_counts_as_held() -> None:
    p = new_profile("u-1", "u-1", None)
    apply(
        p,
        ev(
            "crm_contact_logged",
            1,
            item_id="mort-fixed",
            properties={"channel": "phone", "outcome": "interested"},
        ),
        "crm",
        1,
    )
    apply(
        p,
        ev(
            "crm_contact_logged",
            5,
            item_id="mort-fixed",
            properties={"channel": "branch", "outcome": "converted"},
        ),
        "crm",
        2,
    )
    assert p["crm"]["mort-fixed"]["outcome"] == "converted"
    assert p["crm"]["mort-fixed"]["contacts"] == 2
    assert p["held"]["mort-fixed"]["source"] == "crm"
    assert p["positions"]["crm"]["max"] == 2

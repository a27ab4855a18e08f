from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from engine.cloudevents import from_cloudevent, to_cloudevent
from nerve_client.errors import EventRejected
from nerve_client.events import LATEST, event_types, json_schema, parse_event, parse_event_json
from tests.conftest import EXAMPLE_PROPERTIES, event


def reasons(data: Any) -> dict[str, str]:
    with pytest.raises(EventRejected) as info:
        parse_event(data)
    return {e.field: e.reason for e in info.value.errors}


def test_every_catalog_type_has_an_example_that_validates() -> None:
    assert set(EXAMPLE_PROPERTIES) == set(event_types())
    for etype in event_types():
        parsed = parse_event(event(etype))
        assert parsed.type == etype
        assert parsed.schema_version == LATEST[etype]


def test_wire_json_round_trips_and_is_normalised_to_utc() -> None:
    data = event("simulator_used", time="2026-03-01T10:00:00+02:00", user_id="ann@x.example")
    parsed = parse_event(data)
    wire = parsed.to_json()
    assert orjson.loads(wire)["time"] == "2026-03-01T08:00:00Z"
    assert parse_event_json(wire) == parsed
    assert parsed.subject == "activity.ann~40x~2Eexample.simulator_used"


def test_crm_types_are_stored_under_the_crm_stream() -> None:
    assert parse_event(event("crm_contact_logged")).subject == "crm.u-1.crm_contact_logged"


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"type": "teleported"}, "type", "unknown event type"),
        ({"id": "not-an-id"}, "id", "UUID"),
        ({"time": "2026-01-01T00:00:00"}, "time", "RFC 3339"),
        ({"time": 1767225600}, "time", "RFC 3339"),
        ({"schema_version": 9}, "schema_version", "unknown version"),
        ({"user_id": None}, "user_id", "required"),
        ({"user_id": "bad\nid"}, "user_id", "control"),
        ({"source": "Web Site"}, "source", "URI-reference"),
        ({"properties": {"page_type": "moon"}}, "properties.page_type", "home"),
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"context": {"ip": "1.2.3.4"}}, "context.ip", "unknown field"),
    ],
)
def test_bad_envelope_fields_are_named_with_a_reason(
    change: dict[str, Any], field: str, needle: str
) -> None:
    got = reasons(event("page_viewed", **change))
    assert field in got, got
    assert needle.lower() in got[field].lower()


def test_property_errors_name_the_nested_field() -> None:
    bad = event("simulator_used", properties={"simulator": "loan", "amount": -5, "colour": "red"})
    got = reasons(bad)
    assert "greater than 0" in got["properties.amount"]
    assert got["properties.colour"] == "unknown field"


def test_credit_simulators_need_a_term() -> None:
    bad = event("simulator_used", properties={"simulator": "mortgage", "amount": 200000})
    assert "term_months" in reasons(bad)["properties"]


def test_types_that_act_on_an_item_require_one() -> None:
    assert reasons(event("item_purchased", item_id=None)) == {
        "item_id": "required for item_purchased"
    }


def test_user_identified_needs_both_ids() -> None:
    assert "anonymous_id" in reasons(event("user_identified", anonymous_id=None))


def test_future_times_are_refused_but_a_little_clock_skew_is_not() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert parse_event(event(time=soon))
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    assert "future" in reasons(event(time=later))["time"]


def test_non_objects_and_bad_json_are_refused_whole() -> None:
    assert "JSON object" in reasons([1, 2])[""]
    with pytest.raises(EventRejected, match="not valid JSON"):
        parse_event_json(b"{nope")


def test_page_viewed_keeps_site_annotations_but_other_types_refuse_them() -> None:
    page = parse_event(event("page_viewed", properties={"page_type": "home", "campaign_x": 1}))
    assert orjson.loads(page.to_json())["properties"]["campaign_x"] == 1
    bad = event("item_viewed", properties={"category": "loans", "campaign_x": 1})
    assert reasons(bad) == {"properties.campaign_x": "unknown field"}


def test_json_schema_is_generated_for_every_type_and_for_the_union() -> None:
    for etype in event_types():
        schema = json_schema(etype)
        assert schema["properties"]["type"]["const"] == etype
        assert {"id", "type", "time"} <= set(schema["required"])
        assert schema["additionalProperties"] is False
    union = json_schema()
    assert len(union["oneOf"]) == len(event_types())
    assert union["discriminator"]["propertyName"] == "type"
    with pytest.raises(KeyError):
        json_schema("nope")


def test_cloudevents_map_one_to_one() -> None:
    data = event("item_viewed", user_id="u-9", source="web")
    ce = to_cloudevent(orjson.loads(parse_event(data).to_json()))
    assert ce["subject"] == "u-9" and ce["specversion"] == "1.0"
    assert parse_event(from_cloudevent(ce)) == parse_event(data)


def test_cloudevents_with_a_wrong_spec_or_unknown_data_are_refused() -> None:
    with pytest.raises(EventRejected, match="specversion"):
        from_cloudevent({"specversion": "0.3", "type": "page_viewed"})
    with pytest.raises(EventRejected, match=r"data\.oops"):
        from_cloudevent({"specversion": "1.0", "data": {"oops": 1}})


@pytest.mark.parametrize(
    ("char", "kind"),
    [
        ("\x00", "control"),
        ("\x7f", "control"),
        ("\x85", "control"),  # C1: NEL
        ("\x9b", "control"),  # C1: CSI, the terminal escape
        ("\u202e", "bidirectional"),  # RIGHT-TO-LEFT OVERRIDE
        ("\u2066", "bidirectional"),  # LEFT-TO-RIGHT ISOLATE
        ("\u200f", "bidirectional"),  # RIGHT-TO-LEFT MARK
        ("\u061c", "bidirectional"),  # ARABIC LETTER MARK
        ("\u200b", "invisible"),  # ZERO WIDTH SPACE
        ("\ufeff", "invisible"),  # BYTE ORDER MARK
        ("\u2028", "line separator"),
    ],
)
@pytest.mark.parametrize("field", ["user_id", "anonymous_id"])
def test_ids_with_control_bidi_or_invisible_characters_are_refused_with_the_code_point(
    char: str, kind: str, field: str
) -> None:
    got = reasons(event("page_viewed", **{"user_id": None, field: f"ann{char}ie"}))
    assert kind in got[field], got
    assert f"U+{ord(char):04X}" in got[field]


def test_visible_unicode_ids_are_still_accepted() -> None:
    assert parse_event(event(user_id="José Müller-Łukasz 李")).user_id == "José Müller-Łukasz 李"


def test_a_uuid_in_any_case_is_one_user_and_one_subject() -> None:
    lower = "0f8fad5b-d9cb-469f-a165-70867728950e"
    upper = parse_event(event(user_id=lower.upper(), anonymous_id=lower.upper()))
    assert upper.user_id == lower and upper.anonymous_id == lower
    assert upper.subject == parse_event(event(user_id=lower)).subject
    assert parse_event(event(user_id="Ann-B")).user_id == "Ann-B"  # other ids keep their case


def test_an_event_id_that_is_a_uuid_is_stored_lowercase_so_a_resend_deduplicates() -> None:
    eid = "0190a6e2-7c1d-7b3e-9f00-ABCDEFABCDEF"
    assert parse_event(event(id=eid)).id == eid.lower()
    ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert parse_event(event(id=ulid)).id == ulid


def test_time_may_lie_at_most_seven_days_before_received_at() -> None:
    now = datetime.now(UTC)
    stamp = now.isoformat()
    ok = event(time=(now - timedelta(days=6, hours=23)).isoformat(), received_at=stamp)
    assert parse_event(ok, now=now)
    old = event(time=(now - timedelta(days=8)).isoformat(), received_at=stamp)
    with pytest.raises(EventRejected) as info:
        parse_event(old, now=now)
    assert [(e.field, e.reason) for e in info.value.errors] == [
        ("time", "more than 7 days before received_at (older history: `nerve import`)")
    ]
    assert parse_event(old, now=now, max_age=None)  # a caller may lift the bound


def test_history_without_received_at_has_no_lower_bound() -> None:
    """`nerve import` and producers' clients send no `received_at`: years-old events pass."""
    now = datetime.now(UTC)
    assert parse_event(event(time="2019-05-01T10:00:00Z"), now=now)


def test_source_may_be_a_uri_reference_as_cloudevents_sends_it() -> None:
    for source in ("web", "https://shop.example/web", "/web", "urn:shop:web"):
        assert parse_event(event(source=source)).source == source
    assert "URI-reference" in reasons(event(source="web\n"))["source"]


def test_a_missing_type_is_required_not_unknown_none() -> None:
    got = reasons({k: v for k, v in event().items() if k != "type"})["type"]
    assert got.startswith("required (known: ") and "None" not in got
    assert reasons(event(type=7))["type"].startswith("must be a string, not a number")

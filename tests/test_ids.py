import uuid

from nerve_client.ids import canonical_id, derived_uuid7, unsafe_character, uuid7, uuid7_time_ms


def test_uuid7_has_version_variant_and_time() -> None:
    value = uuid7(1_700_000_000_123)
    parsed = uuid.UUID(value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert uuid7_time_ms(value) == 1_700_000_000_123
    assert uuid7() != uuid7()


def test_derived_ids_are_stable_and_distinct() -> None:
    a = derived_uuid7(1_700_000_000_000, "file", "line 1")
    assert a == derived_uuid7(1_700_000_000_000, "file", "line 1")
    assert a != derived_uuid7(1_700_000_000_000, "file", "line 2")
    assert uuid.UUID(a).version == 7


def test_canonical_id_lowercases_uuids_only() -> None:
    value = uuid7()
    assert canonical_id(value.upper()) == value
    assert canonical_id("User-ABC") == "User-ABC"
    assert canonical_id("01ARZ3NDEKTSV4RRFFQ69G5FAV") == "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def test_unsafe_character_names_the_first_bad_code_point() -> None:
    assert unsafe_character("plain-id@example.com") is None
    assert unsafe_character("a\u202eb\x00") is not None
    assert "U+202E" in (unsafe_character("a\u202eb\x00") or "")
    assert "U+0000" in (unsafe_character("a\x00") or "")

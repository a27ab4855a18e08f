import uuid

from engine.ids import derived_uuid7, uuid7, uuid7_time_ms


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

import random
import re

import pytest

from nerve_client.subjects import activity_subject, decode_token, user_token

TOKEN = re.compile(r"^[A-Za-z0-9_~-]+$")
TRICKY = [
    "alice",
    "alice@bank.example",
    "a.b.c",
    "*",
    ">",
    "with space",
    "tab\there",
    "~",
    "~~",
    "~41",
    "Ünïcödé-用户",
    "emoji-🙂",
    "-_-",
    "x" * 128,
]


@pytest.mark.parametrize("value", TRICKY)
def test_user_and_anonymous_tokens_are_subject_safe_and_reversible(value: str) -> None:
    for token, expected in (
        (user_token(value, None), (value, None)),
        (user_token(None, value), (None, value)),
    ):
        assert TOKEN.match(token), token
        assert decode_token(token) == expected


def test_random_ids_round_trip_and_never_collide() -> None:
    rnd = random.Random(7)
    alphabet = "ab.~*> _-@/é🙂~41"
    seen: dict[str, tuple[str | None, str | None]] = {}
    for _ in range(3000):
        value = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12)))
        for pair in ((value, None), (None, value)):
            token = user_token(*pair)
            assert decode_token(token) == pair
            assert seen.setdefault(token, pair) == pair, f"collision on {token}"


def test_safe_ids_pass_through_unchanged() -> None:
    assert user_token("u-123_X") == "u-123_X"
    assert activity_subject(user_token("u1"), "item_viewed") == "activity.u1.item_viewed"


def test_user_id_wins_over_anonymous_id_and_one_is_required() -> None:
    assert user_token("u1", "a1") == "u1"
    with pytest.raises(ValueError):
        user_token(None, None)


def test_stored_user_subjects_are_read_with_or_without_a_partition_token() -> None:
    from nerve_client.subjects import (
        SubjectError,
        logical_subject,
        split_user_subject,
        stored_partition,
    )

    assert split_user_subject("activity.alice.item_viewed") == ("alice", "item_viewed")
    assert split_user_subject("activity.alice.item_viewed.12") == ("alice", "item_viewed")
    assert logical_subject("crm.bob.crm_contact_logged.3") == "crm.bob.crm_contact_logged"
    assert logical_subject("activity.16.item_viewed") == "activity.16.item_viewed"  # a user "16"
    assert stored_partition("activity.16.item_viewed") is None
    assert stored_partition("activity.16.item_viewed.0") == 0
    with pytest.raises(SubjectError):
        split_user_subject("activity.alice.item_viewed.x")


def test_filters_and_transforms_of_partitioned_streams() -> None:
    from nerve_client.subjects import (
        ACTIVITY,
        CRM,
        partition_filter,
        partition_transform,
        stored_filter,
        transform_partitions,
    )

    src, dest = partition_transform(ACTIVITY, 16)
    assert src == "activity.*.*"
    assert dest == "activity.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(16,1)}}"
    assert transform_partitions(dest) == 16 and transform_partitions(None) == 0
    assert partition_filter(CRM, 3) == "crm.*.*.3"
    assert stored_filter("activity.*.item_viewed", True) == "activity.*.item_viewed.*"
    assert stored_filter("activity.*.item_viewed", False) == "activity.*.item_viewed"
    assert stored_filter("activity.alice.>", True) == "activity.alice.>"  # matches both forms
    assert stored_filter("reco.alice.home", True) == "reco.alice.home"  # not a user stream

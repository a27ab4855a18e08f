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

"""What the recommender keeps per user and slot, and the `recommendations_updated` it emits.

Broker-free: the service (`engine.services.recommender`) holds these; `explain` rebuilds them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.recommender.core import Outcome
from engine.recommender.triggers import QUIET_TYPES as QUIET_TYPES
from nerve_client.events import parse_event
from nerve_client.ids import uuid7
from nerve_client.subjects import decode_token


@dataclass
class Last:
    """The newest stored list of a (user, slot): its stream sequence (0: none) and content."""

    seq: int = 0
    signature: tuple[tuple[str, str], ...] | None = None
    event: dict[str, Any] | None = None


@dataclass
class UserState:
    token: str
    profile: dict[str, Any]
    last: dict[str, Last]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Stats:
    events: int = 0
    users: int = 0
    computed: int = 0
    published: int = 0
    unchanged: int = 0
    conflicts: int = 0
    requests: int = 0
    deadlettered: int = 0
    batches: int = 0
    reloads: int = 0


def signature(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a user sees of a list: its items and reasons, in order."""
    return tuple((i["item_id"], i["reason"]) for i in event["properties"]["items"])


_CHECKED: set[tuple[str, str | None, str | None]] = set()
CHECK_EVERY = 64


def build_event(
    token: str, outcome: Outcome, profile: dict[str, Any], now_ms: int, *, check: bool = False
) -> dict[str, Any]:
    """The `recommendations_updated` event of a computed list (envelope id = recommendation id).

    It is checked against its model (`nerve_client.events`) when `check`, the first time each
    (slot, model version, fallback) makes one, and then one time in `CHECK_EVERY`: the check
    costs more than computing the list (~50 us), and what varies between two lists of the same
    kind (ids the model was trained on, reasons, finite scores) is fixed by the same code."""
    rid = uuid7(now_ms)
    positions = profile.get("positions", {})
    user_id, anonymous_id = decode_token(token)
    event: dict[str, Any] = {
        "id": rid,
        "type": "recommendations_updated",
        "schema_version": 1,
        "time": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "source": "recommender",
        "properties": outcome.properties(
            rid,
            positions.get("activity", {}).get("max", 0),
            positions.get("crm", {}).get("max", 0),
        ),
    }
    if user_id is not None:
        event["user_id"] = user_id
    else:
        event["anonymous_id"] = anonymous_id
    key = (outcome.slot, outcome.model_version, outcome.fallback)
    if check or key not in _CHECKED or rid[-2:] < f"{256 // CHECK_EVERY:02x}":
        parse_event(event)
        if len(_CHECKED) > 10_000:
            _CHECKED.clear()
        _CHECKED.add(key)
    return event

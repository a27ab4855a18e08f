"""The poison run of `bench/faults.py`: malformed and mis-addressed messages written straight to
the bus (bypassing the gateway's checks), valid events behind them, and what became of both.

Each poison message is published on `activity.<victim>.item_viewed`; then one valid
`item_viewed` of the victim and one of each of `OTHERS` users. The run polls until every poison
message is in DEADLETTER (matched by its raw bytes) from each of `REQUIRED` — every service that
reads ACTIVITY, since each moves past what it refuses and nothing may be dropped silently (one
service's dead letter does not say that another did not act on the message) — and every valid
event is folded into its
user's profile (the profile counts exactly the valid events: a poison message folded in would
make it one more) and answered by a list whose `activity_seq` reaches it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from engine.bus import Bus, Outgoing
from engine.bus.reader import read_all
from engine.profiles.store import ProfileStore
from nerve_client.events import DeadLetter, parse_event
from nerve_client.ids import uuid7
from nerve_client.subjects import (
    DEADLETTER,
    RECOMMENDATIONS,
    activity_subject,
    reco_filter,
    user_token,
)

REQUIRED = ("profiles", "recommender", "signals", "warehouse")
OTHERS = 5


def _viewed(anonymous_id: str, item: str) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "type": "item_viewed",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "anonymous_id": anonymous_id,
        "item_id": item,
        "properties": {"category": "loans"},
    }


def poison_messages(victim: str, stranger: str) -> dict[str, bytes]:
    """The poison kinds by name: what a broken or hostile producer could write on the bus."""
    return {
        "json array": orjson.dumps([_viewed(victim, "item-1"), 2]),
        "json string": b'"item_viewed"',
        "not json": b"\xff\xfe{not json",
        "other user": orjson.dumps(_viewed(stranger, "item-2")),
    }


async def _deadlettered(nc: NATS, raws: dict[bytes, str]) -> dict[str, dict[str, str]]:
    """Per poison kind, the sources that dead-lettered it and their reasons."""
    found: dict[str, dict[str, str]] = {kind: {} for kind in raws.values()}
    for _, _, data in await read_all(nc.jetstream(), DEADLETTER):
        try:
            record = DeadLetter.model_validate_json(data)
        except ValueError:
            continue
        kind = raws.get(record.raw)
        if kind is not None and record.reason:
            found[kind].setdefault(record.source, record.reason)
    return found


async def _reflected(nc: NATS, want: dict[str, tuple[int, int]]) -> tuple[set[str], set[str]]:
    """Of the valid events' users (token -> (events, last seq)): those whose profile counts
    exactly their events, and those with a list computed at or after their last event."""
    store = (await ProfileStore.open(Bus(nc))).fresh()
    folded, listed = set(), set()
    js = nc.jetstream()
    for token, (events, seq) in want.items():
        profile = await store.read(token)
        if profile is not None and sum(profile.get("counts", {}).values()) == events:
            folded.add(token)
        for _, _, data in await read_all(js, RECOMMENDATIONS, subject=reco_filter(token)):
            if orjson.loads(data).get("properties", {}).get("activity_seq", 0) >= seq:
                listed.add(token)
                break
    return folded, listed


async def run(nc: NATS, timeout: float) -> dict[str, Any]:
    """Publish the poison and the valid events behind it; wait up to `timeout` s for the
    outcome; the figures and the invariants that failed."""
    bus = Bus(nc)
    tag = uuid.uuid4().hex[:6]
    victim, stranger = f"poison-{tag}-victim", f"poison-{tag}-stranger"
    subject = activity_subject(user_token(None, victim), "item_viewed")
    kinds = poison_messages(victim, stranger)
    valid = [_viewed(victim, "item-3")] + [
        _viewed(f"poison-{tag}-{i}", "item-4") for i in range(OTHERS)
    ]
    envelopes = [parse_event(e) for e in valid]
    started = time.monotonic()
    await bus.publish([Outgoing(subject, raw, uuid7()) for raw in kinds.values()])
    acks = await bus.publish([Outgoing.event(e) for e in envelopes])
    want = {
        user_token(None, e.anonymous_id): (1, a.seq) for e, a in zip(envelopes, acks, strict=True)
    }
    raws = {raw: kind for kind, raw in kinds.items()}
    seen_at: dict[str, float] = {}
    while True:
        found = await _deadlettered(nc, raws)
        now = time.monotonic() - started
        for kind, sources in found.items():
            if kind not in seen_at and all(s in sources for s in REQUIRED):
                seen_at[kind] = round(now, 2)
        folded, listed = await _reflected(nc, want)
        complete = len(seen_at) == len(kinds) and folded == listed == set(want)
        if complete or now > timeout:
            break
        await asyncio.sleep(0.25)
    rows = [
        {"kind": kind, "sources": sorted(found[kind]), "seconds": seen_at.get(kind),
         "reason": next(iter(found[kind].values()), "")[:90]}
        for kind in kinds
    ]  # fmt: skip
    bad = [
        f"{r['kind']}: dead-lettered by {r['sources'] or 'nobody'}, not by all of {list(REQUIRED)}"
        for r in rows
        if r["seconds"] is None
    ]
    if folded != set(want):
        bad.append(f"valid events not folded exactly once: {len(set(want) - folded)} users")
    if listed != set(want):
        bad.append(f"valid events without a list: {len(set(want) - listed)} users")
    return {
        "poison": rows,
        "valid_users": len(want),
        "profiles_updated": len(folded),
        "lists_published": len(listed),
        "seconds": round(time.monotonic() - started, 2),
        "violations": bad,
    }

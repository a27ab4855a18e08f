"""The audit of `bench/faults.py`: what the log and each downstream effect hold, against the
ledger.

Classes of events (by id), read from ACTIVITY once every consumer has caught up:

* lost         acknowledged (in a 202's `ids`) but not in ACTIVITY
* duplicated   stored more than once in ACTIVITY
* unexpected   stored, but never attempted by the client
* never acked  attempted, never in a 202 (allowed; how many were stored anyway is reported)

Downstream, against what ACTIVITY holds of the load's users:

* profiles     each profile's event count (the sum of `counts`) against that user's events in
               the log: short = events not folded (lost downstream), extra = folded twice
* warehouse    the Parquet rows: stored events without a row, and rows beyond one per event
* recommender  every user with an `item_viewed` in the log has a list on every slot, and no
               subject holds the same list twice in a row (the service publishes a list only
               when it changed, so with no model the first event of a user is the one that
               shows; this proves the consumer reached every user, not that it folded each one)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from nats.aio.client import Client as NATS

from bench.ledger import Ledger
from engine.bus import Bus
from engine.bus.reader import read_all
from engine.profiles.store import ProfileStore
from engine.settings import DEFAULT_PARTITIONS
from engine.warehouse import Warehouse
from nerve_client.subjects import ACTIVITY, RECOMMENDATIONS, split_user_subject, user_token

CONSUMERS = ("profiles", *(f"recommender-p{p:02d}" for p in range(DEFAULT_PARTITIONS)))
"""The durable consumers of ACTIVITY whose progress the audit waits for (the recommender's: one
per partition, `engine.bus.partitioned`)."""
SLOTS = ("home", "similar", "trending")


@dataclass
class Stored:
    """ACTIVITY as read back: sequences by event id, and per user token its events."""

    last_seq: int = 0
    seqs: dict[str, list[int]] = field(default_factory=dict)
    by_token: Counter[str] = field(default_factory=Counter)
    viewers: set[str] = field(default_factory=set)  # tokens with an item_viewed


async def read_stored(nc: NATS, prefix: str) -> Stored:
    """What ACTIVITY holds of the users whose anonymous ids start with `prefix-`."""
    out = Stored()
    mine = user_token(None, f"{prefix}-")
    for seq, subject, data in await read_all(nc.jetstream(), ACTIVITY):
        out.last_seq = max(out.last_seq, seq)
        try:
            token, etype = split_user_subject(subject)
            if not token.startswith(mine):
                continue
            event = orjson.loads(data)
        except (orjson.JSONDecodeError, ValueError):
            continue
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            continue
        out.seqs.setdefault(event["id"], []).append(seq)
        out.by_token[token] += 1
        if etype == "item_viewed":
            out.viewers.add(token)
    return out


async def caught_up(nc: NATS, warehouse: Path | None, patience: float) -> dict[str, bool]:
    """Wait (up to `patience` s) until each durable consumer has acked the whole of ACTIVITY
    and the warehouse has recorded its last sequence; which of them got there."""
    js = nc.jetstream()
    deadline = time.monotonic() + patience
    done: dict[str, bool] = {}
    while True:
        last = (await js.stream_info(ACTIVITY)).state.last_seq
        for name in CONSUMERS:
            try:
                info = await js.consumer_info(ACTIVITY, name)
            except Exception:  # not created (the service never ran): not caught up
                done[name] = False
                continue
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            whole = name == "profiles"  # a partition's consumer sees only its share of ACTIVITY
            idle = info.num_pending == 0 and info.num_ack_pending == 0
            done[name] = idle and (floor >= last or not whole)
        if warehouse is not None:
            done["warehouse"] = Warehouse(warehouse).state()["last_seq"] >= last
        if all(done.values()) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.2)


def classify(ledger: Ledger, stored: Stored) -> dict[str, int]:
    acked = ledger.acked()
    attempted = set(ledger.entries)
    never = attempted - acked
    return {
        "attempted": len(attempted),
        "acked": len(acked),
        "stored": len(stored.seqs),
        "resent": sum(1 for e in ledger.entries.values() if e.attempts > 1),
        "lost": len(acked - stored.seqs.keys()),
        "duplicated": sum(1 for s in stored.seqs.values() if len(s) > 1),
        "unexpected": len(stored.seqs.keys() - attempted),
        "never_acked": len(never),
        "never_acked_stored": len(never & stored.seqs.keys()),
    }


async def profile_counts(nc: NATS, tokens: set[str], stored: Stored) -> dict[str, int]:
    """Events the profiles did not fold (short) or folded twice (extra), over `tokens`."""
    live = await (await ProfileStore.open(Bus(nc))).read_all()
    short = extra = missing = 0
    for token in tokens:
        want = stored.by_token[token]
        profile = live.get(token)
        if profile is None:
            missing += 1
            short += want
            continue
        got = sum(profile.get("counts", {}).values())
        short += max(0, want - got)
        extra += max(0, got - want)
    return {"profiles_missing": missing, "profile_short": short, "profile_extra": extra}


def warehouse_rows(root: Path, stored: Stored, ids: set[str]) -> dict[str, int]:
    """Stored events of `ids` with no Parquet row, and rows beyond one per event."""
    rows: Counter[str] = Counter()
    for path in Warehouse(root).files():
        rows.update(i for i in pq.read_table(path, columns=["id"])["id"].to_pylist() if i in ids)
    in_log = ids & stored.seqs.keys()
    return {
        "warehouse_missing": len(in_log - rows.keys()),
        "warehouse_extra": sum(n - 1 for n in rows.values() if n > 1),
    }


async def reco_lists(nc: NATS, tokens: set[str], stored: Stored) -> dict[str, int]:
    """Users with an item_viewed but no list on some slot; lists repeated on a subject."""
    seen: dict[tuple[str, str], list[Any]] = {}
    for _, subject, data in await read_all(nc.jetstream(), RECOMMENDATIONS):
        token, slot = split_user_subject(subject)
        if token in tokens:
            items = orjson.loads(data).get("properties", {}).get("items", [])
            seen.setdefault((token, slot), []).append([i.get("item_id") for i in items])
    viewers = tokens & stored.viewers
    missing = sum(1 for t in viewers if any((t, s) not in seen for s in SLOTS))
    repeats = sum(1 for lists in seen.values() for a, b in pairwise(lists) if a == b)
    return {"reco_users_without_lists": missing, "reco_repeated_lists": repeats}


async def audit(
    nc: NATS, ledger: Ledger, prefix: str, warehouse: Path | None, patience: float
) -> dict[str, Any]:
    """Every figure of one scenario's ledger (its users: `prefix-*`) against the log and the
    downstream effects."""
    progress = await caught_up(nc, warehouse, patience)
    stored = await read_stored(nc, prefix)
    out: dict[str, Any] = classify(ledger, stored)
    tokens = {e.token for e in ledger.entries.values()}
    out |= await profile_counts(nc, tokens, stored)
    if warehouse is not None:
        out |= warehouse_rows(warehouse, stored, set(ledger.entries))
    out |= await reco_lists(nc, tokens, stored)
    out["caught_up"] = progress
    return out


LOSS_FIELDS = (
    "lost",
    "duplicated",
    "unexpected",
    "profiles_missing",
    "profile_short",
    "profile_extra",
    "warehouse_missing",
    "warehouse_extra",
    "reco_users_without_lists",
    "reco_repeated_lists",
)


def violations(figures: dict[str, Any]) -> list[str]:
    """The invariants of an audit that do not hold, each as `field=value`."""
    bad = [f"{k}={figures[k]}" for k in LOSS_FIELDS if figures.get(k)]
    bad += [f"not caught up: {k}" for k, ok in figures.get("caught_up", {}).items() if not ok]
    return bad

"""Erasure of one user (`nerve forget`): every stored copy, securely, and a trace without data.

What is removed, for the user's token and every anonymous id linked to it by login:
ACTIVITY (`activity.<user>.>`), CRM (`crm.<user>.>`), RECOMMENDATIONS (`reco.<user>.*`),
SIGNALS (`signals.*.<user>`), the user's data key (which makes every revision of the profile,
wherever its bytes still lie, unreadable: see `keyring`) and the profile's present revision, and
DEADLETTER records whose raw bytes mention one of the ids. Each message is deleted by sequence
with the server's secure erase, which overwrites its bytes in the block files; a filtered purge
would only mark them deleted and leave them readable on disk until the block is compacted.

Running services are told on the core subject `nerve.control.forget` (not stored) to drop the
user from their caches. Then a `user_forgotten` event with counts only is appended to ACTIVITY,
so the log shows that an erasure happened without saying whose.

The warehouse's Parquet files on this machine (`<data dir>/warehouse`) are rewritten without the
user's rows. A warehouse kept elsewhere, and files given to `nerve import`, are not reached.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.bus import Outgoing, Publisher
from engine.bus.consumer import Batch, scan
from engine.bus.kv import erase_subject
from engine.events import parse_event
from engine.ids import uuid7
from engine.profiles.store import ProfileStore
from engine.subjects import decode_token, user_token
from engine.warehouse import Warehouse

FORGET_SUBJECT = "nerve.control.forget"


@dataclass
class Erasure:
    erasure_id: str
    tokens: list[str]
    erased: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.erased.values())


async def forget(
    nc: Any, token: str, publisher: Publisher, warehouse: Path | None = None
) -> Erasure:
    """Erase everything stored about the user whose subject token is `token`, including the
    rows of the warehouse under `warehouse` when given (one on this machine's data dir)."""
    js = nc.jetstream()
    profiles = await ProfileStore.open(nc)
    stored = await profiles.read(token)
    linked = stored.get("anonymous_ids", []) if stored else []
    tokens = [token] + [user_token(None, a) for a in linked]
    report = Erasure(uuid7(), tokens)

    def add(name: str, n: int) -> None:
        report.erased[name] = report.erased.get(name, 0) + n

    for t in tokens:
        await nc.publish(FORGET_SUBJECT, t.encode())
        add("ACTIVITY", await erase_subject(js, "ACTIVITY", f"activity.{t}.>"))
        add("CRM", await erase_subject(js, "CRM", f"crm.{t}.>"))
        add("RECOMMENDATIONS", await erase_subject(js, "RECOMMENDATIONS", f"reco.{t}.*"))
        add("SIGNALS", await erase_subject(js, "SIGNALS", f"signals.*.{t}"))
        add("profiles", await profiles.erase(t))
    add("DEADLETTER", await _erase_deadletters(js, tokens))
    if warehouse is not None and warehouse.exists():
        add("warehouse rows", await asyncio.to_thread(Warehouse(warehouse).erase, set(tokens)))
    await nc.publish(FORGET_SUBJECT, token.encode())  # again: a batch may have been in flight
    await nc.flush()
    event = parse_event(
        {
            "id": uuid7(),
            "type": "user_forgotten",
            "time": datetime.now(UTC).isoformat(),
            "source": "nerve",
            "properties": {"erasure_id": report.erasure_id, "erased": report.erased},
        }
    )
    await publisher.publish([Outgoing.event(event)])
    return report


async def _erase_deadletters(js: Any, tokens: list[str]) -> int:
    needles = []
    for t in tokens:
        user, anon = decode_token(t)
        needles.append(orjson.dumps(user or anon))  # the id as a JSON string, quotes included
    hits: list[int] = []

    def handle(batch: Batch) -> None:
        for seq, _, data in batch:
            try:
                raw = base64.b64decode(orjson.loads(data)["raw_b64"])
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                raw = data
            if any(n in raw for n in needles):
                hits.append(seq)

    await scan(js, "DEADLETTER", handle)
    for seq in hits:
        await js.delete_msg("DEADLETTER", seq)
    return len(hits)

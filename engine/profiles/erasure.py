"""Erasure of one user (`nerve forget`): every stored copy, securely, and a trace without data.

What is removed, for the user's token and every anonymous id linked to it by login:
ACTIVITY (`activity.<user>.>`), CRM (`crm.<user>.>`), RECOMMENDATIONS (`reco.<user>.*`),
SIGNALS (`signals.*.<user>`), the user's data key (which makes every revision of the profile,
wherever its bytes still lie, unreadable: see `keyring`) and the profile's present revision, and
DEADLETTER records whose raw bytes mention one of the ids. Each message is deleted by sequence
with the server's secure erase, which overwrites its bytes in the block files; a filtered purge
would only mark them deleted and leave them readable on disk until the block is compacted.

Before anything is erased, a tombstone is written for each token (`engine.profiles.tombstones`):
the services check it on the serving path, so no request or late event creates a list, a
profile or a signal under the id again.

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

import orjson

from engine.bus import Bus
from engine.bus.consumer import Batch
from engine.profiles.store import ProfileStore
from engine.profiles.tombstones import Tombstones
from engine.warehouse import Warehouse
from nerve_client.events import parse_event
from nerve_client.ids import uuid7
from nerve_client.subjects import DEADLETTER, decode_token, user_filters, user_token

__all__ = ["Erasure", "forget"]


@dataclass
class Erasure:
    erasure_id: str
    tokens: list[str]
    erased: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.erased.values())


async def forget(bus: Bus, token: str, warehouse: Path | None = None) -> Erasure:
    """Erase everything stored about the user whose subject token is `token`, including the
    rows of the warehouse under `warehouse` when given (one on this machine's data dir)."""
    profiles = await ProfileStore.open(bus)
    stored = await profiles.read(token)
    linked = stored.get("anonymous_ids", []) if stored else []
    tokens = [token] + [user_token(None, a) for a in linked]
    report = Erasure(uuid7(), tokens)

    def add(name: str, n: int) -> None:
        report.erased[name] = report.erased.get(name, 0) + n

    tombstones = await Tombstones.open(bus)
    for t in tokens:
        await tombstones.add(t)  # first: from here on nothing is created under the id
        await bus.announce_forget(t)
        for stream, subject in user_filters(t).items():
            add(stream, await bus.erase_subject(stream, subject))
        add("profiles", await profiles.erase(t))
    add(DEADLETTER, await _erase_deadletters(bus, tokens))
    if warehouse is not None and warehouse.exists():
        add("warehouse rows", await asyncio.to_thread(Warehouse(warehouse).erase, set(tokens)))
    await bus.announce_forget(token)  # again: a batch may have been in flight
    event = parse_event(
        {
            "id": uuid7(),
            "type": "user_forgotten",
            "time": datetime.now(UTC).isoformat(),
            "source": "nerve",
            "properties": {"erasure_id": report.erasure_id, "erased": report.erased},
        }
    )
    await bus.publish_events([event])
    return report


async def _erase_deadletters(bus: Bus, tokens: list[str]) -> int:
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

    await bus.scan(DEADLETTER, handle)
    await bus.erase(DEADLETTER, hits)
    return len(hits)

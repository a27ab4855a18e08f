"""The item catalogue: what can be recommended, with the attributes slots filter on.

Items are upserted into the CATALOG stream (`catalog.item.<item>`, the latest per item wins;
`nerve catalog load FILE`). Services keep the whole catalogue in memory, read at start and
followed live. An empty catalogue means "no catalogue": every item the model knows is a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.bus import Bus, Outgoing
from nerve_client.errors import FieldError
from nerve_client.events import DeadLetter
from nerve_client.events.items import ITEM_ID, Item, parse_item
from nerve_client.ids import derived_uuid7
from nerve_client.subjects import catalog_subject

__all__ = ["ITEM_ID", "Item", "ItemCatalog", "item_subject", "load_lines", "parse_item"]

item_subject = catalog_subject
"""`catalog.item.<item>` (kept under this name for the tests and benchmarks that use it)."""


class ItemCatalog:
    """The catalogue in memory: item id -> `Item`."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self.items: dict[str, Item] = {i.item_id: i for i in items}
        self.refused = 0
        self.version = 0
        """Counts the updates applied (what is compiled from the catalogue is keyed by it)."""

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def name(self, item_id: str) -> str:
        item = self.items.get(item_id)
        return item.name if item is not None and item.name else item_id

    def update(self, batch: Iterable[tuple[int, str, bytes]]) -> None:
        """Apply CATALOG messages (sequence, subject, payload); bad ones are counted."""
        for _, _, data in batch:
            try:
                item = parse_item(data)
            except ValueError:
                self.refused += 1
                continue
            self.items[item.item_id] = item
            self.version += 1

    def to_json(self, item_id: str) -> dict[str, Any] | None:
        item = self.items.get(item_id)
        return orjson.loads(item.model_dump_json(exclude_none=True)) if item else None


async def load_lines(path: Path, bus: Bus) -> tuple[int, list[str]]:
    """Publish every item of a JSON Lines file to CATALOG (msg id: a hash of the line, so a
    re-load stores nothing new); refused lines go to DEADLETTER. Returns (accepted, reasons)."""
    now = datetime.now(UTC)
    good: list[Outgoing] = []
    dead: list[Outgoing] = []
    refused: list[str] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = parse_item(raw)
        except ValueError as exc:
            refused.append(f"line {number}: {exc}")
            record = DeadLetter.build(
                "catalog", raw, [FieldError("", str(exc))], now, f"{path.name}:{number}"
            )
            dead.append(Outgoing.deadletter(record))
            continue
        msg_id = derived_uuid7(0, "catalog", raw.decode(errors="replace"))
        good.append(
            Outgoing(catalog_subject(item.item_id), item.model_dump_json().encode(), msg_id)
        )
    await bus.publish(good + dead)
    return len(good), refused

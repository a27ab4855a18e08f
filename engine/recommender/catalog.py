"""The item catalogue: what can be recommended, with the attributes slots filter on.

Items are upserted into the CATALOG stream (`catalog.item.<item>`, the latest per item wins;
`nerve catalog load FILE`). Services keep the whole catalogue in memory, read at start and
followed live. An empty catalogue means "no catalogue": every item the model knows is a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import FieldError
from engine.subjects import item_token

ITEM_ID = r"^[^\x00-\x1f\x7f]{1,128}$"


class Item(BaseModel):
    """One catalogue entry. `attributes` is free (string, number or boolean values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    item_id: str = Field(pattern=ITEM_ID)
    name: str = Field(default="", max_length=300)
    category: str | None = Field(default=None, max_length=64)
    value: float | None = Field(default=None, ge=0, description="Worth of an acquisition")
    url: str | None = Field(default=None, max_length=2000)
    image: str | None = Field(default=None, max_length=2000)
    available: bool = True
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)


def item_subject(item_id: str) -> str:
    """`catalog.item.<item>`, the item id made token-safe like a user id."""
    return f"catalog.item.{item_token(item_id)}"


def parse_item(raw: bytes) -> Item:
    """An item from JSON bytes, or `ValueError` naming the first bad field."""
    try:
        return Item.model_validate_json(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        raise ValueError(str(FieldError(field, e["msg"]))) from None


class ItemCatalog:
    """The catalogue in memory: item id -> `Item`."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self.items: dict[str, Item] = {i.item_id: i for i in items}
        self.refused = 0

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

    def to_json(self, item_id: str) -> dict[str, Any] | None:
        item = self.items.get(item_id)
        return orjson.loads(item.model_dump_json(exclude_none=True)) if item else None

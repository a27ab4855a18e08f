"""The catalogue item: what `catalog.item.<item>` holds (the latest per item wins), and the
part of it the gateway adds to each entry of a served list (`ItemDetails`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nerve_client.errors import FieldError

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


class ItemDetails(BaseModel):
    """What a served list says of an item it recommends: the catalogue entry's display fields
    (`items[].item` of `GET /v1/recommendations/{user}` and its live stream). A field the
    catalogue does not set is left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(max_length=300, description="Empty when the catalogue names none")
    url: str | None = Field(default=None, max_length=2000)
    image: str | None = Field(default=None, max_length=2000)
    category: str | None = Field(default=None, max_length=64)
    value: float | None = Field(default=None, ge=0, description="Worth of an acquisition")


DETAIL_FIELDS = tuple(ItemDetails.model_fields)


def details(item: Item) -> dict[str, Any]:
    """The `ItemDetails` of `item` as JSON-ready values, unset fields left out."""
    return {f: v for f in DETAIL_FIELDS if (v := getattr(item, f)) is not None}


def parse_item(raw: bytes) -> Item:
    """An item from JSON bytes, or `ValueError` naming the first bad field."""
    try:
        return Item.model_validate_json(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        raise ValueError(str(FieldError(field, e["msg"]))) from None

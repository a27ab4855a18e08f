"""The catalogue item: what `catalog.item.<item>` holds (the latest per item wins)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import FieldError

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


def parse_item(raw: bytes) -> Item:
    """An item from JSON bytes, or `ValueError` naming the first bad field."""
    try:
        return Item.model_validate_json(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        raise ValueError(str(FieldError(field, e["msg"]))) from None

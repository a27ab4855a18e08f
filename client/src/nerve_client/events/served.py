"""`ServedList`: a user's list as the gateway serves it, over HTTP and on the live stream.

It is the stored `recommendations_updated` event with, in each entry the catalogue knows,
`item`: that item's display fields (`ItemDetails`). The log's contract stays
`recommendations_updated` (what the recommender stores on `reco.<user>.<slot>` and validates
against); this is the HTTP contract, published beside the events' schemas
(`nerve schema served_list`) and used as the response schema in the gateway's OpenAPI.

A list served while an experiment runs (`nerve experiments`) carries its `experiment` id and
`variant` (`control` or `challenger`): a page that reports `recommendation_shown` and
`recommendation_clicked` with the list's `recommendation_id` is all the attribution needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model

from nerve_client.events.catalog import RecommendationsUpdated
from nerve_client.events.envelope import LATEST, MODELS
from nerve_client.events.items import ItemDetails

SERVED_LIST = "served_list"
"""The name `nerve schema` publishes the served list's JSON Schema under."""


class ServedEntry(RecommendationsUpdated.Entry):
    """One entry of a served list: the stored entry and the item's catalogue details."""

    item: ItemDetails | None = Field(
        default=None, description="The item's catalogue entry; absent when the catalogue lacks it"
    )


ServedProperties = create_model(
    "ServedProperties",
    __base__=RecommendationsUpdated,
    __doc__="The properties of a served list: those of recommendations_updated, enriched.",
    items=(list[ServedEntry], Field(max_length=100)),
)

_EVENT = "recommendations_updated"
ServedList: type[BaseModel] = create_model(
    "ServedList",
    __base__=MODELS[(_EVENT, LATEST[_EVENT])],
    __doc__="A user's list for a slot as the gateway serves it: the stored "
    "recommendations_updated event, each entry with its item's catalogue details (`item`).",
    properties=(ServedProperties, ...),
)

DOCUMENTS: dict[str, type[BaseModel]] = {SERVED_LIST: ServedList}
"""What the gateway serves that is not an event, by the name `nerve schema` knows it by."""


def document_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a served document (`DOCUMENTS`); `KeyError` for an unknown name."""
    return DOCUMENTS[name].model_json_schema(mode="serialization")

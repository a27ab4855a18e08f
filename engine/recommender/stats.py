"""Click-through rate per slot and model version, computed from the log.

Impressions (`recommendation_shown`), clicks (`recommendation_clicked`) and dismissals
(`offer_dismissed`) since a time are read from ACTIVITY with wildcard filters; each is
attributed through its `recommendation_id` to the slot and model version of the
`recommendations_updated` event that served it (RECOMMENDATIONS, read from a day earlier). An id
the stream no longer holds (20 kept per user and slot) counts under version `unknown`.
CTR = clicks / impressions, where an impression is one list shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from engine.bus import Bus
from engine.bus.consumer import Batch
from nerve_client.subjects import ACTIVITY, RECOMMENDATIONS, type_filter

ATTRIBUTION_MARGIN = timedelta(days=1)


@dataclass
class SlotStats:
    slot: str
    model_version: str
    impressions: int = 0
    items_shown: int = 0
    clicks: int = 0
    dismissals: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "model_version": self.model_version,
            "impressions": self.impressions,
            "items_shown": self.items_shown,
            "clicks": self.clicks,
            "dismissals": self.dismissals,
            "ctr": round(self.ctr, 6),
        }


async def click_through(bus: Bus, since: datetime) -> list[SlotStats]:
    """Per slot and model version, what was shown, clicked and dismissed since `since`."""
    served: dict[str, tuple[str, str]] = {}

    def on_reco(batch: Batch) -> None:
        for _, _, data in batch:
            try:
                props = orjson.loads(data)["properties"]
                served[props["recommendation_id"]] = (
                    props["slot"],
                    props.get("model_version") or "none",
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue

    await bus.scan(RECOMMENDATIONS, on_reco, since=since - ATTRIBUTION_MARGIN)
    rows: dict[tuple[str, str], SlotStats] = {}

    def row(props: dict[str, Any]) -> SlotStats:
        slot, version = served.get(props.get("recommendation_id") or "", (None, "unknown"))
        slot = slot or props.get("slot") or "?"
        key = (slot, version)
        if key not in rows:
            rows[key] = SlotStats(slot, version)
        return rows[key]

    def counter(kind: str) -> Callable[[Batch], None]:
        def handle(batch: Batch) -> None:
            for _, _, data in batch:
                try:
                    props = orjson.loads(data).get("properties") or {}
                except orjson.JSONDecodeError:
                    continue
                if kind == "shown":
                    r = row(props)
                    r.impressions += 1
                    r.items_shown += len(props.get("items") or ())
                elif kind == "clicked":
                    row(props).clicks += 1
                elif props.get("recommendation_id"):
                    row(props).dismissals += 1

        return handle

    for etype, kind in (
        ("recommendation_shown", "shown"),
        ("recommendation_clicked", "clicked"),
        ("offer_dismissed", "dismissed"),
    ):
        await bus.scan(ACTIVITY, counter(kind), subject=type_filter(etype), since=since)
    return sorted(rows.values(), key=lambda r: (r.slot, r.model_version))

"""`nerve explain`: the inputs behind a recommendation, reconstructed from the log and the
registry (nothing is kept on the side for it).

1. Find the `recommendations_updated` event with that id in RECOMMENDATIONS (the user's subjects
   only when the user is given, else the whole stream).
2. Replay the user's ACTIVITY and CRM events up to the sequences the recommendation says it
   reflects, with the profiles projection: the profile it was computed from.
3. Load the model version it names from the registry, and recompute the slot at the time it was
   made, with the slot configuration and catalogue of today: the scores, the reasons, and each
   candidate a rule removed.
4. Compare the recomputed list with the stored one. They differ only when something outside the
   log changed since: the slot configuration, the catalogue, or a profile the recommender
   loaded from the bucket that held events beyond those sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from engine.bus import Bus, Refusal, decode
from engine.bus.consumer import Batch
from engine.profiles.profile import apply, settle_floor
from engine.profiles.store import blank
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Loaded, Outcome, Serving
from engine.recommender.slots import SlotsConfig
from models.base import load_packed
from nerve_client.errors import NerveError
from nerve_client.subjects import (
    ACTIVITY,
    CATALOG,
    CRM,
    RECOMMENDATIONS,
    SHORT,
    reco_filter,
    user_filters,
    user_token,
)


class NotFound(NerveError):
    pass


class _Found(Exception):
    def __init__(self, seq: int, event: dict[str, Any]) -> None:
        self.seq, self.event = seq, event


@dataclass
class Explanation:
    seq: int
    stored: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    outcome: Outcome | None = None
    card: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        if self.outcome is None:
            return False
        stored = [(i["item_id"], i["reason"]) for i in self.stored["properties"]["items"]]
        return stored == list(self.outcome.signature())


async def find(
    bus: Bus,
    rid: str,
    user: str | None = None,
    anonymous: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(RECOMMENDATIONS sequence, event) of recommendation `rid`."""
    subject = None
    if user is not None:
        token = user_token(None, user) if anonymous else user_token(user)
        subject = reco_filter(token)
    needle = rid.encode()

    def handle(batch: Batch) -> None:
        for seq, _, data in batch:
            if needle in data:
                event = orjson.loads(data)
                if event.get("id") == rid:
                    raise _Found(seq, event)
        if progress:
            progress(len(batch))

    try:
        await bus.scan(RECOMMENDATIONS, handle, subject=subject)
    except _Found as hit:
        return hit.seq, hit.event
    where = f"for {user!r}" if user else "in RECOMMENDATIONS"
    raise NotFound(f"no recommendation {rid!r} {where} (kept: 20 per user and slot, 30 days)")


async def explain(
    bus: Bus,
    rid: str,
    config: SlotsConfig,
    *,
    user: str | None = None,
    anonymous: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Explanation:
    """Rebuild recommendation `rid` from the log and the registry (see the module docstring)."""
    seq, stored = await find(bus, rid, user, anonymous, progress)
    out = Explanation(seq, stored)
    props = stored["properties"]
    token = user_token(stored.get("user_id"), stored.get("anonymous_id"))
    profile = blank(token)
    filters = user_filters(token)
    for stream, upto in ((ACTIVITY, props["activity_seq"]), (CRM, props["crm_seq"])):
        if not upto:
            continue
        short = SHORT[stream]
        for s, subject, data in await bus.read_all(stream, filters[stream]):
            if s > upto:
                break
            record = decode(stream, s, subject, data)  # refused live, so skipped here too
            if isinstance(record, Refusal):
                continue
            event = record.event
            if apply(profile, event, short, s):
                settle_floor(profile, short, s)
                out.events.append({"stream": stream, "seq": s, **event})
    slot = props["slot"]
    if slot not in config.slots:
        out.notes.append(f"slot {slot!r} is no longer configured: cannot recompute")
        return out
    served_by = props.get("served_by") or slot
    models: dict[str, Loaded] = {}
    version = props.get("model_version")
    if version:
        registry = await bus.registry()
        out.card = await registry.card(version)
        artifact = await registry.artifact(version)
        model = load_packed(artifact)
        registry_slot = config.model_slot(served_by) if served_by in config.slots else served_by
        models[registry_slot] = Loaded(registry_slot, version, model.name, model)
    catalog = ItemCatalog()
    await bus.scan(CATALOG, catalog.update)
    now_ms = int(datetime.fromisoformat(stored["time"]).timestamp() * 1000)
    serving = Serving(config, catalog, models)
    out.outcome = serving.recommend(slot, profile, now_ms, context_item=props.get("anchor"))
    if not out.matches:
        out.notes.append(
            "the recomputed list differs from the stored one: the slot configuration or the "
            "catalogue changed since, or the recommender's profile held events beyond these"
        )
    return out

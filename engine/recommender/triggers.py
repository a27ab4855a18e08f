"""Which slots an event can change: the recommender recomputes only those.

The rule, derived from the slot configuration and the models that serve it (never a list of
slot names): an event changes some *parts* of the profile (`CHANGES`, read off the profiles
projection, `engine.profiles.profile.apply`), and a slot *reads* some parts (`slot_reads`); the
event recomputes the slot when the two meet, along the slot's whole fallback chain (any slot of
it may end up serving the list).

A slot reads
- `history` (recent items and holdings) when its model's scores depend on the history
  (`batch.reads`: not a popularity model), when it is `similar` (the anchor is the last item),
  when `min_history > 0` (the cold-start boundary) or with `exclude_seen`;
- `profile` (any field: counts, categories, simulators...) when its model reads the profile
  (next best offer) or it has an eligibility rule (any field may be named);
- `consent` when it may personalise (a model that reads the user, `similar`, `min_history`);
- `held` with `exclude_held`, `offers` with a frequency cap or `dismissed_days`, `crm` with
  `contacted_days` or `declined_days`.

So with the default slots an `item_viewed` recomputes `home` and `similar` but not a
`trending` served by a popularity model (its only rule reads `held`, which a view does not
change). `page_viewed` changes nothing a slot reads (`QUIET_TYPES`). An event type the
projection does not know is taken to change everything. The service also recomputes a slot
whose stored list is missing or was made by another model version than the one serving it now.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.recommender.batch import HISTORY, PROFILE, reads
from engine.recommender.reasons import UNEXPLAINED
from engine.recommender.slots import Slot, SlotsConfig
from models.scorer import Scorer

CONSENT, HELD, OFFERS, CRM = "consent", "held", "offers", "crm"
EVERYTHING = frozenset({HISTORY, PROFILE, CONSENT, HELD, OFFERS, CRM})

_ITEM = frozenset({HISTORY, PROFILE})
CHANGES: dict[str, frozenset[str]] = {
    "page_viewed": frozenset(),  # counts and last_seen only, which no slot reads
    "search_performed": frozenset({PROFILE}),
    "item_viewed": _ITEM,
    "item_rated": _ITEM,
    "item_added_to_cart": _ITEM,
    "simulator_used": _ITEM,
    "item_purchased": _ITEM | {HELD},
    "recommendation_shown": frozenset({PROFILE, OFFERS}),
    "recommendation_clicked": _ITEM | {OFFERS},
    "offer_dismissed": frozenset({PROFILE, OFFERS}),
    "consent_updated": frozenset({PROFILE, CONSENT}),
    "crm_contact_logged": frozenset({PROFILE, CRM, HELD, HISTORY}),  # converted: held
    "user_identified": EVERYTHING,  # a login merges the visitor's history (`stitch`)
}
"""The parts of the profile each event type can change (unknown types: `EVERYTHING`)."""

QUIET_TYPES = frozenset(t for t, parts in CHANGES.items() if not parts)


def slot_reads(cfg: Slot, model: Scorer | None) -> frozenset[str]:
    """The parts of the profile one slot (not its fallbacks) reads, served by `model`."""
    model_reads = reads(model) if model is not None else frozenset()
    parts = set(model_reads)
    if model is not None and model.name not in UNEXPLAINED:
        parts.add(HISTORY)  # its default reason says whether there was a history (`reasons`)
    personal = bool(model_reads) or cfg.kind == "similar" or cfg.min_history > 0
    if cfg.kind == "similar" or cfg.min_history > 0 or cfg.rules.exclude_seen:
        parts.add(HISTORY)
    if cfg.rules.eligibility:
        parts.add(PROFILE)
    if personal:
        parts.add(CONSENT)
    r = cfg.rules
    if r.exclude_held:
        parts.add(HELD)
    if r.cap is not None or r.dismissed_days > 0:
        parts.add(OFFERS)
    if r.contacted_days > 0 or r.declined_days > 0:
        parts.add(CRM)
    return frozenset(parts)


class Triggers:
    """`slots(event type)`: the slots an event of that type can change, for a configuration
    and the models serving it now (recomputed when a model is swapped)."""

    def __init__(self, config: SlotsConfig) -> None:
        self.config = config
        self._key: tuple[int, ...] = ()
        self._reads: dict[str, frozenset[str]] = {}
        self._by_type: dict[str | None, tuple[str, ...]] = {}

    def slots(self, etype: str | None, models: Mapping[str, object]) -> tuple[str, ...]:
        key = tuple(id(models.get(self.config.model_slot(s))) for s in self.config.slots)
        if key != self._key:
            self._key, self._by_type = key, {}
            self._reads = {name: self._chain_reads(name, models) for name in self.config.slots}
        hit = self._by_type.get(etype)
        if hit is None:
            changes = CHANGES.get(etype, EVERYTHING) if etype is not None else EVERYTHING
            hit = tuple(s for s, parts in self._reads.items() if parts & changes)
            self._by_type[etype] = hit
        return hit

    def _chain_reads(self, name: str, models: Mapping[str, object]) -> frozenset[str]:
        parts: set[str] = set()
        at: str | None = name
        while at is not None:
            loaded = models.get(self.config.model_slot(at))
            model = getattr(loaded, "model", None)
            parts |= slot_reads(self.config.slots[at], model)
            at = self.config.slots[at].fallback
        return frozenset(parts)

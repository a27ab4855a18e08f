"""The recommendation pipeline, without a broker: profile + active models + slot rules -> a
ranked, explained list. The service, request/reply and `nerve explain` all call `Serving`.

For a slot: pick the model (the active one of its registry slot), or fall back to the slot's
`fallback` chain when it cannot personalise (no model, a cold start, no consent, nothing to be
similar to); score every candidate; walk them best first, removing each that a rule forbids
(and recording which rule), until `k` are kept; give each a short reason. Everything that
matters for the result is an input (the profile, `now`, the model versions, the slot config,
the catalogue), so a recommendation can be recomputed later from the log and the registry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.recommender.catalog import ItemCatalog
from engine.recommender.slots import Eligibility, Slot, SlotsConfig
from models.base import Recommender
from models.data import DEFAULT_WEIGHTS
from models.nbo import NextBestOffer

DAY_MS = 86_400_000
MAX_FALLBACKS = 5
NEIGHBOUR_CACHE = 20_000
"""(model version, anchor) entries of the similar-items cache (~2 KiB each)."""
VERBS = {
    "item_viewed": "looked at",
    "simulator_used": "simulated",
    "item_purchased": "have",
    "item_added_to_cart": "put",
    "recommendation_clicked": "clicked",
    "item_rated": "rated",
}


COUNT_REASONS = {
    "simulator_used": "because you ran a simulation",
    "item_viewed": "because of what you looked at",
    "search_performed": "because of what you searched for",
    "item_added_to_cart": "because of what you applied for",
    "item_purchased": "because of what you have",
}


@dataclass(frozen=True)
class Loaded:
    """A model serving a registry slot: its version and the fitted object."""

    slot: str
    version: str
    name: str
    model: Any  # models.Recommender or models.nbo.NextBestOffer


@dataclass(frozen=True, slots=True)
class Ranked:
    item_id: str
    score: float
    reason: str


@dataclass
class Outcome:
    """A computed list and everything needed to explain it."""

    slot: str
    items: list[Ranked]
    model_version: str | None = None
    model: str | None = None
    served_by: str | None = None
    fallback: str | None = None
    anchor: str | None = None
    removed: list[tuple[str, str]] = field(default_factory=list)
    scored: int = 0

    def signature(self) -> tuple[tuple[str, str], ...]:
        """What the user would see: items in order with their reasons (scores may drift)."""
        return tuple((r.item_id, r.reason) for r in self.items)

    def properties(self, recommendation_id: str, activity_seq: int, crm_seq: int) -> dict[str, Any]:
        """The `recommendations_updated` properties of this list."""
        props: dict[str, Any] = {
            "recommendation_id": recommendation_id,
            "slot": self.slot,
            "items": [
                {"item_id": r.item_id, "position": i, "score": r.score, "reason": r.reason}
                for i, r in enumerate(self.items)
            ],
            "activity_seq": activity_seq,
            "crm_seq": crm_seq,
        }
        if self.model_version is not None:
            props["model_version"] = self.model_version
            props["model"] = self.model
        if self.served_by is not None and self.served_by != self.slot:
            props["served_by"] = self.served_by
        if self.fallback is not None:
            props["fallback"] = self.fallback
        if self.anchor is not None:
            props["anchor"] = self.anchor
        return props


def history_of(profile: Mapping[str, Any]) -> dict[str, float]:
    """A profile's recent items and holdings as model input (item -> weight, as in training)."""
    out: dict[str, float] = {}
    for r in profile.get("recent_items", ()):
        w = DEFAULT_WEIGHTS.get(r["type"], 0.0)
        if w:
            out[r["item_id"]] = out.get(r["item_id"], 0.0) + w
    for item in profile.get("held", {}):
        out[item] = max(out.get(item, 0.0), DEFAULT_WEIGHTS["item_purchased"])
    return out


def _lookup(profile: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    at: Any = profile
    for part in path.split("."):
        if not isinstance(at, Mapping) or part not in at:
            return False, None
        at = at[part]
    return True, at


def _satisfied(rule: Eligibility, profile: Mapping[str, Any]) -> bool:
    found, value = _lookup(profile, rule.field)
    if rule.op == "exists":
        return found and value is not None
    if rule.op == "missing":
        return not found or value is None
    if rule.op == "==":
        return found and value == rule.value
    if rule.op == "!=":
        return not found or value != rule.value
    if not found or not isinstance(value, int | float) or not isinstance(rule.value, int | float):
        return False
    return {
        ">=": value >= rule.value,
        ">": value > rule.value,
        "<=": value <= rule.value,
        "<": value < rule.value,
    }[rule.op]


class Serving:
    """The state a recommendation is computed from, except the profile: slots, catalogue and
    the loaded model of each registry slot. `models` is replaced whole on a reload (atomic for
    every computation already running: each took its own reference)."""

    def __init__(
        self,
        config: SlotsConfig,
        catalog: ItemCatalog | None = None,
        models: Mapping[str, Loaded] | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog or ItemCatalog()
        self.models: Mapping[str, Loaded] = dict(models or {})
        self._orders: dict[int, tuple[np.ndarray, list[int]]] = {}
        self._neighbours: dict[tuple[str, str, int], tuple[list[int], list[float]]] = {}

    def with_model(self, loaded: Loaded) -> None:
        """Serve `loaded` for its registry slot from now on."""
        self.models = {**self.models, loaded.slot: loaded}

    def versions(self) -> dict[str, str]:
        return {s: m.version for s, m in self.models.items()}

    # -- the pipeline ------------------------------------------------------------------------
    def recommend(
        self,
        slot: str,
        profile: Mapping[str, Any],
        now_ms: int,
        *,
        context_item: str | None = None,
        models: Mapping[str, Loaded] | None = None,
    ) -> Outcome:
        """The list for `slot`, computed at `now_ms` (raises KeyError for an unknown slot)."""
        cfg = self.config.slots[slot]
        models = self.models if models is None else models
        history = history_of(profile)
        consent = (profile.get("consent") or {}).get("personalization")
        at, why = slot, None
        for _ in range(MAX_FALLBACKS + 1):
            source = self.config.slots[at]
            loaded = models.get(self.config.model_slot(at))
            anchor = None
            if source.kind == "similar":
                anchor = context_item or _last_item(profile)
            problem = None
            if loaded is None:
                problem = "no_model"
            elif consent is False and (source.min_history > 0 or source.kind == "similar"):
                problem = "no_consent"
            elif anchor is None if source.kind == "similar" else len(history) < source.min_history:
                problem = "cold_start"
            if problem is None and loaded is not None:
                used_history = {} if consent is False else history
                out = self._select(slot, cfg, loaded, source, profile, used_history, anchor, now_ms)
                out.served_by, out.fallback = at, why
                return out
            why = why or problem
            if source.fallback is None:
                break
            at = source.fallback
        return Outcome(slot, [], served_by=None, fallback=why)

    def _select(
        self,
        slot: str,
        cfg: Slot,
        loaded: Loaded,
        source: Slot,
        profile: Mapping[str, Any],
        history: dict[str, float],
        anchor: str | None,
        now_ms: int,
    ) -> Outcome:
        model = loaded.model
        candidates: Any
        if isinstance(model, NextBestOffer):
            items = np.asarray(model.offers, dtype=object)
            scores = model.expected_values(profile if history else {}, now_ms)
            candidates = self._ranked(scores, cfg.k)
        elif source.kind == "similar":
            assert anchor is not None
            items = model.items
            candidates = self._similar(loaded, anchor, cfg.k)
        else:
            items, scores = model.items, model.score_history(history)
            candidates = self._ranked(scores, cfg.k)
        out = Outcome(slot, [], loaded.version, loaded.name, anchor=anchor, scored=len(items))
        kept: list[tuple[str, float]] = []
        per_category: dict[str, int] = {}
        facts = _Facts(profile, cfg, now_ms)
        for idx, score in candidates:
            item = str(items[idx])
            if not math.isfinite(score):
                continue
            rule = self._forbids(cfg, item, facts, anchor, per_category)
            if rule is not None:
                out.removed.append((item, rule))
                continue
            kept.append((item, score))
            category = self._category(item)
            if category is not None:
                per_category[category] = per_category.get(category, 0) + 1
            if len(kept) == cfg.k:
                break
        reasons = self._reasons(
            loaded, source, [i for i, _ in kept], profile, history, anchor, now_ms
        )
        out.items = [Ranked(i, round(s, 6), reasons[i]) for i, s in kept]
        return out

    def _ranked(self, scores: np.ndarray, k: int) -> Any:
        """(index, score) of the candidates, best first."""
        for idx in self._order(scores, k):
            yield idx, float(scores[idx])

    def _similar(self, loaded: Loaded, anchor: str, k: int) -> Any:
        """(index, score) of the items like `anchor`, best first. They are the same for every
        user, so the best few are kept per (model version, anchor): a popular item's
        neighbours are scored once, not on every view."""
        key = (loaded.version, anchor, k)
        hit = self._neighbours.get(key)
        if hit is None:
            scores = loaded.model.score_history({anchor: 1.0})
            want = min(len(scores), 4 * k + 64)
            order = list(itertools.islice(_best_first(scores, k), want))
            hit = (order, [float(scores[i]) for i in order])
            self._neighbours[key] = hit
            while len(self._neighbours) > NEIGHBOUR_CACHE:
                self._neighbours.pop(next(iter(self._neighbours)))
        yield from zip(*hit, strict=True)
        if len(hit[0]) < len(loaded.model.items):  # the rules removed that many: the rest
            scores = loaded.model.score_history({anchor: 1.0})
            done = set(hit[0])
            for idx in _best_first(scores, k):
                if idx not in done:
                    yield idx, float(scores[idx])

    def _order(self, scores: np.ndarray, k: int) -> Any:
        """Candidates best first; for a model whose scores never change (read-only arrays,
        e.g. popularity) the full order is computed once."""
        if scores.flags.writeable:
            return _best_first(scores, k)
        hit = self._orders.get(id(scores))
        if hit is None or hit[0] is not scores:
            hit = (scores, np.lexsort((np.arange(len(scores)), -scores)).tolist())
            self._orders[id(scores)] = hit
        return hit[1]

    def _category(self, item: str) -> str | None:
        entry = self.catalog.get(item)
        return entry.category if entry is not None else None

    def _forbids(
        self,
        cfg: Slot,
        item: str,
        facts: _Facts,
        anchor: str | None,
        per_category: dict[str, int],
    ) -> str | None:
        """The rule that removes `item`, or None if it may be shown."""
        entry = self.catalog.items.get(item)
        if self.catalog.items:
            if entry is None:
                return "not in the catalogue"
            if not entry.available:
                return "unavailable"
        f, rules = cfg.filter, cfg.rules
        category = entry.category if entry is not None else None
        if f.categories and category not in f.categories:
            return "filter: category"
        if category is not None and category in f.exclude_categories:
            return "filter: excluded category"
        for key, want in f.attributes.items():
            have = entry.attributes.get(key) if entry is not None else None
            if have not in (want if isinstance(want, list) else [want]):
                return f"filter: attribute {key}"
        if item == anchor:
            return "the item itself"
        if rules.exclude_held and item in facts.held:
            return "held"
        if rules.exclude_seen and item in facts.seen:
            return "seen"
        stats = facts.offers.get(item)
        if stats:
            dismissed = stats.get("last_dismissed")
            if dismissed and facts.now_ms - dismissed < rules.dismissed_days * DAY_MS:
                return "dismissed"
        contact = facts.crm.get(item)
        if contact:
            since = facts.now_ms - contact.get("time", 0)
            if since < rules.contacted_days * DAY_MS:
                return "crm contacted"
            if contact.get("outcome") == "declined" and since < rules.declined_days * DAY_MS:
                return "crm declined"
        if rules.cap is not None and stats:
            window = facts.now_ms - rules.cap.days * DAY_MS
            shown = sum(1 for t in stats.get("shown_times", ()) if t > window)
            if shown >= rules.cap.impressions:
                return "frequency cap"
        for rule in rules.eligibility:
            applies = (not rule.items and not rule.categories) or item in rule.items
            applies = applies or (category is not None and category in rule.categories)
            if applies and not _satisfied(rule, facts.profile):
                return f"eligibility: {rule.name}"
        cap = rules.max_per_category
        if cap is not None and category is not None and per_category.get(category, 0) >= cap:
            return "max per category"
        return None

    # -- reasons -----------------------------------------------------------------------------
    def _reasons(
        self,
        loaded: Loaded,
        source: Slot,
        items: list[str],
        profile: Mapping[str, Any],
        history: dict[str, float],
        anchor: str | None,
        now_ms: int,
    ) -> dict[str, str]:
        model, name = loaded.model, self.catalog.name
        if anchor is not None:
            return {i: f"similar to {name(anchor)}" for i in items}
        if isinstance(model, NextBestOffer):
            drivers = model.drivers(profile, now_ms, items) if history else {}
            return {i: self._offer_reason(i, drivers.get(i)) for i in items}
        if loaded.name == "popular":
            return {i: "popular right now" for i in items}
        if loaded.name == "popular-segment":
            return {i: "popular with people like you" for i in items}
        assert isinstance(model, Recommender)
        because = model.because(history, items) if history else {}
        last_type = {r["item_id"]: r["type"] for r in reversed(profile.get("recent_items", ()))}
        out = {}
        for i in items:
            h = because.get(i)
            if h is None:
                out[i] = "popular with visitors" if not history else "recommended for you"
            else:
                verb = "have" if h in profile.get("held", {}) else VERBS.get(last_type.get(h, ""))
                out[i] = f"because you {verb or 'looked at'} {name(h)}"
        return out

    def _offer_reason(self, item: str, driver: str | None) -> str:
        if driver is None:
            return "popular with people like you"
        kind, _, key = driver.partition(":")
        name = self.catalog.name
        if kind == "sim":
            return f"because you simulated a {key.replace('_', ' ')}"
        if kind == "simulated":
            return (
                "because you simulated it" if key == item else f"because you simulated {name(key)}"
            )
        if kind == "seen":
            return (
                "because you looked at it" if key == item else f"because you looked at {name(key)}"
            )
        if kind == "cat":
            return f"because you looked at {key.replace('_', ' ')}"
        if kind == "held":
            return f"because you have {name(key)}"
        if kind == "count" and key in COUNT_REASONS:
            return COUNT_REASONS[key]
        return "popular with people like you"


class _Facts:
    """What the rules read from a profile, looked up once per list rather than per candidate."""

    __slots__ = ("crm", "held", "now_ms", "offers", "profile", "seen")

    def __init__(self, profile: Mapping[str, Any], cfg: Slot, now_ms: int) -> None:
        self.profile = profile
        self.now_ms = now_ms
        self.held = profile.get("held") or {}
        self.offers = profile.get("offers") or {}
        self.crm = profile.get("crm") or {}
        self.seen = (
            {r["item_id"] for r in profile.get("recent_items", ())}
            if cfg.rules.exclude_seen
            else set()
        )


def _last_item(profile: Mapping[str, Any]) -> str | None:
    recent = profile.get("recent_items") or ()
    return str(recent[0]["item_id"]) if recent else None


def _best_first(scores: np.ndarray, k: int) -> Any:
    """Candidate indexes by decreasing score (ties by index).

    The best few first: a threshold estimated from every 16th score selects about twice the
    candidates a list of `k` needs (every item at or above it, so the order stays exact), and
    the rest is ordered only if the rules removed that many. An exact partition backs up a
    threshold that selected too few. ~10x cheaper than a partition of the whole catalogue."""
    n = len(scores)
    want = min(n, 4 * k + 64)
    if n <= 2000:
        yield from np.lexsort((np.arange(n), -scores)).tolist()
        return
    sample = scores[::16]
    rank = max(1, 2 * want // 16)
    threshold = np.partition(sample, len(sample) - rank)[len(sample) - rank]
    top = np.flatnonzero(scores >= threshold) if np.isfinite(threshold) else np.empty(0, int)
    if len(top) < want:
        top = np.argpartition(-scores, want - 1)[:want]
    top = top[np.lexsort((top, -scores[top]))]
    yield from top.tolist()
    rest = np.setdiff1d(np.arange(n), top, assume_unique=True)
    rest = rest[np.lexsort((rest, -scores[rest]))]
    yield from rest.tolist()

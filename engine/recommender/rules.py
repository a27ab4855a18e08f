"""The rules that remove a candidate from a slot's list, as a table of small checks.

Each rule is a function named for the reason it reports: it returns that reason when it
forbids the candidate (two name what failed: the attribute, the eligibility rule), else None.
`forbids` applies them in `RULES` order and reports the first that fires; the order is part of
the behaviour (an item both held and dismissed is removed as "held").

`Judge` is the same table compiled for the serving path: the rules that depend only on the
slot and the catalogue (`STATIC`: catalogue, availability, filters) are evaluated once per
(slot, catalogue version, candidate list) into one reason per candidate index; the rules keyed
by item in the profile (the anchor, held, seen, dismissed, CRM, cap) are evaluated once per
list for the few items the profile names; eligibility once per list and rule; the category
maximum from an array of category codes. It gives what `forbids` gives (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.recommender.catalog import Item, ItemCatalog
from engine.recommender.slots import Eligibility, Slot

DAY_MS = 86_400_000


class Facts:
    """What the rules read for one list: the slot's filter and rules, the profile's lookups
    (done once per list rather than per candidate), the anchor of a "similar" list, and how
    many items of each category the list holds so far."""

    __slots__ = (
        "anchor",
        "catalog",
        "crm",
        "filter",
        "held",
        "now_ms",
        "offers",
        "per_category",
        "profile",
        "rules",
        "seen",
    )

    def __init__(
        self,
        profile: Mapping[str, Any],
        cfg: Slot,
        now_ms: int,
        catalog: ItemCatalog,
        anchor: str | None = None,
    ) -> None:
        self.profile = profile
        self.now_ms = now_ms
        self.filter = cfg.filter
        self.rules = cfg.rules
        self.catalog = catalog
        self.anchor = anchor
        self.held = profile.get("held") or {}
        self.offers = profile.get("offers") or {}
        self.crm = profile.get("crm") or {}
        self.seen = (
            {r["item_id"] for r in profile.get("recent_items", ())}
            if cfg.rules.exclude_seen
            else set()
        )
        self.per_category: dict[str, int] = {}

    def kept(self, item: str) -> None:
        """`item` is in the list now (it counts towards its category's maximum)."""
        entry = self.catalog.get(item)
        if entry is not None and entry.category is not None:
            self.per_category[entry.category] = self.per_category.get(entry.category, 0) + 1


class Candidate:
    """One item the rules judge, with its catalogue entry looked up once."""

    __slots__ = ("category", "entry", "item")

    def __init__(self, item: str, entry: Item | None) -> None:
        self.item = item
        self.entry = entry
        self.category = entry.category if entry is not None else None


Rule = Callable[[Candidate, Facts], str | None]


def not_in_the_catalogue(c: Candidate, f: Facts) -> str | None:
    """Once a catalogue is loaded, only what it lists is shown."""
    return "not in the catalogue" if f.catalog.items and c.entry is None else None


def unavailable(c: Candidate, f: Facts) -> str | None:
    return "unavailable" if c.entry is not None and not c.entry.available else None


def filter_category(c: Candidate, f: Facts) -> str | None:
    wanted = f.filter.categories
    return "filter: category" if wanted and c.category not in wanted else None


def filter_excluded_category(c: Candidate, f: Facts) -> str | None:
    excluded = c.category is not None and c.category in f.filter.exclude_categories
    return "filter: excluded category" if excluded else None


def filter_attribute(c: Candidate, f: Facts) -> str | None:
    for key, want in f.filter.attributes.items():
        have = c.entry.attributes.get(key) if c.entry is not None else None
        if have not in (want if isinstance(want, list) else [want]):
            return f"filter: attribute {key}"
    return None


def the_item_itself(c: Candidate, f: Facts) -> str | None:
    return "the item itself" if c.item == f.anchor else None


def held(c: Candidate, f: Facts) -> str | None:
    return "held" if f.rules.exclude_held and c.item in f.held else None


def seen(c: Candidate, f: Facts) -> str | None:
    return "seen" if f.rules.exclude_seen and c.item in f.seen else None


def dismissed(c: Candidate, f: Facts) -> str | None:
    at = (f.offers.get(c.item) or {}).get("last_dismissed")
    return "dismissed" if at and f.now_ms - at < f.rules.dismissed_days * DAY_MS else None


def _since_crm_contact(c: Candidate, f: Facts) -> tuple[Mapping[str, Any], int] | None:
    contact = f.crm.get(c.item)
    return (contact, f.now_ms - contact.get("time", 0)) if contact else None


def crm_contacted(c: Candidate, f: Facts) -> str | None:
    """Any recent CRM contact about the item leaves it to the CRM, whatever the outcome."""
    found = _since_crm_contact(c, f)
    return "crm contacted" if found and found[1] < f.rules.contacted_days * DAY_MS else None


def crm_declined(c: Candidate, f: Facts) -> str | None:
    found = _since_crm_contact(c, f)
    if found is None:
        return None
    contact, since = found
    declined = contact.get("outcome") == "declined" and since < f.rules.declined_days * DAY_MS
    return "crm declined" if declined else None


def frequency_cap(c: Candidate, f: Facts) -> str | None:
    cap, stats = f.rules.cap, f.offers.get(c.item)
    if cap is None or not stats:
        return None
    window = f.now_ms - cap.days * DAY_MS
    shown = sum(1 for t in stats.get("shown_times", ()) if t > window)
    return "frequency cap" if shown >= cap.impressions else None


def eligibility(c: Candidate, f: Facts) -> str | None:
    for rule in f.rules.eligibility:
        applies = (not rule.items and not rule.categories) or c.item in rule.items
        applies = applies or (c.category is not None and c.category in rule.categories)
        if applies and not satisfied(rule, f.profile):
            return f"eligibility: {rule.name}"
    return None


def max_per_category(c: Candidate, f: Facts) -> str | None:
    cap = f.rules.max_per_category
    full = cap is not None and c.category is not None and f.per_category.get(c.category, 0) >= cap
    return "max per category" if full else None


RULES: tuple[Rule, ...] = (
    not_in_the_catalogue,
    unavailable,
    filter_category,
    filter_excluded_category,
    filter_attribute,
    the_item_itself,
    held,
    seen,
    dismissed,
    crm_contacted,
    crm_declined,
    frequency_cap,
    eligibility,
    max_per_category,
)


STATIC: tuple[Rule, ...] = RULES[:5]
"""The rules that read only the candidate, the slot and the catalogue (they come first)."""
PERSONAL: tuple[Rule, ...] = RULES[5:12]
"""The rules that can only remove an item the profile (or the anchor) names."""
assert RULES[12:] == (eligibility, max_per_category)


class Judge:
    """The rules of one slot for one catalogue version and one candidate list (see the module
    docstring); `static[i]` is the reason a static rule removes candidate `i`, or None."""

    def __init__(self, cfg: Slot, catalog: ItemCatalog, items: Sequence[str]) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.static: list[str | None] = []
        codes: dict[str, int] = {}
        category = np.full(len(items), -1, dtype=np.int64)
        facts = Facts({}, cfg, 0, catalog)
        for i, item in enumerate(items):
            c = Candidate(item, catalog.items.get(item))
            self.static.append(next((r for rule in STATIC if (r := rule(c, facts))), None))
            if c.category is not None:
                category[i] = codes.setdefault(c.category, len(codes))
        self.category = category.tolist()
        self.categories = list(codes)

    def personal(self, profile: Mapping[str, Any], now_ms: int, anchor: str | None) -> Verdicts:
        """The per-list part: what the profile-keyed rules remove, and eligibility."""
        facts = Facts(profile, self.cfg, now_ms, self.catalog, anchor)
        named = set(facts.held) | set(facts.seen) | set(facts.offers) | set(facts.crm)
        if anchor is not None:
            named.add(anchor)
        removed: dict[str, str] = {}
        for item in named:
            c = Candidate(item, self.catalog.items.get(item))
            reason = next((r for rule in PERSONAL if (r := rule(c, facts))), None)
            if reason is not None:
                removed[item] = reason
        failing = [e for e in self.cfg.rules.eligibility if not satisfied(e, profile)]
        return Verdicts(self, removed, failing)


class Verdicts:
    """The rules of one list: `forbids(index, item)` as `rules.forbids` would say, and `kept`
    to count the category maximum."""

    __slots__ = ("cap", "counts", "failing", "judge", "removed")

    def __init__(self, judge: Judge, removed: dict[str, str], failing: list[Eligibility]) -> None:
        self.judge = judge
        self.removed = removed
        self.failing = failing
        self.cap = judge.cfg.rules.max_per_category
        self.counts = [0] * len(judge.categories)

    def forbids(self, index: int, item: str) -> str | None:
        judge = self.judge
        reason = judge.static[index] or self.removed.get(item)
        if reason is not None:
            return reason
        code = judge.category[index]
        if self.failing:
            category = judge.categories[code] if code >= 0 else None
            for rule in self.failing:
                if (not rule.items and not rule.categories) or item in rule.items:
                    return f"eligibility: {rule.name}"
                if category is not None and category in rule.categories:
                    return f"eligibility: {rule.name}"
        if self.cap is not None and code >= 0 and self.counts[code] >= self.cap:
            return "max per category"
        return None

    def kept(self, index: int) -> None:
        code = self.judge.category[index]
        if code >= 0:
            self.counts[code] += 1

    def walk(
        self,
        candidates: Iterable[tuple[int, float]],
        names: Sequence[str],
        k: int,
        removed: list[tuple[str, str]],
    ) -> list[tuple[str, float]]:
        """The first `k` candidates (index, score; best first) the rules let through, with
        their scores; each one removed before the last kept is appended to `removed` with its
        rule (`forbids` and `kept` inlined: this runs for every list)."""
        kept: list[tuple[str, float]] = []
        static, category, counts = self.judge.static, self.judge.category, self.counts
        personal, cap, failing = self.removed, self.cap, self.failing
        isfinite = math.isfinite
        for idx, score in candidates:
            if not isfinite(score):
                continue
            item = names[idx]
            rule = static[idx] or (personal.get(item) if personal else None)
            if rule is None and failing:
                rule = self.forbids(idx, item)
            if rule is None and cap is not None:
                code = category[idx]
                if code >= 0 and counts[code] >= cap:
                    rule = "max per category"
            if rule is not None:
                removed.append((item, rule))
                continue
            kept.append((item, score))
            code = category[idx]
            if code >= 0:
                counts[code] += 1
            if len(kept) == k:
                break
        return kept


def forbids(item: str, facts: Facts) -> str | None:
    """The reason of the first rule that removes `item`, or None if it may be shown."""
    candidate = Candidate(item, facts.catalog.items.get(item))
    for rule in RULES:
        reason = rule(candidate, facts)
        if reason is not None:
            return reason
    return None


def satisfied(rule: Eligibility, profile: Mapping[str, Any]) -> bool:
    """Whether the profile field `rule.field` satisfies `rule.op rule.value`."""
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


def _lookup(profile: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    at: Any = profile
    for part in path.split("."):
        if not isinstance(at, Mapping) or part not in at:
            return False, None
        at = at[part]
    return True, at

"""The recommendation pipeline, without a broker: profile + active models + slot rules -> a
ranked, explained list. The service, request/reply and `nerve explain` all call `Serving`.

For a slot: pick the model (the active one of its registry slot), or fall back to the slot's
`fallback` chain when it cannot personalise (no model, a cold start, no consent, nothing to be
similar to); score every candidate; walk them best first (`ranking`), removing each that a rule
forbids (`rules`, recording which rule), until `k` are kept; give each a short reason
(`reasons`). Everything that matters for the result is an input (the profile, `now`, the model
versions, the slot config, the catalogue), so a recommendation can be recomputed later from the
log and the registry. The model is any `models.Scorer`: the pipeline never asks which kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.recommender.batch import score_rows
from engine.recommender.catalog import ItemCatalog
from engine.recommender.ranking import Ranking
from engine.recommender.reasons import Phrasing
from engine.recommender.rules import Judge
from engine.recommender.slots import Slot, SlotsConfig
from models.data import DEFAULT_WEIGHTS
from models.scorer import Scorer

MAX_FALLBACKS = 5


@dataclass(frozen=True)
class Loaded:
    """A model serving a registry slot: its version and the fitted object."""

    slot: str
    version: str
    name: str
    model: Scorer


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
        self._ranking = Ranking()
        self._judges: dict[tuple[str, str, int], tuple[int, Judge, list[str]]] = {}

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
        return self.recommend_many(slot, [profile], now_ms, [context_item], models=models)[0]

    def recommend_many(
        self,
        slot: str,
        profiles: Sequence[Mapping[str, Any]],
        now_ms: int,
        contexts: Sequence[str | None] | None = None,
        *,
        models: Mapping[str, Loaded] | None = None,
    ) -> list[Outcome]:
        """`recommend` for many users at once: the users a model serves are scored together
        (`batch.score_rows`, one product per model), and each list is the one `recommend`
        gives that user alone."""
        cfg = self.config.slots[slot]
        models = self.models if models is None else models
        contexts = contexts if contexts is not None else [None] * len(profiles)
        plans = [self._plan(slot, p, c, models) for p, c in zip(profiles, contexts, strict=True)]
        todo = [(i, p) for i, p in enumerate(plans) if isinstance(p, _Plan)]
        candidates: dict[int, Iterator[tuple[int, float]]] = {}
        for group in _by_model([(i, p) for i, p in todo if p.anchor is not None]):
            loaded = group[0][1].loaded  # "similar": the anchors not cached, in one batch
            self._ranking.prefetch(
                loaded.version, loaded.model, [p.anchor or "" for _, p in group], cfg.k
            )
            for i, p in group:
                found = self._ranking.similar(loaded.version, loaded.model, p.anchor or "", cfg.k)
                if found is not None:
                    candidates[i] = found
        for group in _by_model([(i, p) for i, p in todo if i not in candidates]):
            model = group[0][1].loaded.model  # the rest: scored together, per model
            shown, histories = [p.shown for _, p in group], [p.history for _, p in group]
            for (i, _), scores in zip(
                group, score_rows(model, shown, histories, now_ms), strict=True
            ):
                candidates[i] = self._ranking.ranked(scores, cfg.k)
        outcomes = [p for p in plans if isinstance(p, Outcome)][::-1]
        selected = {i: self._select(slot, cfg, p, candidates[i], now_ms) for i, p in todo}
        return [selected[i] if i in selected else outcomes.pop() for i in range(len(plans))]

    def _plan(
        self,
        slot: str,
        profile: Mapping[str, Any],
        context_item: str | None,
        models: Mapping[str, Loaded],
    ) -> _Plan | Outcome:
        """Which model serves this user (the slot's, else along its fallback chain), with
        what; an empty Outcome when none can."""
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
                used = {} if consent is False else history
                # the model sees the profile only when it may personalise (there is a history)
                return _Plan(profile, used, profile if used else {}, loaded, anchor, at, why)
            why = why or problem
            if source.fallback is None:
                break
            at = source.fallback
        return Outcome(slot, [], served_by=None, fallback=why)

    def _judge(self, slot: str, cfg: Slot, loaded: Loaded) -> Judge:
        """The slot's rules compiled for this catalogue version and candidate list."""
        key = (slot, loaded.version, id(loaded.model))
        hit = self._judges.get(key)
        if hit is None or hit[0] != self.catalog.version or hit[1].cfg is not cfg:
            items = [str(i) for i in loaded.model.candidates()]
            hit = (self.catalog.version, Judge(cfg, self.catalog, items), items)
            if len(self._judges) > 64:
                self._judges.clear()
            self._judges[key] = hit
        return hit[1]

    def _select(
        self,
        slot: str,
        cfg: Slot,
        plan: _Plan,
        candidates: Iterator[tuple[int, float]],
        now_ms: int,
    ) -> Outcome:
        loaded, profile, history, anchor = plan.loaded, plan.profile, plan.history, plan.anchor
        model = loaded.model
        judge = self._judge(slot, cfg, loaded)
        names = self._judges[(slot, loaded.version, id(model))][2]
        out = Outcome(slot, [], loaded.version, loaded.name, anchor=anchor, scored=len(names))
        out.served_by, out.fallback = plan.served_by, plan.why
        kept: list[tuple[str, float]] = []
        verdicts = judge.personal(profile, now_ms, anchor)
        for idx, score in candidates:
            if not math.isfinite(score):
                continue
            item = names[idx]
            rule = verdicts.forbids(idx, item)
            if rule is not None:
                out.removed.append((item, rule))
                continue
            kept.append((item, score))
            verdicts.kept(idx)
            if len(kept) == cfg.k:
                break
        chosen = [i for i, _ in kept]
        phrasing = Phrasing(self.catalog.name, profile)
        if anchor is not None:
            reasons = phrasing.similar(chosen, anchor)
        else:
            drivers = model.explain(plan.shown, history, chosen, now_ms) if history else {}
            reasons = phrasing.reasons(loaded.name, chosen, drivers, history)
        out.items = [Ranked(i, round(s, 6), reasons[i]) for i, s in kept]
        return out


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one user's list is made: the model that serves it and what the model sees."""

    profile: Mapping[str, Any]
    history: dict[str, float]
    shown: Mapping[str, Any]
    loaded: Loaded
    anchor: str | None
    served_by: str
    why: str | None


def _by_model(plans: list[tuple[int, _Plan]]) -> list[list[tuple[int, _Plan]]]:
    """The plans grouped by the loaded model that serves them, in order."""
    groups: dict[int, list[tuple[int, _Plan]]] = {}
    for i, p in plans:
        groups.setdefault(id(p.loaded), []).append((i, p))
    return list(groups.values())


def _last_item(profile: Mapping[str, Any]) -> str | None:
    recent = profile.get("recent_items") or ()
    return str(recent[0]["item_id"]) if recent else None

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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.recommender.batch import explain_rows, score_rows
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


class Ranked(NamedTuple):
    """One item of a list (a tuple: made ten times per list, it must be cheap to build)."""

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
        now_ms: int | Sequence[int],
        contexts: Sequence[str | None] | None = None,
        *,
        models: Mapping[str, Loaded] | None = None,
    ) -> list[Outcome]:
        """`recommend` for many users at once: the users a model serves are scored together
        (`batch.score_rows`, one product per model), and each list is the one `recommend`
        gives that user alone. `now_ms` is one time for all, or one per profile (a replay's
        decisions, each at its own time): list `i` is `recommend(slot, profiles[i], now[i])`."""
        cfg = self.config.slots[slot]
        models = self.models if models is None else models
        contexts = contexts if contexts is not None else [None] * len(profiles)
        if isinstance(now_ms, Sequence):
            nows = [int(t) for t in now_ms]
        else:
            nows = [int(now_ms)] * len(profiles)
        if len(nows) != len(profiles):
            raise ValueError(f"{len(nows)} times for {len(profiles)} profiles")
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
            times = [nows[i] for i, _ in group]
            for (i, _), scores in zip(
                group, score_rows(model, shown, histories, times), strict=True
            ):
                candidates[i] = self._ranking.ranked(scores, cfg.k)
        outcomes = [p for p in plans if isinstance(p, Outcome)][::-1]
        selected = {i: self._select(slot, cfg, p, candidates[i], nows[i]) for i, p in todo}
        self._give_reasons([(p, selected[i][0], selected[i][1], nows[i]) for i, p in todo])
        return [selected[i][0] if i in selected else outcomes.pop() for i in range(len(plans))]

    def _give_reasons(
        self, lists: list[tuple[_Plan, Outcome, list[tuple[str, float]], int]]
    ) -> None:
        """Each list's items with their reasons; the drivers of the lists a model made are
        asked of it in one batch (`batch.explain_rows`)."""
        drivers: dict[int, dict[str, str]] = {}
        by_model: dict[int, list[int]] = {}
        for n, (plan, _, _, _) in enumerate(lists):
            if plan.anchor is None and plan.history:
                by_model.setdefault(id(plan.loaded), []).append(n)
        for members in by_model.values():
            model = lists[members[0]][0].loaded.model
            found = explain_rows(
                model,
                [lists[n][0].shown for n in members],
                [lists[n][0].history for n in members],
                [[item for item, _ in lists[n][2]] for n in members],
                [lists[n][3] for n in members],
            )
            drivers.update(zip(members, found, strict=True))
        for n, (plan, out, kept, _) in enumerate(lists):
            chosen = [i for i, _ in kept]
            phrasing = Phrasing(self.catalog.name, plan.profile)
            if plan.anchor is not None:
                reasons = phrasing.similar(chosen, plan.anchor)
            else:
                reasons = phrasing.reasons(
                    plan.loaded.name, chosen, drivers.get(n, {}), plan.history
                )
            out.items = [Ranked(i, round(s, 6), reasons[i]) for i, s in kept]

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
    ) -> tuple[Outcome, list[tuple[str, float]]]:
        """The list's items, walking the candidates best first through the rules (its
        reasons are given by `_give_reasons`)."""
        loaded, profile, anchor = plan.loaded, plan.profile, plan.anchor
        model = loaded.model
        judge = self._judge(slot, cfg, loaded)
        names = self._judges[(slot, loaded.version, id(model))][2]
        out = Outcome(slot, [], loaded.version, loaded.name, anchor=anchor, scored=len(names))
        out.served_by, out.fallback = plan.served_by, plan.why
        verdicts = judge.personal(profile, now_ms, anchor)
        return out, verdicts.walk(candidates, names, cfg.k, out.removed)


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

"""Serving the running experiments: which models compute a user's list, and the shadow list.

The recommender holds one `Experiments` (loaded from the registry at start and again whenever
an `experiment.*` key or the active models change) and asks it, per user and slot, for an
`Assignment`: the experiment and variant to record on the list, the models to compute it with
(`Serving.recommend(..., models=)`; None: the active ones) and, in a shadow experiment, the
models of the shadow list. The variant is `engine.experiments.spec.variant_of`: a hash of the
experiment id and the user token, so a user keeps it across restarts and replicas.

A list is part of an experiment when the experiment's registry slot served it: its own slot's
model, or one along its fallback chain (a `home` list that fell back to `trending` is in an
experiment on `trending`; one `home`'s own model served is not). Which lists are in is decided
after computing them (`served`) and is the same rule for every variant. At most one
experiment runs per registry slot. A stored list whose experiment or variant is not the user's
now is stale (`untagged_slots`) and recomputed at the user's next event, as one made by another
model version is; lists nobody recomputes keep their old tags (not counted for the new one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.bus import Bus, Outgoing, Subscription
from engine.bus.registry import Registry
from engine.experiments import spec
from engine.experiments.spec import CHALLENGER, SHADOW_VARIANT, Experiment
from engine.recommender.core import MAX_FALLBACKS, Loaded, Outcome, Serving
from engine.recommender.lists import UserState, build_event
from models.base import load_packed
from nerve_client.events import parse_event
from nerve_client.subjects import shadow_subject

log = logging.getLogger("nerve.recommender.experiments")


@dataclass(frozen=True, slots=True)
class Assignment:
    """What an experiment decides for one user's list of one slot (`NONE`: no experiment)."""

    experiment: str | None = None
    variant: str | None = None
    models: Mapping[str, Loaded] | None = None
    """The models to compute the served list with (None: the active ones)."""
    shadow: Mapping[str, Loaded] | None = None
    """The models of the shadow list (shadow experiments only)."""
    slot: str | None = None
    """The experiment's registry slot: a list is in it only when that slot's model served it."""

    @property
    def tags(self) -> dict[str, str]:
        """The list's `experiment` and `variant` properties (empty outside experiments)."""
        if self.experiment is None or self.variant is None:
            return {}
        return {"experiment": self.experiment, "variant": self.variant}


NONE = Assignment()


@dataclass
class Experiments:
    """The running experiments and their loaded challengers (replaced whole on a reload)."""

    running: Mapping[str, Experiment] = field(default_factory=dict)
    """Registry slot -> its running experiment (only those whose challenger loaded)."""
    challengers: Mapping[str, Loaded] = field(default_factory=dict)
    """Registry slot -> the loaded challenger."""
    problems: Mapping[str, str] = field(default_factory=dict)
    """Experiment id -> why it is not served (its challenger could not be loaded)."""
    _overrides: dict[str, tuple[Mapping[str, Loaded], Mapping[str, Loaded]]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    async def load(
        cls,
        registry: Registry,
        previous: Experiments | None = None,
        work_dir: Path | None = None,
    ) -> Experiments:
        """The running experiments of the registry, each challenger loaded off the event loop
        (or reused from `previous` when it is the same version)."""
        running, challengers, problems = {}, {}, {}
        for slot, experiment in (await spec.running(registry)).items():
            old = previous.challengers.get(slot) if previous is not None else None
            if old is not None and old.version == experiment.challenger:
                running[slot], challengers[slot] = experiment, old
                continue
            try:
                challengers[slot] = await _load(registry, slot, experiment.challenger, work_dir)
            except Exception as exc:  # serve the control to everyone, and say why
                problems[experiment.id] = f"{type(exc).__name__}: {exc}"
                log.error("experiment %s not served: %s", experiment.id, problems[experiment.id])
                continue
            running[slot] = experiment
        return cls(running, challengers, problems)

    def experiment_of(self, serving: Serving, slot: str) -> Experiment | None:
        """The experiment a list of `slot` belongs to (see the module docstring)."""
        if not self.running:
            return None
        config, at = serving.config, slot
        for _ in range(MAX_FALLBACKS + 1):
            found = self.running.get(config.model_slot(at))
            if found is not None:
                return found
            nxt = config.slots[at].fallback
            if nxt is None:
                return None
            at = nxt
        return None

    def assign(self, serving: Serving, token: str, slot: str) -> Assignment:
        """The user's assignment for a list of `slot`."""
        experiment = self.experiment_of(serving, slot)
        if experiment is None:
            return NONE
        variant = spec.variant_of(experiment, token)
        if variant is None:
            return NONE
        if experiment.mode == "shadow":
            shadow = self._override(serving, experiment)
            return Assignment(experiment.id, variant, None, shadow, experiment.slot)
        models = self._override(serving, experiment) if variant == CHALLENGER else None
        return Assignment(experiment.id, variant, models, None, experiment.slot)

    def _override(self, serving: Serving, experiment: Experiment) -> Mapping[str, Loaded]:
        """The active models with the challenger in its slot (one mapping per reload)."""
        base = serving.models
        hit = self._overrides.get(experiment.slot)
        if hit is None or hit[0] is not base:
            hit = (base, {**base, experiment.slot: self.challengers[experiment.slot]})
            self._overrides[experiment.slot] = hit
        return hit[1]


async def _load(registry: Registry, slot: str, version: str, work_dir: Path | None) -> Loaded:
    artifact = await registry.artifact(version)

    def load() -> Loaded:
        model = load_packed(artifact, work_dir)
        return Loaded(slot, version, model.name, model)

    return await asyncio.to_thread(load)


def compute(
    serving: Serving,
    experiments: Experiments,
    todo: Sequence[tuple[UserState, str]],
    now_ms: int,
    context: str | None = None,
) -> list[tuple[UserState, str, Outcome, Assignment]]:
    """The list of every (user, slot) of `todo` with its assignment: the users of a slot that
    share a variant are computed together (`Serving.recommend_many`)."""
    groups: dict[tuple[str, str | None, str | None], list[tuple[UserState, Assignment]]] = {}
    for s, slot in todo:
        a = experiments.assign(serving, s.token, slot)
        groups.setdefault((slot, a.experiment, a.variant), []).append((s, a))
    out = []
    for (slot, _, _), members in groups.items():
        outcomes = serving.recommend_many(
            slot,
            [s.profile for s, _ in members],
            now_ms,
            [context] * len(members),
            models=members[0][1].models,
        )
        out += [
            (s, slot, o, served(serving, o, a)) for (s, a), o in zip(members, outcomes, strict=True)
        ]
    return out


def served(serving: Serving, outcome: Outcome, assignment: Assignment) -> Assignment:
    """`assignment` if the experiment's slot served `outcome`, else `NONE`: a list served by
    another model (its own slot's, where the experiment is on its fallback) is not in it."""
    if assignment.slot is None or registry_slot(serving, outcome.served_by) != assignment.slot:
        return NONE
    return assignment


def registry_slot(serving: Serving, served_by: str | None) -> str | None:
    """The registry slot whose model served a list (None: none did, an empty fallback)."""
    if served_by is None or served_by not in serving.config.slots:
        return None
    return serving.config.model_slot(served_by)


def same_tags(stored: Mapping[str, Any] | None, assignment: Assignment) -> bool:
    """Whether a stored list already carries the assignment's experiment and variant: a list
    whose items are unchanged is published again when they differ (a control user's list at
    an experiment's start), so that every impression of it is attributed."""
    props = (stored or {}).get("properties") or {}
    tags = assignment.tags
    return all(props.get(name) == tags.get(name) for name in ("experiment", "variant"))


def untagged_slots(
    todo: Iterable[tuple[UserState, set[str]]], serving: Serving, experiments: Experiments
) -> None:
    """Add to each user's slots to recompute those whose stored list carries another
    experiment or variant than the user's now (an experiment started, stopped or promoted):
    like a list made by another model version, it is stale even if no event asks for it."""
    for state, wanted in todo:
        for slot, last in state.last.items():
            if slot in wanted or last.event is None or slot not in serving.config.slots:
                continue
            props = last.event.get("properties") or {}
            at = (props.get("served_by") or slot) if props.get("model_version") else None
            assigned = experiments.assign(serving, state.token, slot)
            if assigned.slot != registry_slot(serving, at):
                assigned = NONE
            if not same_tags(last.event, assigned):
                wanted.add(slot)


def tagged_event(
    token: str, outcome: Outcome, profile: dict[str, Any], now_ms: int, assignment: Assignment
) -> dict[str, Any]:
    """`build_event`'s list with the assignment's `experiment` and `variant` (checked)."""
    event = build_event(token, outcome, profile, now_ms)
    if assignment.tags:
        event["properties"].update(assignment.tags)
        parse_event(event)
    return event


@dataclass(frozen=True, slots=True)
class Change:
    """A computed list that differs from the stored one: to publish on `reco.<user>.<slot>`."""

    state: UserState
    slot: str
    event: dict[str, Any]
    seen: tuple[tuple[str, str], ...]
    """What the user sees of it (`Outcome.signature`)."""
    assignment: Assignment


def changed_lists(
    serving: Serving,
    experiments: Experiments,
    todo: Sequence[tuple[UserState, str]],
    now_ms: int,
    context: str | None = None,
) -> tuple[int, list[Change]]:
    """How many lists were computed, and those that changed: other items, order or reasons,
    or another experiment or variant than the stored list's (`same_tags`)."""
    done = compute(serving, experiments, todo, now_ms, context)
    changes = []
    for s, slot, outcome, assigned in done:
        seen, stored = outcome.signature(), s.last[slot]
        if seen == stored.signature and same_tags(stored.event, assigned):
            continue
        event = tagged_event(s.token, outcome, s.profile, now_ms, assigned)
        changes.append(Change(s, slot, event, seen, assigned))
    return len(done), changes


async def publish_shadows(
    bus: Bus, serving: Serving, published: Sequence[Change], now_ms: int, context: str | None
) -> None:
    """Store the shadow lists of the lists just published that are in a shadow experiment.
    They are a log for the experiment's report, never served: failing to store them is
    logged and does not fail (and so retry) a batch whose lists are stored."""
    wanted = [(c.state, c.slot, c.assignment) for c in published if c.assignment.shadow]
    if not wanted:
        return
    try:
        await bus.publish(shadow_messages(serving, wanted, now_ms, context))
    except Exception as exc:
        log.error("%d shadow lists not stored: %s", len(wanted), exc)


async def reload(
    registry: Registry, current: Experiments, work_dir: Path | None = None
) -> Experiments:
    """`Experiments.load`, or `current` (logged) when the registry cannot be read."""
    try:
        return await Experiments.load(registry, current, work_dir)
    except Exception as exc:  # keep serving the experiments as they were
        log.error("could not load the experiments: %s", exc)
        return current


def shadow_messages(
    serving: Serving,
    published: Sequence[tuple[UserState, str, Assignment]],
    now_ms: int,
    context: str | None = None,
) -> list[Outgoing]:
    """The shadow lists of the (user, slot) lists just published in a shadow experiment, as
    messages for `shadow.<user>.<slot>`."""
    groups: dict[tuple[str, int], list[tuple[UserState, Assignment]]] = {}
    for s, slot, a in published:
        if a.shadow is not None:
            groups.setdefault((slot, id(a.shadow)), []).append((s, a))
    out = []
    for (slot, _), members in groups.items():
        outcomes = serving.recommend_many(
            slot,
            [s.profile for s, _ in members],
            now_ms,
            [context] * len(members),
            models=members[0][1].shadow,
        )
        for (s, a), outcome in zip(members, outcomes, strict=True):
            shadow = Assignment(a.experiment, SHADOW_VARIANT, slot=a.slot)
            event = tagged_event(s.token, outcome, s.profile, now_ms, shadow)
            out.append(Outgoing(shadow_subject(s.token, slot), orjson.dumps(event), event["id"]))
    return out


async def watch(
    bus: Bus, registry: Registry, changed: Callable[[], Awaitable[None]]
) -> Subscription:
    """Call `changed` whenever an experiment is started, stopped or promoted (a core
    subscription to the registry's `experiment.*` keys)."""

    async def on_change(_subject: str, _data: bytes) -> None:
        await changed()

    return await bus.listen(registry.kv.subject(spec.KEY_PREFIX + ">"), on_change)

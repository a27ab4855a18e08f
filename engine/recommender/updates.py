"""One batch of the recommender's input, broker-free: which (user, slot) lists to recompute,
and the lists computed together, per slot (the service publishes what changed)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from engine.bus import Record, Refusal, decode
from engine.bus.consumer import Delivery
from engine.profiles.profile import CannotApply
from engine.recommender.core import Outcome, Serving
from engine.recommender.lists import UserState
from engine.recommender.triggers import QUIET_TYPES, Triggers
from engine.recommender.working import WorkingSet, profiles_of
from nerve_client.subjects import SHORT

Todo = dict[str, tuple[UserState, set[str]]]
"""token -> (state, the slots to recompute)."""


def group(
    deliveries: Iterable[Delivery], serves: Callable[[Record], bool]
) -> tuple[dict[str, list[tuple[Delivery, dict[str, Any], str, int]]], list[tuple[Delivery, str]]]:
    """The batch decoded and grouped by user (delivery, event, stream, seq), in order, for the
    users `serves` accepts; and the deliveries refused by the decoder, with their reasons."""
    grouped: dict[str, list[tuple[Delivery, dict[str, Any], str, int]]] = {}
    refused: list[tuple[Delivery, str]] = []
    for d in deliveries:
        record = decode(d.stream, d.seq, d.subject, d.data)
        if isinstance(record, Refusal):
            refused.append((d, record.reason))
        elif serves(record):
            grouped.setdefault(record.token, []).append((d, record.event, SHORT[d.stream], d.seq))
    return grouped, refused


def fold_events(
    users: WorkingSet,
    states: dict[str, UserState],
    grouped: Mapping[str, Iterable[tuple[Any, dict[str, Any], str, int]]],
    *,
    serving: Serving,
    triggers: Triggers,
    owns: Callable[[str], bool],
    forgotten: Container[str],
) -> tuple[Todo, list[tuple[Any, str]]]:
    """Fold each user's events (delivery, event, stream, seq) into the working profiles; the
    lists to recompute (`triggers`, plus the stale ones, `stale_slots`) and the deliveries
    refused (`CannotApply`) with their reasons."""
    todo: Todo = {}
    refused: list[tuple[Any, str]] = []
    profiles = profiles_of(states)
    for token, events in grouped.items():
        for d, event, stream, seq in events:
            try:
                touched = users.fold(
                    states, token, event, stream, seq, skip=forgotten, profiles=profiles
                )
            except CannotApply as exc:
                refused.append((d, str(exc)))
                continue
            etype = event.get("type")
            if etype in QUIET_TYPES:
                continue
            # Recompute even if the profile already held the event (loaded from the bucket
            # after the profiles service applied it): the stored lists may not. A visitor's
            # event also recomputes the user it logged in as (`stitch`).
            slots = triggers.slots(etype, serving.models)
            for st in (states[token], *touched):
                if owns(st.token):
                    todo.setdefault(st.token, (st, set()))[1].update(slots)
    for st, wanted in todo.values():
        wanted.update(stale_slots(st, serving))
    return todo, refused


def stale_slots(state: UserState, serving: Serving) -> set[str]:
    """The slots whose stored list is missing, or was made by another model version than the
    one that would serve it now."""
    out = set()
    for slot in serving.config.slots:
        event = state.last[slot].event if slot in state.last else None
        if event is None:
            out.add(slot)
            continue
        props = event.get("properties") or {}
        served = props.get("served_by") or slot
        if served not in serving.config.slots:
            out.add(slot)
            continue
        loaded = serving.models.get(serving.config.model_slot(served))
        if (loaded.version if loaded is not None else None) != props.get("model_version"):
            out.add(slot)
    return out


def compute(
    serving: Serving,
    todo: list[tuple[UserState, str]],
    now_ms: int,
    context: str | None = None,
) -> list[tuple[UserState, str, Outcome]]:
    """The list of every (user, slot) of `todo`, each slot's users computed together."""
    by_slot: dict[str, list[UserState]] = {}
    for s, slot in todo:
        by_slot.setdefault(slot, []).append(s)
    out = []
    for slot, states in by_slot.items():
        outcomes = serving.recommend_many(
            slot, [s.profile for s in states], now_ms, [context] * len(states)
        )
        out += [(s, slot, o) for s, o in zip(states, outcomes, strict=True)]
    return out

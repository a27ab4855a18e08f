"""Interest detection, broker-free: windowed conditions per user and topic (`Detector`).

**Definitions** live in the slots file under `[signals.<topic>]` (`engine.recommender.slots`):
conditions over a user's events inside a window (counts by type, item category, simulator,
items, a value threshold), an optional propensity from the next-best-offer model, a minimum
score and a cooldown.

**Detection** is incremental and a pure function of the event sequence: per user and topic it
keeps the matching events of each condition inside the window (event time, not arrival time),
and when an event makes every condition hold it returns a `Firing` with the events that are
its evidence. Score = mean over conditions of min(count / min_count, 2).

The service that runs it is `engine.services.signals`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.evidence import Evidence
from engine.profiles.profile import time_ms
from engine.recommender.slots import Condition, SignalDef

log = logging.getLogger("nerve.signals")
DAY_MS = 86_400_000
KEEP_EXTRA = 20
"""Evidence kept per condition beyond what it needs (the newest)."""


@dataclass
class Firing:
    topic: str
    token: str
    score: float
    evidence: list[Evidence]
    decided_at: int
    deciding: Evidence


def matches(cond: Condition, event: dict[str, Any]) -> bool:
    if event.get("type") != cond.type:
        return False
    props = event.get("properties") or {}
    if cond.category and props.get("category") not in cond.category:
        return False
    if cond.simulator and props.get("simulator") not in cond.simulator:
        return False
    if cond.items and event.get("item_id") not in cond.items:
        return False
    if cond.min_value is not None:
        value = props.get("value", props.get("amount"))
        if not isinstance(value, int | float) or value < cond.min_value:
            return False
    return True


def describe(d: SignalDef) -> str:
    parts = []
    for c in d.conditions:
        what = c.type
        for name, values in (("category", c.category), ("simulator", c.simulator)):
            if values:
                what += f" {name} in {'/'.join(values)}"
        if c.items:
            what += f" of {'/'.join(c.items)}"
        if c.min_value is not None:
            what += f" value >= {c.min_value:g}"
        bound = f">= {c.min_count}" + (f" and <= {c.max_count}" if c.max_count is not None else "")
        parts.append(f"{what} {bound}")
    return f"within {d.window_days:g} days: " + "; ".join(parts)


@dataclass
class _UserState:
    seen: dict[str, list[deque[Evidence]]] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    consent_at: int = 0


class Detector:
    """Windowed counts per user and topic; `observe` returns the firings an event causes."""

    def __init__(self, definitions: dict[str, SignalDef]) -> None:
        self.definitions = definitions
        self.users: dict[str, _UserState] = {}

    def observe(self, token: str, event: dict[str, Any], stream: str, seq: int) -> list[Firing]:
        t = time_ms(event.get("time"))
        state = self.users.setdefault(token, _UserState())
        self._consent(state, event, t)
        ev = Evidence(
            str(event.get("id")), stream, seq, str(event.get("type")), t, event.get("item_id")
        )
        out = []
        for topic, d in self.definitions.items():
            hit = [i for i, c in enumerate(d.conditions) if matches(c, event)]
            if not hit:
                continue
            queues = state.seen.setdefault(topic, [deque() for _ in d.conditions])
            for i in hit:
                c = d.conditions[i]
                queues[i].append(ev)
                keep = max(c.min_count, c.max_count or 0) + KEEP_EXTRA
                while len(queues[i]) > keep:
                    queues[i].popleft()
            start = t - d.window_days * DAY_MS
            counts = []
            for q in queues:
                while q and q[0].time < start:
                    q.popleft()
                counts.append(sum(1 for e in q if e.time <= t))
            held = all(
                n >= c.min_count and (c.max_count is None or n <= c.max_count)
                for n, c in zip(counts, d.conditions, strict=True)
            )
            if not held:
                continue
            score = sum(
                min(n / c.min_count, 2.0) for n, c in zip(counts, d.conditions, strict=True)
            ) / len(d.conditions)
            if score < d.min_score:
                continue
            evidence = sorted(
                {e for q in queues for e in q if start <= e.time <= t},
                key=lambda e: (e.time, e.seq),
            )[-100:]
            out.append(Firing(topic, token, round(score, 4), evidence, t, ev))
        return out

    @staticmethod
    def _consent(state: _UserState, event: dict[str, Any], t: int) -> None:
        found: dict[str, bool] = {}
        if event.get("type") == "consent_updated":
            props = event.get("properties") or {}
            found = {
                k: bool(props[k])
                for k in ("analytics", "personalization", "marketing")
                if isinstance(props.get(k), bool)
            }
        else:
            ctx = (event.get("context") or {}).get("consent") or {}
            found = {k: v for k, v in ctx.items() if isinstance(v, bool)}
        if found and t >= state.consent_at:
            state.consent.update(found)
            state.consent_at = t


def offer_of(f: Firing) -> str | None:
    """The item the newest piece of evidence is about, if any."""
    for e in reversed(f.evidence):
        if e.item_id:
            return e.item_id
    return None

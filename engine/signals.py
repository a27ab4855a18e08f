"""Interest signals for CRM services: who is showing interest in what, with the evidence.

**Definitions** live in the slots file under `[signals.<topic>]` (`engine.recommender.slots`):
conditions over a user's events inside a window (counts by type, item category, simulator,
items, a value threshold), an optional propensity from the next-best-offer model, a minimum
score and a cooldown.

**Detection** (`Detector`, no broker inside) is incremental and a pure function of the event
sequence: per user and topic it keeps the matching events of each condition inside the window
(event time, not arrival time), and when an event makes every condition hold it returns a
`Firing` with the events that are its evidence. Score = mean over conditions of
min(count / min_count, 2).

**The service** (`nerve run signals`, part of `nerve up`) rebuilds that state on every start by
reading ACTIVITY and CRM from the start of the longest window (`engine.bus.consumer.tail`:
ephemeral consumers that acknowledge nothing, since the state is derived), then follows them
live. A firing becomes an `interest_signal`
on `signals.<topic>.<user>` only if:

* the user is known (a user id: a CRM cannot call an anonymous visitor) and has given marketing
  consent (the latest consent seen in the log, else the stored profile);
* the last signal on that subject was decided more than `cooldown_days` earlier. The SIGNALS
  stream itself is the record: the check reads the subject's last message, and the publish
  carries `Nats-Expected-Last-Subject-Sequence`, so a restart that replays the window, or a
  second replica, cannot publish inside the cooldown (the loser re-reads and finds the winner);
* the propensity condition, if any, holds.

The message id is derived from the topic, the user and the deciding event, so a retried publish
is stored once. Replicas split users like the recommender's (`--replicas N --replica I`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from engine.bus import Publisher
from engine.bus.consumer import Batch, tail
from engine.bus.pipeline import EXPECTED_LAST_SUBJECT_SEQ, WRONG_LAST_SEQUENCE
from engine.bus.pipeline import Refused
from engine.bus.reader import last_for_subject
from engine.bus.registry import Registry
from engine.ids import derived_uuid7
from engine.profiles.profile import CannotApply, time_ms
from engine.profiles.store import ProfileStore
from engine.recommender.service import owner
from engine.recommender.slots import Condition, SignalDef
from engine.subjects import decode_token, is_user_token

log = logging.getLogger("nerve.signals")
DAY_MS = 86_400_000
KEEP_EXTRA = 20
"""Evidence kept per condition beyond what it needs (the newest)."""


@dataclass(frozen=True, slots=True)
class Evidence:
    event_id: str
    stream: str
    seq: int
    type: str
    time: int
    item_id: str | None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "event_id": self.event_id,
            "stream": self.stream,
            "seq": self.seq,
            "type": self.type,
            "time": _iso(self.time),
        }
        if self.item_id is not None:
            out["item_id"] = self.item_id
        return out


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


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass
class SignalStats:
    events: int = 0
    firings: int = 0
    published: int = 0
    cooled: int = 0
    no_consent: int = 0
    anonymous: int = 0
    below_propensity: int = 0
    conflicts: int = 0


class SignalsService:
    def __init__(
        self,
        nc: Any,
        definitions: dict[str, SignalDef],
        store: ProfileStore,
        publisher: Publisher,
        *,
        replicas: int = 1,
        replica: int = 0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.definitions = definitions
        self.detector = Detector(definitions)
        self.store = store
        self.publisher = publisher
        self.replicas, self.replica = replicas, replica
        self.stats = SignalStats()
        self.queue: asyncio.Queue[tuple[str, Batch]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self._models: dict[str, tuple[str, Any]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        if not self.definitions:
            log.info("signals: no topic defined; idle")
            await stop.wait()
            return
        longest = max(d.window_days for d in self.definitions.values())
        since = datetime.now(UTC) - timedelta(days=longest)

        def feeder(stream: str) -> Any:
            def handle(batch: Batch) -> None:
                self.queue.put_nowait((stream, batch))

            return handle

        async with contextlib.AsyncExitStack() as stack:
            for stream in ("ACTIVITY", "CRM"):
                await stack.enter_async_context(
                    tail(self.js, stream, 0, feeder(stream), since=since)
                )
            self.ready.set()
            while not stop.is_set():
                try:
                    stream, batch = await asyncio.wait_for(self.queue.get(), 0.5)
                except TimeoutError:
                    continue
                await self.process(stream, batch)

    async def process(self, stream: str, batch: Batch) -> None:
        for seq, subject, data in batch:
            self.stats.events += 1
            parts = subject.split(".")
            if len(parts) != 3 or not is_user_token(parts[1]):
                continue
            token = parts[1]
            if owner(token, self.replicas) != self.replica:
                continue
            try:
                event = orjson.loads(data)
                firings = self.detector.observe(token, event, stream, seq)
            except (orjson.JSONDecodeError, CannotApply, AttributeError, TypeError):
                continue  # the profiles service dead-letters what cannot be read
            for f in firings:
                self.stats.firings += 1
                try:
                    await self.emit(f)
                except Exception:
                    log.exception("could not publish the %s signal of %s", f.topic, f.token)

    async def emit(self, f: Firing) -> bool:
        """Publish a firing as an interest_signal unless a rule holds it back; True if stored."""
        user_id, _ = decode_token(f.token)
        if user_id is None:
            self.stats.anonymous += 1
            return False
        d = self.definitions[f.topic]
        subject = f"signals.{f.topic}.{f.token}"
        for _attempt in range(3):
            last = await last_for_subject(self.js, "SIGNALS", subject)
            last_seq = 0
            if last is not None:
                last_seq = last[0]
                with contextlib.suppress(Exception):
                    decided = time_ms(orjson.loads(last[1])["properties"]["decided_at"])
                    if f.decided_at - decided < d.cooldown_days * DAY_MS:
                        self.stats.cooled += 1
                        return False
            consent = await self._consent(f.token)
            if consent.get("marketing") is not True:
                self.stats.no_consent += 1
                return False
            offer = _offer(f)
            if d.propensity is not None:
                p, best = await self._propensity(f.token, d)
                if p < d.propensity.min:
                    self.stats.below_propensity += 1
                    return False
                offer = best
            sid = derived_uuid7(f.decided_at, "signal", f.topic, f.token, f.deciding.event_id)
            props: dict[str, Any] = {
                "topic": f.topic,
                "score": f.score,
                "rule": describe(d),
                "evidence": [e.to_dict() for e in f.evidence],
                "decided_at": _iso(f.decided_at),
                "window_days": d.window_days,
                "consent": consent,
            }
            if offer:
                props["offer"] = offer
            event = {
                "id": sid,
                "type": "interest_signal",
                "schema_version": 1,
                "time": _iso(int(time.time() * 1000)),
                "user_id": user_id,
                "source": "signals",
                "properties": props,
            }
            headers = {"Nats-Msg-Id": sid, EXPECTED_LAST_SUBJECT_SEQ: str(last_seq)}
            fut = await self.publisher.pipeline.publish(subject, orjson.dumps(event), headers)
            try:
                await asyncio.wait_for(fut, self.publisher.ack_timeout)
            except Refused as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    self.stats.conflicts += 1
                    continue  # someone else published: check the cooldown again
                raise
            self.stats.published += 1
            return True
        return False

    async def _consent(self, token: str) -> dict[str, bool]:
        state = self.detector.users.get(token)
        if state is not None and "marketing" in state.consent:
            return dict(state.consent)
        profile = await self.store.fresh().read(token)
        stored = (profile or {}).get("consent") or {}
        return {k: v for k, v in stored.items() if isinstance(v, bool)}

    async def _propensity(self, token: str, d: SignalDef) -> tuple[float, str | None]:
        """The highest propensity among the topic's offers, from the active NBO model."""
        from models.base import load_packed
        from models.nbo import NextBestOffer, features

        assert d.propensity is not None
        registry = await Registry.open(self.nc)
        raw = await registry.kv.get(f"active.{d.propensity.slot}")
        if raw is None:
            return 0.0, None
        version = raw.decode()
        cached = self._models.get(d.propensity.slot)
        if cached is None or cached[0] != version:
            artifact = await registry.artifact(version)
            model = await asyncio.to_thread(load_packed, artifact)
            cached = self._models[d.propensity.slot] = (version, model)
        model = cached[1]
        if not isinstance(model, NextBestOffer):
            return 0.0, None
        profile = await self.store.fresh().read(token) or {}
        p = model.propensity(features(profile, model.names, int(time.time() * 1000)))[0]
        best, value = None, 0.0
        for offer in d.propensity.offers:
            if offer in model.offers:
                v = float(p[model.offers.index(offer)])
                if v > value:
                    best, value = offer, v
        return value, best


def _offer(f: Firing) -> str | None:
    """The item the newest piece of evidence is about, if any."""
    for e in reversed(f.evidence):
        if e.item_id:
            return e.item_id
    return None


def topics(definitions: dict[str, SignalDef]) -> Iterable[str]:
    return sorted(definitions)

"""Replaying stored history through a candidate model beside the active one (parallel models).

`run` walks the stored ACTIVITY and CRM events once, in log order, keeps each user's profile
with the engine's own projection (`engine.profiles.stitch.fold`, login stitching included), and
at each *decision point* asks the real pipeline (`Serving.recommend`: rules, caps, fallbacks,
the profile's 20-recent-items window) what each side would have shown at the event's time.

- **Decision point**: a user event in `[since, until)` (event time) after which the live
  recommender recomputes lists (every type but `QUIET_TYPES`), for the user whose event it
  is. Earlier events are folded, never decided on; later ones only complete horizons.
- **Next interactions**: a list is scored against the items of the user's next `horizon`
  interactions (the types models learn from, `DEFAULT_WEIGHTS`): hit rate and nDCG@k (binary
  relevance). A list no interaction follows is not scored; consecutive lists no interaction
  separates and that are the same on both sides count once, weighted by their number.
- **Next acquisitions**: an `item_purchased` (or CRM `converted`) in the window is credited
  to a side when one of the user's last `horizon` lists there showed the item; value captured
  is the credited share of their value (the event's `value`, else the catalogue's).
- Also overlap@k, the share of lists that differ (items or order), coverage (share of the
  catalogue shown), novelty (mean -log2 of a shown item's share of the replay's
  interactions), offer mix (shown positions per category), fallbacks.
- **Verdict**: per user the mean nDCG difference (candidate - active) over their scored lists,
  averaged over users with a 95 % interval (users are independent, one user's lists are not).

CRM (written by agents, far smaller) is read first and held by user until that user's next
later activity event, so both streams interleave by event time. Impressions really shown
(`recommendation_shown`) are history on both sides: caps count what the live model showed.
Memory is per user: profile(s), at most `MAX_PENDING` pending and `horizon` recent lists, in an
LRU of `max_users` (~5 KiB a user; one evicted and seen again starts empty, `events.evicted`),
plus the held CRM events. `sample` < 1 decides for that share of users only (a stable hash;
every event is still folded). Counterfactuals: the candidate side may use another slots file and
leave a period out (`exclude`: its profiles never fold those events).
"""

from __future__ import annotations

import gc
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from engine.bus import Bus, Record, Refusal, decode
from engine.bus.consumer import Batch
from engine.profiles import stitch
from engine.profiles.profile import CannotApply, settle_floor, time_ms
from engine.recommender.core import Outcome, Serving
from engine.recommender.lists import QUIET_TYPES
from models.data import DEFAULT_WEIGHTS
from nerve_client.subjects import ACTIVITY, CRM, SHORT

ITEM_TYPES = frozenset(DEFAULT_WEIGHTS)
MAX_PENDING = 32
DAY_MS = 86_400_000


def ndcg(items: tuple[str, ...], relevant: set[str], k: int) -> float:
    """nDCG@k with binary relevance (ideal: min(relevant, k) hits on top)."""
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(items[:k]) if x in relevant)
    return dcg / sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))


class Pending:
    """A decided pair of lists waiting for the user's next interactions."""

    __slots__ = ("day", "items", "left", "relevant", "weight")

    def __init__(self, items: tuple[tuple[str, ...], tuple[str, ...]], day: int, left: int) -> None:
        self.items, self.day, self.left = items, day, left
        self.relevant: set[str] = set()
        self.weight = 1


class Tally:
    """One side's running totals (bounded by the catalogue and the number of days)."""

    def __init__(self) -> None:
        self.lists = self.empty = self.fallbacks = 0
        self.shown_items: dict[str, int] = {}
        self.categories: dict[str, int] = {}
        self.weight = self.hits = self.gain = 0.0
        self.daily: dict[int, list[float]] = {}  # day -> [weight, hits, gain]
        self.acquisitions = self.acquired_hits = 0
        self.value_total = self.value_captured = 0.0

    def shown(self, outcome: Outcome, items: tuple[str, ...], catalog: Any) -> None:
        self.lists += 1
        self.empty += not items
        self.fallbacks += outcome.fallback is not None
        for item in items:
            self.shown_items[item] = self.shown_items.get(item, 0) + 1
            entry = catalog.get(item)
            category = (entry.category if entry is not None else None) or "?"
            self.categories[category] = self.categories.get(category, 0) + 1

    def scored(self, hit: bool, gain: float, weight: int, day: int) -> None:
        self.weight, self.hits, self.gain = (
            self.weight + weight,
            self.hits + weight * hit,
            self.gain + weight * gain,
        )
        d = self.daily.setdefault(day, [0.0, 0.0, 0.0])
        d[0], d[1], d[2] = d[0] + weight, d[1] + weight * hit, d[2] + weight * gain

    def acquired(self, value: float, captured: bool) -> None:
        self.acquisitions += 1
        self.acquired_hits += captured
        self.value_total += value
        self.value_captured += value * captured


class Verdict:
    """The mean of per-user nDCG differences and its 95 % interval (Welford's update)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def summary(self) -> dict[str, Any]:
        ci, verdict = None, "not enough data"
        if self.n >= 2:
            half = 1.96 * math.sqrt(self.m2 / (self.n - 1) / self.n)
            ci = [self.mean - half, self.mean + half]
            verdict = "no significant difference"
            verdict = "candidate better" if ci[0] > 0 else verdict
            verdict = "candidate worse" if ci[1] < 0 else verdict
        return {"users_scored": self.n, "user_ndcg_diff": self.mean, "ci95": ci, "verdict": verdict}


@dataclass(frozen=True)
class Side:
    """One side of a replay: a model version served under one slots configuration."""

    label: str
    version: str
    model: str
    serving: Serving
    config: str


@dataclass(frozen=True)
class Plan:
    slot: str
    active: Side
    candidate: Side
    since_ms: int | None = None
    until_ms: int | None = None
    exclude: tuple[int, int] | None = None
    horizon: int = 5
    max_users: int = 200_000
    sample: float = 1.0


class _User:
    __slots__ = ("lists", "pending", "verdict")

    def __init__(self, horizon: int) -> None:
        self.pending: deque[Pending] = deque()
        self.lists = (deque[frozenset[str]](maxlen=horizon), deque[frozenset[str]](maxlen=horizon))
        self.verdict = [0.0, 0.0]  # weight, weighted sum of nDCG differences


class Replayer:
    """The broker-free replay: feed it batches (`crm`, then `activity`), then `finish`."""

    def __init__(self, plan: Plan, progress: Callable[[int], None] | None = None) -> None:
        self.plan = plan
        self.progress = progress
        self.profiles: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.other: dict[str, dict[str, Any]] | None = {} if plan.exclude else None
        self.users: dict[str, _User] = {}
        self.held_crm: dict[str, deque[tuple[int, int, dict[str, Any]]]] = {}
        self.tallies = (Tally(), Tally())
        self.ks = tuple(s.serving.config.slots[plan.slot].k for s in (plan.active, plan.candidate))
        self.verdict = Verdict()
        self.popularity: dict[str, int] = {}
        self.counts = dict.fromkeys(
            ("read", "folded", "refused", "excluded", "decisions", "evicted", "unscored"), 0
        )
        self.overlap = [0.0, 0]  # sum of overlap@k, lists that differ
        self.catalogue = _catalogue_size(plan)
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.stored: int | None = None  # messages in the streams when the replay started

    # -- input --------------------------------------------------------------------------------
    def crm(self, batch: Batch) -> None:
        """Hold the CRM events by user, to interleave them with the activity by time."""
        for record, t in self._records(CRM, batch):
            self.held_crm.setdefault(record.token, deque()).append((t, record.seq, record.event))

    def activity(self, batch: Batch) -> None:
        for record, t in self._records(ACTIVITY, batch):
            held = self.held_crm.get(record.token)
            while held and held[0][0] <= t:
                ct, cseq, cevent = held.popleft()
                self._event("crm", cseq, record.token, cevent, ct)
            self._event("activity", record.seq, record.token, record.event, t)

    def _records(self, stream: str, batch: Batch) -> list[tuple[Record, int]]:
        out = []
        for seq, subject, data in batch:
            record = decode(stream, seq, subject, data)  # what the live services refuse too
            if isinstance(record, Refusal):
                self.counts["refused"] += 1
            elif not record.system:
                try:
                    out.append((record, time_ms(record.event.get("time"))))
                except CannotApply:
                    self.counts["refused"] += 1
        self.counts["read"] += len(batch)
        if self.progress:
            self.progress(len(batch))
        return out

    # -- one event ----------------------------------------------------------------------------
    def _event(self, short: str, seq: int, token: str, event: dict[str, Any], t: int) -> None:
        plan = self.plan
        etype, item = event.get("type"), event.get("item_id")
        user = self.users.get(token)
        if isinstance(item, str) and etype in ITEM_TYPES:
            self.popularity[item] = self.popularity.get(item, 0) + 1
            if user is not None and user.pending:
                self._interacted(user, item)
        if plan.until_ms is not None and t >= plan.until_ms:
            return
        inside = (plan.since_ms is None or t >= plan.since_ms) and self._sampled(token)
        if inside and user is not None and isinstance(item, str) and _acquired(event):
            self._acquisition(user, item, event)
        if not self._fold(short, seq, token, event, t):
            return
        if inside and etype not in QUIET_TYPES:
            self._decide(token, t)

    def _sampled(self, token: str) -> bool:
        """Whether `token` is among the users decided on (`sample`, by a stable hash)."""
        return self.plan.sample >= 1.0 or crc32(token.encode()) % 10_000 < self.plan.sample * 1e4

    def _fold(self, short: str, seq: int, token: str, event: dict[str, Any], t: int) -> bool:
        """Fold into the active side's profiles and, unless it is left out, the candidate's."""
        try:
            _fold(self.profiles, token, event, short, seq)
            if self.other is not None:
                lo, hi = self.plan.exclude or (0, 0)
                if lo <= t < hi:
                    self.counts["excluded"] += 1
                else:
                    _fold(self.other, token, event, short, seq)
        except CannotApply:
            self.counts["refused"] += 1
            return False
        self.counts["folded"] += 1
        self.profiles.move_to_end(token)
        while len(self.profiles) > self.plan.max_users:
            self._evict(next(iter(self.profiles)))
        return True

    def _evict(self, token: str) -> None:
        self.profiles.pop(token, None)
        if self.other is not None:
            self.other.pop(token, None)
        user = self.users.pop(token, None)
        if user is not None:
            self.counts["evicted"] += 1
            self._close(user)

    # -- lists and their scores ---------------------------------------------------------------
    def _decide(self, token: str, t: int) -> None:
        plan = self.plan
        profile = self.profiles[token]
        other = profile if self.other is None else self.other.get(token) or stitch.blank(token)
        a = plan.active.serving.recommend(plan.slot, profile, t)
        c = plan.candidate.serving.recommend(plan.slot, other, t)
        items = (_items(a), _items(c))
        day = t // DAY_MS
        for tally, outcome, shown in zip(self.tallies, (a, c), items, strict=True):
            tally.shown(outcome, shown, plan.active.serving.catalog)
        k = max(self.ks) or 1
        self.overlap[0] += len(set(items[0]) & set(items[1])) / k
        self.overlap[1] += items[0] != items[1]
        self.counts["decisions"] += 1
        user = self.users.get(token)
        if user is None:
            user = self.users[token] = _User(plan.horizon)
        for recent, shown in zip(user.lists, items, strict=True):
            recent.append(frozenset(shown))
        last = user.pending[-1] if user.pending else None
        if last is not None and last.left == plan.horizon and last.items == items:
            last.weight += 1  # nothing happened in between: the same future judges both
            return
        user.pending.append(Pending(items, day, plan.horizon))
        if len(user.pending) > MAX_PENDING:
            self._resolve(user, user.pending.popleft())

    def _interacted(self, user: _User, item: str) -> None:
        for p in user.pending:
            p.relevant.add(item)
            p.left -= 1
        while user.pending and user.pending[0].left <= 0:
            self._resolve(user, user.pending.popleft())

    def _resolve(self, user: _User, p: Pending) -> None:
        if not p.relevant:
            self.counts["unscored"] += p.weight
            return
        gains = [ndcg(items, p.relevant, k) for items, k in zip(p.items, self.ks, strict=True)]
        for tally, items, gain in zip(self.tallies, p.items, gains, strict=True):
            tally.scored(bool(p.relevant.intersection(items)), gain, p.weight, p.day)
        user.verdict[0] += p.weight
        user.verdict[1] += p.weight * (gains[1] - gains[0])

    def _acquisition(self, user: _User, item: str, event: dict[str, Any]) -> None:
        if not user.lists[0]:
            return
        value = (event.get("properties") or {}).get("value")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            entry = self.plan.active.serving.catalog.get(item)
            value = float(entry.value or 0.0) if entry is not None else 0.0
        for tally, recent in zip(self.tallies, user.lists, strict=True):
            tally.acquired(float(value), any(item in shown for shown in recent))

    def _close(self, user: _User) -> None:
        while user.pending:
            self._resolve(user, user.pending.popleft())
        if user.verdict[0]:
            self.verdict.add(user.verdict[1] / user.verdict[0])

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> None:
        """Fold the CRM events no later activity came after (by time) and close every user:
        the tallies are final (`training.replay_cli.summary` turns them into the result)."""
        rest = sorted(
            (t, seq, token, e) for token, held in self.held_crm.items() for t, seq, e in held
        )
        self.held_crm.clear()
        for t, seq, token, event in rest:
            self._event("crm", seq, token, event, t)
        for user in self.users.values():
            self._close(user)
        self.users.clear()
        self.seconds = time.perf_counter() - self.started


def _fold(
    profiles: dict[str, dict[str, Any]], token: str, event: dict[str, Any], short: str, seq: int
) -> None:
    for t in stitch.fold(profiles, token, event, short, seq):
        settle_floor(profiles[t], short, seq)  # in order, once each: `applied` stays empty


def _items(outcome: Outcome) -> tuple[str, ...]:
    return tuple(r.item_id for r in outcome.items)


def _acquired(event: dict[str, Any]) -> bool:
    if event.get("type") == "item_purchased":
        return True
    props = event.get("properties") or {}
    return event.get("type") == "crm_contact_logged" and props.get("outcome") == "converted"


def _catalogue_size(plan: Plan) -> int:
    """Items in the catalogue, else that the sides' models can recommend (for coverage)."""
    if len(plan.active.serving.catalog):
        return len(plan.active.serving.catalog)
    sides = (plan.active, plan.candidate)
    models = [m.model for s in sides for m in s.serving.models.values()]
    return len({str(i) for m in models for i in m.candidates()})


async def run(bus: Bus, plan: Plan, progress: Callable[[int], None] | None = None) -> Replayer:
    """Replay the stored log through both sides of `plan` (see the module docstring); the
    finished `Replayer` holds the tallies."""
    replayer = Replayer(plan, progress)
    replayer.stored = sum([await bus.stream_messages(s) for s in SHORT])
    # Profiles are acyclic: reference counting frees them (as `engine.profiles.replay` does).
    gc.disable()
    try:
        await bus.scan(CRM, replayer.crm)
        await bus.scan(ACTIVITY, replayer.activity)
    finally:
        gc.enable()
    replayer.finish()
    return replayer

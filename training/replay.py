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
plus the held CRM events and one batch. `sample` < 1 decides for that share of users only (a
stable hash; every event is still folded). Counterfactuals: the candidate side may use another
slots file and leave a period out (`exclude`: its profiles never fold those events).

**Batches**: the lists of `batch` decision points (of many users) are computed together
(`Serving.recommend_many`, each at its own time), each from a copy of the profile as it stood at
that point; what happened meanwhile (interactions, acquisitions, evictions) waits in log order
and is scored once the lists are known, so the result is the one of `batch` = 1 (tested).
Reasons are not computed (`items_only`): the replay compares items.
"""

from __future__ import annotations

import copy
import gc
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import orjson

from engine.bus import Bus, Record, Refusal, decode
from engine.bus.consumer import Batch
from engine.profiles import stitch
from engine.profiles.profile import CannotApply, settle_floor, time_ms
from engine.recommender.core import Outcome, Serving
from engine.recommender.lists import QUIET_TYPES
from models.data import DEFAULT_WEIGHTS
from models.scorer import Scorer
from nerve_client.subjects import ACTIVITY, CRM, SHORT
from training.replay_scores import DAY_MS, Pending, Tally, Verdict, ndcg

ITEM_TYPES = frozenset(DEFAULT_WEIGHTS)
MAX_PENDING = 32
INTERACT, ACQUIRE, DECIDE, EVICT = range(4)


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
    batch: int = 256


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
        self.queue: list[tuple[dict[str, Any], dict[str, Any], int]] = []  # lists to compute
        self.ops: list[tuple[Any, ...]] = []  # what follows the first of them, in log order

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
        if isinstance(item, str) and etype in ITEM_TYPES:
            self.popularity[item] = self.popularity.get(item, 0) + 1
            self._later((INTERACT, token, item))
        if plan.until_ms is not None and t >= plan.until_ms:
            return
        inside = (plan.since_ms is None or t >= plan.since_ms) and self._sampled(token)
        if inside and isinstance(item, str) and _acquired(event):
            self._later((ACQUIRE, token, item, self._value(item, event)))
        if not self._fold(short, seq, token, event, t):
            return
        if inside and etype not in QUIET_TYPES:
            self._queue(token, t)

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
        self._later((EVICT, token))

    # -- batches: lists computed together, what followed them applied after, in order -------
    def _queue(self, token: str, t: int) -> None:
        """A decision point: its lists are computed with the batch, from profile copies."""
        profile = _snapshot(self.profiles[token])
        other = profile
        if self.other is not None:
            found = self.other.get(token)
            other = stitch.blank(token) if found is None else _snapshot(found)
        self.ops.append((DECIDE, token, t, len(self.queue)))
        self.queue.append((profile, other, t))
        if len(self.queue) >= self.plan.batch:
            self.flush()

    def _later(self, op: tuple[Any, ...]) -> None:
        """Apply `op` now, or after the lists queued before it (keeping the log order)."""
        if not self.queue:
            self._apply(op)
            return
        self.ops.append(op)
        if len(self.ops) >= 64 * self.plan.batch:
            self.flush()

    def flush(self) -> None:
        """Compute the queued lists (one call per side) and apply what waited, in order."""
        if not self.queue:
            return
        plan, queue, ops = self.plan, self.queue, self.ops
        self.queue, self.ops = [], []
        times = [t for _, _, t in queue]
        a = plan.active.serving.recommend_many(plan.slot, [q[0] for q in queue], times)
        c = plan.candidate.serving.recommend_many(plan.slot, [q[1] for q in queue], times)
        for op in ops:
            if op[0] == DECIDE:
                self._decided(op[1], op[2], a[op[3]], c[op[3]])
            else:
                self._apply(op)

    def _apply(self, op: tuple[Any, ...]) -> None:
        kind, user = op[0], self.users.get(op[1])
        if user is None:
            return
        if kind == INTERACT and user.pending:
            self._interacted(user, op[2])
        elif kind == ACQUIRE:
            self._acquisition(user, op[2], op[3])
        elif kind == EVICT:
            del self.users[op[1]]
            self.counts["evicted"] += 1
            self._close(user)

    # -- lists and their scores ---------------------------------------------------------------
    def _decided(self, token: str, t: int, a: Outcome, c: Outcome) -> None:
        plan = self.plan
        items = (_items(a), _items(c))
        day = t // DAY_MS
        self.tallies[0].shown(a, items[0])
        self.tallies[1].shown(c, items[1])
        shown = (frozenset(items[0]), frozenset(items[1]))
        self.overlap[0] += len(shown[0] & shown[1]) / (max(self.ks) or 1)
        self.overlap[1] += items[0] != items[1]
        self.counts["decisions"] += 1
        user = self.users.get(token)
        if user is None:
            user = self.users[token] = _User(plan.horizon)
        user.lists[0].append(shown[0])
        user.lists[1].append(shown[1])
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

    def _value(self, item: str, event: dict[str, Any]) -> float:
        value = (event.get("properties") or {}).get("value")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            entry = self.plan.active.serving.catalog.get(item)
            value = float(entry.value or 0.0) if entry is not None else 0.0
        return float(value)

    def _acquisition(self, user: _User, item: str, value: float) -> None:
        if not user.lists[0]:
            return
        for tally, recent in zip(self.tallies, user.lists, strict=True):
            tally.acquired(value, any(item in shown for shown in recent))

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
        self.flush()
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


def _snapshot(profile: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a profile (JSON by contract; orjson is ~4x faster than deepcopy)."""
    return dict(orjson.loads(orjson.dumps(profile)))


def items_only(model: Scorer) -> Scorer:
    """`model` without reasons: a shallow copy whose `explain` names no driver, so every reason
    is its model's default. The replay compares items only, and `explain` was a third of a
    list's cost. A model without an instance dict is served as it is."""
    quiet = copy.copy(model)
    try:
        vars(quiet)["explain"] = _no_drivers
    except TypeError:
        return model
    return quiet


def _no_drivers(*args: Any, **kwargs: Any) -> dict[str, str]:
    return {}


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

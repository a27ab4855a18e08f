"""The recommender service: from a user's event to an updated, explained list in milliseconds.

**Input.** Durable push consumers on ACTIVITY and CRM (a callback per message, the fast path
in NATS-NOTES) fill one queue; one worker takes everything queued (up to `batch`, 100: a batch
is published only once it is all computed, so its size bounds the latency it adds), groups it by
user and folds each user's events into that user's working profile with the profiles
projection itself (`engine.profiles.profile.apply`, exact dedupe by stream sequence). A user's
working profile starts as the stored profile (`profiles` bucket) the first time the service
sees the user, and then follows the log directly: the service never waits for the profiles
service.

**Output.** For each user whose batch holds an event that can change a list (every user event
but `page_viewed`), every slot is recomputed once (a burst of events is coalesced) and a
`recommendations_updated` event is published on `reco.<user>.<slot>` only when what the user
would see changed (items, order or reasons). Each publish carries the subject's last sequence
as `Nats-Expected-Last-Subject-Sequence`, so the stream refuses an update computed from a stale
view: a subject's history is totally ordered and never holds the same list twice in a row. The
inputs are acknowledged (cumulatively) only after every publish of the batch is stored.

**Replicas.** Replicas split the users (`engine.replicas`): with `--replicas N`, replica `i`
owns the users whose token hashes to `i` (CRC-32 mod N) and has its own durable consumer
(`recommender-i-of-N`); it reads every event and skips the others' users. A user's events are
therefore handled by one worker, in log order, and two replicas never publish for the same user.
(A shared durable consumer would deal a user's events to both and could publish an older view
after a newer one.)
A replica that is down holds back only its own users, and resumes where it stopped.

**Requests.** `reco.request` (JSON: `user_id` or `anonymous_id`, `slot`, `k`, `context`) is
answered by the owning replica through the same code path, for any user: unknown users get the
slot's fallback. The answer is the stored list when it is still what the user would see, else
the new list, published first so that its id can be explained and attributed.

**Models.** The active model of each registry slot is loaded at start and again on every
`model_published` (a core subscription, so a backlog does not delay it), in the background: the
artifact is fetched, unpacked and loaded off the event loop, then swapped in with one
assignment. Computations in flight keep the model they started with; every list carries the
version it was made with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.bus import Bus, Conditional, Record, Refusal, Subscription, decode
from engine.bus.consumer import Delivery, PushConsumer, refusals
from engine.bus.registry import Registry
from engine.bus.retry import settle_batch
from engine.health import beating
from engine.profiles.profile import CannotApply
from engine.profiles.store import ProfileStore
from engine.profiles.tombstones import Tombstones
from engine.recommender.core import Serving
from engine.recommender.lists import QUIET_TYPES, Last, Stats, UserState, build_event, signature
from engine.recommender.loading import load_active
from engine.recommender.slots import load_slots
from engine.recommender.working import WorkingSet
from engine.replicas import owner
from engine.settings import ACK_WAIT_S, Settings
from nerve_client.events.requests import error_reply, parse_request
from nerve_client.subjects import (
    CATALOG,
    DEADLETTER,
    REQUEST_SUBJECT,
    SHORT,
    reco_subject,
    user_token,
)

log = logging.getLogger("nerve.recommender")


class RecommenderService:
    name = "recommender"

    def __init__(
        self,
        bus: Bus,
        serving: Serving,
        store: ProfileStore,
        *,
        replicas: int = 1,
        replica: int = 0,
        batch: int = 100,
        cache_size: int = 100_000,
        ack_wait: float = ACK_WAIT_S,
        work_dir: Path | None = None,
        durable: str | None = None,
    ) -> None:
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} of {replicas}: must be in 0..{replicas - 1}")
        self.bus = bus
        self.serving = serving
        self.store = store
        self.replicas, self.replica = replicas, replica
        self.durable = durable or f"recommender-{replica}-of-{replicas}"
        self.batch = batch
        self.users = WorkingSet(bus, store, list(serving.config.slots), cache_size)
        self.ack_wait = ack_wait
        self.work_dir = work_dir
        self.stats = Stats()
        self.queue: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.source = "given"
        self.forgotten: Tombstones | frozenset[str] = frozenset()
        """Erased users: nothing is computed or stored for them again (set in `run`)."""

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> RecommenderService:
        opts = settings.recommender
        slots, source = load_slots(opts.config, settings.broker.data_dir)
        service = cls(
            bus,
            Serving(slots),
            await ProfileStore.open(bus),
            replicas=opts.replicas,
            replica=opts.replica,
            ack_wait=settings.services.ack_wait_s,
        )
        service.source = str(source)
        return service

    def describe(self) -> str:
        slots = ", ".join(self.serving.config.slots)
        return f"{self.durable}, slots {slots} (from {self.source})"

    def owns(self, token: str) -> bool:
        return owner(token, self.replicas) == self.replica

    def serves(self, record: Record) -> bool:
        """A user event of a user this replica owns and that was not forgotten."""
        return not record.system and self.owns(record.token) and record.token not in self.forgotten

    # -- running ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.forgotten = await Tombstones.open(self.bus)
        registry = await self.bus.registry()
        await self.reload(registry)
        consumers = [
            self.bus.push(stream, self.durable, self._enqueue, ack_wait=self.ack_wait)
            for stream in SHORT
        ]

        async def on_published() -> None:
            self._spawn(self.reload(registry))

        async def progress() -> tuple[int, int]:
            return self.stats.events, sum([await c.backlog() for c in consumers])

        subs: list[Subscription] = [
            await self.bus.serve(REQUEST_SUBJECT, self._request),
            await self.bus.on_model_published(on_published),
            await self.bus.on_forget(self._forget),
        ]
        async with self.bus.follow(CATALOG, self.serving.catalog.update):
            for c in consumers:
                await c.start()
            self.ready.set()
            log.info(
                "recommender %s: %d slots, models %s",
                self.durable,
                len(self.serving.config.slots),
                self.serving.versions(),
            )
            sweeps = [self.bus.sweep_gave_up(n, self.durable, self._gave_up, stop) for n in SHORT]
            try:
                async with beating(self.bus, self.durable, progress):
                    await asyncio.gather(self._work(consumers, stop, registry), *sweeps)
            finally:
                for c in consumers:
                    await c.stop()
                for s in subs:
                    with contextlib.suppress(Exception):
                        await s.unsubscribe()
                for t in list(self._tasks):
                    t.cancel()

    def _enqueue(self, d: Delivery) -> None:
        self.queue.append(d)
        self._wake.set()

    async def _work(
        self, consumers: list[PushConsumer], stop: asyncio.Event, registry: Registry
    ) -> None:
        by_stream = {c.stream: c for c in consumers}
        poll = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - poll > 30:  # a model activated while a message was lost
                poll = time.monotonic()
                self._spawn(self.reload(registry))
            if not self.queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            n = min(len(self.queue), self.batch)
            deliveries = [self.queue.popleft() for _ in range(n)]
            if not await self._process_until_done(deliveries, stop):
                return  # unacknowledged: delivered again after a restart
            last: dict[str, Delivery] = {}
            for d in deliveries:
                last[d.stream] = d
            for stream, d in last.items():
                await by_stream[stream].ack(d)

    async def _process_until_done(self, deliveries: list[Delivery], stop: asyncio.Event) -> bool:
        """Process the batch until it is stored (False if stopped first): acknowledgements are
        cumulative, so moving on would acknowledge it. A message that fails on its own while
        the broker answers is dead-lettered with its error (`engine.bus.retry`); effects are
        idempotent, so what a retry repeats is stored once."""

        async def give_up(d: Delivery, error: str) -> None:
            await self._deadletter([(d, f"could not be processed: {error}")])

        async def probe() -> None:
            await self.bus.stream_messages(DEADLETTER)

        return await settle_batch(deliveries, self.process, give_up, probe, stop)

    # -- the batch ------------------------------------------------------------------------------
    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Fold a batch into the working profiles, recompute the users it touches, publish the
        lists that changed and wait until they are stored."""
        self.stats.batches += 1
        self.stats.events += len(deliveries)
        grouped: dict[str, list[tuple[Delivery, dict[str, Any]]]] = {}
        refused: list[tuple[Delivery, str]] = []
        for d in deliveries:
            record = decode(d.stream, d.seq, d.subject, d.data)
            if isinstance(record, Refusal):
                refused.append((d, record.reason))
            elif (
                not record.system and self.owns(record.token) and record.token not in self.forgotten
            ):
                grouped.setdefault(record.token, []).append((d, record.event))
        states = await self.users.prepare({t: [e for _, e in evs] for t, evs in grouped.items()})
        now_ms = time.time_ns() // 1_000_000
        changed: dict[str, UserState] = {}
        for token, events in grouped.items():
            for d, event in events:
                try:
                    touched = self.users.fold(
                        states, token, event, SHORT[d.stream], d.seq, skip=self.forgotten
                    )
                except CannotApply as exc:
                    refused.append((d, str(exc)))
                    continue
                # Recompute even if the profile already held the event (loaded from the
                # bucket after the profiles service applied it): the stored lists may not.
                # A visitor's event also recomputes the user it logged in as (`stitch`).
                if event.get("type") not in QUIET_TYPES:
                    for st in (states[token], *touched):
                        if self.owns(st.token):
                            changed[st.token] = st
        self.stats.users += len(changed)
        if changed:
            await self._recompute(list(changed.values()), now_ms)
        if refused:
            await self._deadletter(refused)

    async def _recompute(self, states: list[UserState], now_ms: int) -> None:
        ordered = sorted(states, key=lambda s: s.token)
        for s in ordered:
            await s.lock.acquire()
        try:
            todo = [(s, slot) for s in ordered for slot in self.serving.config.slots]
            for _attempt in range(3):
                todo = await self._publish_changes(todo, now_ms)
                if not todo:
                    return
                for s, slot in todo:  # lost a compare-and-set: read the subject's head again
                    s.last[slot] = await self.users.read_last(s.token, slot)
            raise RuntimeError(f"reco subjects kept changing under us: {todo[:3]}")
        finally:
            for s in ordered:
                s.lock.release()

    async def _publish_changes(
        self, todo: list[tuple[UserState, str]], now_ms: int, context: str | None = None
    ) -> list[tuple[UserState, str]]:
        """Compute each (user, slot), publish what changed; return those that lost a race."""
        pending: list[tuple[UserState, str, dict[str, Any]]] = []
        writes: list[Conditional] = []
        for s, slot in todo:
            outcome = self.serving.recommend(slot, s.profile, now_ms, context_item=context)
            self.stats.computed += 1
            if outcome.signature() == s.last[slot].signature:
                self.stats.unchanged += 1
                continue
            event = build_event(s.token, outcome, s.profile, now_ms)
            subject = reco_subject(s.token, slot)
            writes.append(Conditional(subject, orjson.dumps(event), event["id"], s.last[slot].seq))
            pending.append((s, slot, event))
        if not pending:
            return []
        acks = await self.bus.publish_if_last_many(writes)
        lost = []
        for (s, slot, event), ack in zip(pending, acks, strict=True):
            if ack is None:
                self.stats.conflicts += 1
                lost.append((s, slot))
            else:
                s.last[slot] = Last(ack.seq, signature(event), event)
                self.stats.published += 1
        return lost

    def _forget(self, token: str) -> None:
        if isinstance(self.forgotten, Tombstones):
            self.forgotten.note(token)
        self.users.forget(token)
        self.store.keyring.forget(token)

    # -- requests -----------------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, data: bytes) -> bytes | None:
        """The reply to a `reco.request`, or None when another replica owns the user."""
        req = parse_request(data)
        if isinstance(req, bytes):  # refused: one answer is enough
            return req if self.replica == 0 else None
        token = user_token(req.user_id, req.anonymous_id)
        if not self.owns(token):
            return None
        self.stats.requests += 1
        if token in self.forgotten:
            field = "user_id" if req.user_id else "anonymous_id"
            return error_reply(field, "this user was forgotten (nerve forget)", 410)
        try:
            return await self.answer(token, req.slot, req.k, req.context.item_id)
        except Exception as exc:  # the requester must hear something
            log.exception("request for %s/%s failed", token, req.slot)
            return error_reply("", f"{type(exc).__name__}: {exc}", 500)

    async def answer(self, token: str, slot: str, k: int | None, context: str | None) -> bytes:
        """The reply to a request: the user's current list for `slot` (published if new)."""
        cfg = self.serving.config.slots.get(slot)
        if cfg is None:
            known = ", ".join(sorted(self.serving.config.slots))
            return error_reply("slot", f"unknown slot {slot!r} (known: {known})", 404)
        warning = None
        if k is not None and k > cfg.k:  # serve what the slot allows, and say so (not a 422)
            warning = f"k={k} is more than slot {slot!r} serves; served its maximum, {cfg.k}"
            k = cfg.k
        state = (await self.users.states([token]))[token]
        async with state.lock:
            now_ms = time.time_ns() // 1_000_000
            for _attempt in range(3):
                if not await self._publish_changes([(state, slot)], now_ms, context):
                    break
                state.last[slot] = await self.users.read_last(token, slot)
        event = state.last[slot].event
        assert event is not None
        props = event["properties"]
        if k is not None:
            props = {**props, "items": props["items"][:k]}
        warned = {"warning": warning} if warning else {}  # the gateway: X-Nerve-Warning
        return orjson.dumps({**event, "properties": props, **warned})

    # -- models -------------------------------------------------------------------------------

    async def reload(self, registry: Registry) -> None:
        """Load the active model of every registry slot the config uses, where it changed."""
        async with self._reload_lock:
            for slot in sorted(self.serving.config.registry_slots()):
                current = self.serving.models.get(slot)
                try:
                    loaded = await load_active(
                        registry, slot, current.version if current else None, self.work_dir
                    )
                except Exception as exc:  # keep serving the previous model
                    log.error("could not load the model of slot %s: %s", slot, exc)
                    continue
                if loaded is not None:
                    self.serving.with_model(loaded)
                    self.stats.reloads += 1
                    log.info("slot %s now served by %s (%s)", slot, loaded.version, loaded.name)

    async def _gave_up(self, r: Refusal) -> None:
        await self.bus.deadletter(refusals("recommender", [(r, r.reason)]))
        self.stats.deadlettered += 1

    async def _deadletter(self, refused: list[tuple[Delivery, str]]) -> None:
        records = refusals("recommender", refused)
        await self.bus.deadletter(records)
        self.stats.deadlettered += len(records)

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

**Replicas.** The broker splits the users: ACTIVITY and CRM are stored in P partitions by user
(`nerve init --partitions`), and any number of replicas share them through leases
(`engine.partitions`); each binds only to the per-partition consumers of the partitions it
holds (`recommender-pNN`), so it receives only its share. A user's events are handled by one
worker, in log order; a partition moves (a replica joins, stops or dies) only after its
previous owner stopped serving it, and the per-subject compare-and-set refuses a stale list.

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
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.bus import Bus, Record, Refusal, Subscription
from engine.bus.consumer import Delivery, PushConsumer, refusals
from engine.bus.registry import Registry
from engine.bus.retry import settle_batch
from engine.health import beating
from engine.partitions import Share, open_share
from engine.profiles.store import ProfileStore
from engine.profiles.tombstones import Tombstones
from engine.recommender import experiments as exp
from engine.recommender.core import Serving
from engine.recommender.inflight import InFlight, Turn, last_per_stream, publish_changes
from engine.recommender.lists import Stats, UserState
from engine.recommender.loading import load_active
from engine.recommender.slots import load_slots
from engine.recommender.triggers import Triggers
from engine.recommender.updates import fold_events, group
from engine.recommender.working import WorkingSet
from engine.settings import ACK_WAIT_S, Settings
from nerve_client.events.requests import error_reply, parse_request
from nerve_client.subjects import (
    CATALOG,
    DEADLETTER,
    REQUEST_SUBJECT,
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
        holder: str | None = None,
        cache_size: int = 100_000,
        ack_wait: float = ACK_WAIT_S,
        work_dir: Path | None = None,
        durable: str | None = None,
    ) -> None:
        self.bus = bus
        self.serving = serving
        self.store = store
        self.replicas = replicas  # expected replicas: the first lease round claims 1/replicas
        self.holder = holder
        self.share: Share | None = None  # the partitions held (set in `run`)
        self.durable = durable or "recommender"  # the lease group and consumer prefix
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
        self.experiments = exp.Experiments()  # reloaded with the models
        self._turn = Turn()

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> RecommenderService:
        opts = settings.recommender
        slots, source = load_slots(opts.config, settings.broker.data_dir)
        service = cls(
            bus,
            Serving(slots),
            await ProfileStore.open(bus),
            replicas=opts.replicas,
            ack_wait=settings.services.ack_wait_s,
        )
        service.source = str(source)
        return service

    def describe(self) -> str:
        slots = ", ".join(self.serving.config.slots)
        held = sorted(self.share.owner.held) if self.share else "none yet"
        return f"{self.durable}, partitions {held}, slots {slots} (from {self.source})"

    def owns(self, token: str) -> bool:
        """Whether this replica holds the user's partition now (all users before `run`)."""
        return self.share is None or self.share.owner.owns_token(token)

    def serves(self, record: Record) -> bool:
        """A user event of a user this replica owns and that was not forgotten."""
        return not record.system and self.owns(record.token) and record.token not in self.forgotten

    # -- running ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.forgotten = await Tombstones.open(self.bus)
        registry = await self.bus.registry()
        await self.reload(registry)
        self.share = share = await open_share(
            self.bus,
            self.durable,
            self._enqueue,
            give_up=self._gave_up,
            ack_wait=self.ack_wait,
            expect=self.replicas,
            holder=self.holder,
        )
        consumers: list[PushConsumer] = list(share.consumers)

        async def on_published() -> None:
            self._spawn(self.reload(registry))

        async def progress() -> tuple[int, int]:
            return self.stats.events, sum([await c.backlog() for c in consumers])

        subs: list[Subscription] = [
            await self.bus.serve(REQUEST_SUBJECT, self._request),
            await self.bus.on_model_published(on_published),
            await self.bus.on_forget(self._forget),
            await exp.watch(self.bus, registry, on_published),  # experiments started, stopped
        ]
        async with self.bus.follow(CATALOG, self.serving.catalog.update):
            await share.start()
            leases = asyncio.create_task(share.owner.run(stop))
            await share.owner.first_round.wait()  # (a broker away: the round is retried)
            self.ready.set()
            log.info("recommender %s: models %s", self.describe(), self.serving.versions())
            try:
                async with beating(self.bus, self.durable, progress):
                    await asyncio.gather(self._work(consumers, stop, registry), leases)
            finally:
                leases.cancel()  # stopped: it released; crashed/cancelled: leases expire
                await share.stop()
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

        async def ack(deliveries: list[Delivery]) -> None:
            for stream, d in last_per_stream(deliveries).items():
                await by_stream[stream].ack(d)

        flight = InFlight(lambda ds: self._process_until_done(ds, stop), ack)
        poll = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - poll > 30:  # a model activated while a message was lost
                    poll = time.monotonic()
                    self._spawn(self.reload(registry))
                if not self.queue:
                    if len(flight) and not await flight.flush():
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.5)
                    continue
                n = min(len(self.queue), self.batch)
                if not await flight.submit([self.queue.popleft() for _ in range(n)]):
                    return  # unacknowledged: delivered again after a restart
            await flight.flush()  # stopped: acknowledge what was done, in order
        finally:
            flight.cancel()

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
        sent = await self._turn.acquire()  # one batch at a time until its lists are sent
        try:
            refused = await self._fold_and_publish(deliveries, sent)
        finally:
            sent()
        if refused:
            await self._deadletter(refused)

    async def _fold_and_publish(
        self, deliveries: Sequence[Delivery], sent: Callable[[], None]
    ) -> list[tuple[Delivery, str]]:
        self.stats.batches += 1
        self.stats.events += len(deliveries)
        grouped, refused = group(deliveries, self.serves)
        states = await self.users.prepare(grouped)
        now_ms = time.time_ns() // 1_000_000
        todo, failed = fold_events(
            self.users,
            states,
            grouped,
            serving=self.serving,
            triggers=self._triggers,
            owns=self.owns,
            forgotten=self.forgotten,
        )
        refused += failed
        exp.untagged_slots(todo.values(), self.serving, self.experiments)
        self.stats.users += len(todo)
        if todo:
            await self._recompute(list(todo.values()), now_ms, sent)
        return refused

    @functools.cached_property
    def _triggers(self) -> Triggers:
        return Triggers(self.serving.config)

    async def _recompute(
        self,
        users: list[tuple[UserState, set[str]]],
        now_ms: int,
        sent: Callable[[], object] | None = None,
    ) -> None:
        """Recompute these users' lists for the slots given, publish what changed (`sent`:
        called once the first attempt's publishes are with the client)."""
        ordered = sorted(users, key=lambda u: u[0].token)
        for s, _ in ordered:
            await s.lock.acquire()
        try:
            order = list(self.serving.config.slots)
            todo = [(s, slot) for s, slots in ordered for slot in order if slot in slots]
            for _attempt in range(3):
                todo = await self._publish(todo, now_ms, None, sent)
                sent = None
                if not todo:
                    return
                for s, slot in todo:  # lost a compare-and-set: read the subject's head again
                    s.last[slot] = await self.users.read_last(s.token, slot)
            raise RuntimeError(f"reco subjects kept changing under us: {todo[:3]}")
        finally:
            for s, _ in ordered:
                s.lock.release()

    @property
    def _publish(self) -> Callable[..., Awaitable[list[tuple[UserState, str]]]]:
        """`inflight.publish_changes` with this service's state."""
        return functools.partial(
            publish_changes, self.bus, self.serving, self.experiments, self.stats
        )

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
        if isinstance(req, bytes):  # refused: one answer is enough, from partition 0's owner
            return req if self.share is None or self.share.owner.owns_partition(0) else None
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
                if not await self._publish([(state, slot)], now_ms, context):
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
            self.experiments = await exp.reload(registry, self.experiments, self.work_dir)

    async def _gave_up(self, r: Refusal) -> None:
        await self.bus.deadletter(refusals("recommender", [(r, r.reason)]))
        self.stats.deadlettered += 1

    async def _deadletter(self, refused: list[tuple[Delivery, str]]) -> None:
        records = refusals("recommender", refused)
        await self.bus.deadletter(records)
        self.stats.deadlettered += len(records)

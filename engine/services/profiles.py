"""The profiles service: project ACTIVITY and CRM into the `profiles` bucket, exactly once.

The fold itself is `engine.profiles.profile.apply` (pure); this module is its broker loop.

One durable pull consumer per stream (`profiles` on ACTIVITY and on CRM), shared by every
replica. Per batch: decode, load the touched profiles (cache, else KV), fold the events in
(`profile.apply` skips anything already applied), write every changed profile with
compare-and-set on its revision, and only then acknowledge the batch. A lost compare-and-set
(another replica wrote the profile meanwhile) reloads that profile and applies the batch's
events to it again, so replicas never overwrite each other's work.

Profiles are stored sealed with a per-user key under a pseudonymous key (`keyring`), so the
superseded revisions the bucket drops cannot be read once the user's key is erased.

An event the projection cannot apply (not JSON, a missing field) is dead-lettered with the reason
and its raw bytes at once, since retrying cannot help. An unexpected error is retried: the event
is negatively acknowledged with a growing delay and dead-lettered when it fails on its
`max_deliver`-th delivery, so one poison message never stalls the stream. Deliveries caused by
kills and timeouts do not count against it: the server keeps redelivering a message up to
`engine.bus.consumer.GIVE_UP_AFTER` times, and what it gives up on then (a message that takes
the service down every time) is dead-lettered from the GAVEUP stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from engine.bus import Bus, Refusal, decode
from engine.bus.consumer import Delivery, DurableConsumer, refusals
from engine.health import beating
from engine.profiles import stitch
from engine.profiles.profile import CannotApply, settle_floor
from engine.profiles.reading import read_profile
from engine.profiles.store import ProfileStore, Slot, blank
from engine.profiles.tombstones import Tombstones
from engine.settings import ACK_WAIT_S, MAX_DELIVER, Settings
from nerve_client.events.requests import error_reply
from nerve_client.subjects import (
    PROFILE_REQUEST_SUBJECT,
    SHORT,
    SubjectError,
    is_user_token,
    split_user_subject,
)

log = logging.getLogger("nerve.profiles")


@dataclass
class Stats:
    applied: int = 0
    skipped: int = 0
    deadlettered: int = 0
    retried: int = 0
    conflicts: int = 0
    batches: int = 0


class ProfileService:
    """Runs the projection until `stop` is set. `fold` is the broker-free core."""

    name = "profiles"

    def __init__(
        self,
        bus: Bus,
        store: ProfileStore,
        *,
        durable: str = "profiles",
        batch: int = 500,
        max_deliver: int = MAX_DELIVER,
        ack_wait: float = ACK_WAIT_S,
        cache_size: int = 50_000,
    ) -> None:
        self.bus = bus
        self.store = store
        self.forgotten: Tombstones | frozenset[str] = frozenset()
        """Erased users, whose events no longer make a profile (set in `run`)."""
        self.ready = asyncio.Event()
        self.durable = durable
        self.batch = batch
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.cache: OrderedDict[str, Slot] = OrderedDict()
        self.cache_size = cache_size
        self.stats = Stats()
        self._floors: dict[str, tuple[int, float]] = {}

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> ProfileService:
        service = cls(
            bus,
            await ProfileStore.open(bus),
            max_deliver=settings.services.max_deliver,
            ack_wait=settings.services.ack_wait_s,
        )
        await bus.on_forget(service.forget)
        return service

    def describe(self) -> str:
        return "projecting ACTIVITY and CRM into the profiles bucket"

    # -- the core, callable without a broker ----------------------------------------------
    def fold(
        self, stream: str, deliveries: Iterable[Delivery], profiles: dict[str, dict[str, Any]]
    ) -> tuple[set[str], list[tuple[Delivery, str]]]:
        """Apply `deliveries` to `profiles` (keyed by token, created when missing); returns
        the tokens changed and the deliveries refused with their reason."""
        changed: set[str] = set()
        refused: list[tuple[Delivery, str]] = []
        for d in deliveries:
            record = decode(d.stream, d.seq, d.subject, d.data)
            if isinstance(record, Refusal):
                refused.append((d, record.reason))
                continue
            if record.system or record.token in self.forgotten:
                self.stats.skipped += 1
                continue
            try:
                touched = stitch.fold(
                    profiles, record.token, record.event, stream, d.seq, skip=self.forgotten
                )
            except CannotApply as exc:
                refused.append((d, str(exc)))
                continue
            changed.update(touched)
            if record.token in touched:
                self.stats.applied += 1
            else:
                self.stats.skipped += 1
        return changed, refused

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.forgotten = await Tombstones.open(self.bus)
        consumers = [self.bus.durable(name, self.durable, ack_wait=self.ack_wait) for name in SHORT]
        for c in consumers:
            await c.start()
        answering = await self.bus.serve(PROFILE_REQUEST_SUBJECT, self.answer)
        self.ready.set()

        async def progress() -> tuple[int, int]:
            s = self.stats
            behind = sum([await c.backlog() for c in consumers])
            return s.applied + s.skipped + s.deadlettered, behind

        async def give_up(r: Refusal) -> None:
            await self.bus.deadletter(refusals("profiles", [(r, r.reason)]))
            self.stats.deadlettered += 1

        loops = [self._loop(c, SHORT[c.stream], stop) for c in consumers]
        sweeps = [self.bus.sweep_gave_up(n, self.durable, give_up, stop) for n in SHORT]
        try:
            async with beating(self.bus, self.durable, progress):
                await asyncio.gather(*loops, *sweeps)
        finally:
            with contextlib.suppress(Exception):
                await answering.unsubscribe()
            for c in consumers:
                await c.stop()

    async def _loop(self, consumer: DurableConsumer, stream: str, stop: asyncio.Event) -> None:
        """Fetch the next batch while the current one is stored (one batch ahead)."""
        queue: asyncio.Queue[list[Delivery]] = asyncio.Queue(maxsize=1)

        async def fetcher() -> None:
            delay = 0.5
            while not stop.is_set():
                try:
                    deliveries = await consumer.fetch(self.batch, timeout=0.5)
                except Exception as exc:  # consumer or stream gone, broker away: recreate
                    log.warning(
                        "fetch from %s failed (%s); retrying in %.1fs", consumer.stream, exc, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                        await consumer.start()
                    continue
                delay = 0.5
                if deliveries:
                    await queue.put(deliveries)

        task = asyncio.create_task(fetcher())
        try:
            while not (stop.is_set() and queue.empty()) and not task.done():
                try:
                    deliveries = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                await self.process(consumer, stream, deliveries)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            while not queue.empty():  # fetched, not processed: let them come again at once
                for d in queue.get_nowait():
                    await consumer.nak(d, delay=0)
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    async def _floor(self, consumer: DurableConsumer) -> int:
        """The consumer's ack floor, refreshed at most once a second."""
        floor, at = self._floors.get(consumer.stream, (0, 0.0))
        if time.monotonic() - at > 1.0:
            floor = await consumer.ack_floor()
            self._floors[consumer.stream] = (floor, time.monotonic())
        return floor

    async def process(
        self, consumer: DurableConsumer, stream: str, deliveries: list[Delivery]
    ) -> None:
        """Store the effect of one batch, then acknowledge it."""
        self.stats.batches += 1
        floor = await self._floor(consumer)
        try:
            await self._settle(consumer, deliveries, await self._store(stream, deliveries, floor))
        except Exception:
            # Unexpected: find the culprit by storing one message at a time; the others are
            # stored and acknowledged, the culprit is retried later and finally dead-lettered.
            log.exception("batch of %d failed; isolating", len(deliveries))
            for d in deliveries:
                try:
                    await self._settle(consumer, [d], await self._store(stream, [d], floor))
                except Exception as exc:
                    await self._retry(consumer, d, f"{type(exc).__name__}: {exc}")

    async def _settle(
        self,
        consumer: DurableConsumer,
        deliveries: list[Delivery],
        refused: list[tuple[Delivery, str]],
    ) -> None:
        refused_ids = {id(d) for d, _ in refused}
        if refused:
            await self._deadletter(consumer, refused)
        await consumer.ack([d for d in deliveries if id(d) not in refused_ids])

    async def _store(
        self, stream: str, deliveries: list[Delivery], floor: int
    ) -> list[tuple[Delivery, str]]:
        needs = [_needs(d) for d in deliveries]
        refused: list[tuple[Delivery, str]] | None = None
        todo = list(range(len(deliveries)))
        for _attempt in range(10):
            wanted = {t for i in todo for t in needs[i] if t not in self.forgotten}
            slots = await self._load(wanted)
            # A visitor's events also reach the user it logged in as (`stitch`): load that too.
            owners = {o for s in slots.values() if s.profile and (o := stitch.owner(s.profile))}
            owners = {o for o in owners if o not in slots and o not in self.forgotten}
            if owners:
                slots.update(await self._load(owners))
            working = {t: s.profile or blank(t) for t, s in slots.items()}
            changed, refused_now = self.fold(stream, [deliveries[i] for i in todo], working)
            for i in todo:  # a retry after a lost write redoes every delivery that touched it
                needs[i] |= {
                    o for t in needs[i] if t in working and (o := stitch.owner(working[t]))
                }
            if refused is None:  # refusals do not depend on the profile: keep the first pass's
                refused = refused_now
            for t in changed:
                settle_floor(working[t], stream, floor)
            order = sorted(changed)
            revisions = await self.store.write([(slots[t], working[t]) for t in order])
            lost = {t for t, rev in zip(order, revisions, strict=True) if rev is None}
            for t, rev in zip(order, revisions, strict=True):
                if rev is not None:
                    slot = slots[t]
                    self._remember(t, Slot(working[t], rev, slot.user_key, slot.pkey))
            if not lost:
                return refused or []
            self.stats.conflicts += len(lost)
            for t in lost:
                self.cache.pop(t, None)
            todo = [i for i in todo if needs[i] & lost]
        raise RuntimeError(f"compare-and-set kept failing for {sorted(lost)[:3]}")

    async def _load(self, tokens: set[str]) -> dict[str, Slot]:
        """Slots of `tokens` (keys created for new users); profiles are copies, so a failed
        write leaves the cache as it was."""
        out: dict[str, Slot] = {}
        missing = []
        for t in tokens:
            hit = self.cache.get(t)
            if hit is None:
                missing.append(t)
            else:
                profile = orjson.loads(orjson.dumps(hit.profile))
                out[t] = Slot(profile, hit.revision, hit.user_key, hit.pkey)
        if missing:
            out.update(await self.store.load(missing, create_keys=True))
        return out

    def _remember(self, token: str, slot: Slot) -> None:
        self.cache[token] = slot
        self.cache.move_to_end(token)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    async def answer(self, data: bytes) -> bytes:
        """The reply to a profile request: `{"user_id"|"anonymous_id": ...}` gets the stored
        profile (`Profile` JSON), `{"error": {...}}` when there is none or the request is bad.
        A fresh key cache per request: a key erased by `nerve forget` is never served again."""
        try:
            req = orjson.loads(data)
            anonymous = "anonymous_id" in req
            user = req["anonymous_id"] if anonymous else req["user_id"]
            if not isinstance(user, str) or not user:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            return error_reply("user_id", "a profile request names user_id or anonymous_id")
        found = await read_profile(self.store.fresh(), user, anonymous=anonymous)
        if found is None:
            return error_reply("user_id", f"no profile for {user!r}", 404)
        return orjson.dumps(found.model_dump(mode="json"))

    def forget(self, token: str) -> None:
        """Drop a user from the caches (after `nerve forget`)."""
        if isinstance(self.forgotten, Tombstones):
            self.forgotten.note(token)
        self.cache.pop(token, None)
        self.store.keyring.forget(token)

    async def _deadletter(
        self, consumer: DurableConsumer, refused: list[tuple[Delivery, str]]
    ) -> None:
        records = refusals("profiles", refused)
        await self.bus.deadletter(records)
        self.stats.deadlettered += len(records)
        for d, _ in refused:
            await consumer.term(d)

    async def _retry(self, consumer: DurableConsumer, d: Delivery, reason: str) -> None:
        if d.delivered >= self.max_deliver:
            await self._deadletter(consumer, [(d, f"failed {d.delivered} times: {reason}")])
        else:
            self.stats.retried += 1
            await consumer.nak(d, delay=0.5 * 2 ** (d.delivered - 1))


def _needs(d: Delivery) -> set[str]:
    """The profiles a delivery reads: its user's and, for a login, the visitor's it links."""
    try:
        token, etype = split_user_subject(d.subject)
    except SubjectError:
        return set()
    if not is_user_token(token):
        return set()
    if etype != "user_identified":
        return {token}
    try:
        event = orjson.loads(d.data)
    except orjson.JSONDecodeError:
        return {token}  # refused by the fold
    return set(stitch.needs(token, event)) if isinstance(event, dict) else {token}

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

**Replicas.** Replicas split the users: with `--replicas N`, replica `i` owns the users whose
token hashes to `i` (CRC-32 mod N) and has its own durable consumer (`recommender-i-of-N`); it
reads every event and skips the others' users. A user's events are therefore handled by one
worker, in log order, and two replicas never publish for the same user. (A shared durable
consumer would deal a user's events to both and could publish an older view after a newer one.)
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
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.bus import Publisher
from engine.bus.consumer import Delivery, PushConsumer, refusals, scan, tail
from engine.bus.pipeline import EXPECTED_LAST_SUBJECT_SEQ, WRONG_LAST_SEQUENCE
from engine.bus.pipeline import Ack, Refused
from engine.bus.reader import last_for_subject
from engine.bus.registry import Registry
from engine.ids import uuid7
from engine.profiles.erasure import FORGET_SUBJECT
from engine.profiles.profile import CannotApply, apply, settle_floor
from engine.profiles.service import blank, token_of
from engine.profiles.store import ProfileStore
from engine.recommender.core import Loaded, Outcome, Serving
from engine.subjects import SYSTEM_TOKEN, decode_token, is_user_token, user_token
from models.base import load_packed

log = logging.getLogger("nerve.recommender")
REQUEST_SUBJECT = "reco.request"
PUBLISHED_SUBJECT = f"activity.{SYSTEM_TOKEN}.model_published"
QUIET_TYPES = frozenset({"page_viewed"})
"""Events that do not trigger a recomputation (they still enter the working profile)."""
SHORT = {"ACTIVITY": "activity", "CRM": "crm"}


def reco_subject(token: str, slot: str) -> str:
    """`reco.<user>.<slot>`: where a user's lists for a slot are kept."""
    return f"reco.{token}.{slot}"


def owner(token: str, replicas: int) -> int:
    """The replica that owns a user: CRC-32 of the token modulo the number of replicas."""
    return zlib.crc32(token.encode()) % replicas if replicas > 1 else 0


class RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    item_id: str | None = Field(default=None, min_length=1, max_length=128)
    page_url: str | None = Field(default=None, max_length=2000)


class RecoRequest(BaseModel):
    """A request on `reco.request`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=128)
    slot: str = Field(min_length=1, max_length=64)
    k: int | None = Field(default=None, ge=1, le=100)
    context: RequestContext = Field(default_factory=RequestContext)


def error_reply(field: str, reason: str, status: int = 422) -> bytes:
    return orjson.dumps({"error": {"field": field, "reason": reason, "status": status}})


@dataclass
class Last:
    """The newest stored list of a (user, slot): its stream sequence (0: none) and content."""

    seq: int = 0
    signature: tuple[tuple[str, str], ...] | None = None
    event: dict[str, Any] | None = None


@dataclass
class UserState:
    token: str
    profile: dict[str, Any]
    last: dict[str, Last]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Stats:
    events: int = 0
    users: int = 0
    computed: int = 0
    published: int = 0
    unchanged: int = 0
    conflicts: int = 0
    requests: int = 0
    deadlettered: int = 0
    batches: int = 0
    reloads: int = 0


def _signature(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((i["item_id"], i["reason"]) for i in event["properties"]["items"])


def build_event(
    token: str, outcome: Outcome, profile: dict[str, Any], now_ms: int
) -> dict[str, Any]:
    """The `recommendations_updated` event of a computed list (envelope id = recommendation id)."""
    rid = uuid7(now_ms)
    positions = profile.get("positions", {})
    user_id, anonymous_id = decode_token(token)
    event: dict[str, Any] = {
        "id": rid,
        "type": "recommendations_updated",
        "schema_version": 1,
        "time": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "source": "recommender",
        "properties": outcome.properties(
            rid,
            positions.get("activity", {}).get("max", 0),
            positions.get("crm", {}).get("max", 0),
        ),
    }
    if user_id is not None:
        event["user_id"] = user_id
    else:
        event["anonymous_id"] = anonymous_id
    return event


class RecommenderService:
    def __init__(
        self,
        nc: Any,
        serving: Serving,
        store: ProfileStore,
        publisher: Publisher,
        *,
        replicas: int = 1,
        replica: int = 0,
        batch: int = 100,
        cache_size: int = 100_000,
        ack_wait: float = 30.0,
        work_dir: Path | None = None,
        durable: str | None = None,
    ) -> None:
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} of {replicas}: must be in 0..{replicas - 1}")
        self.nc = nc
        self.js = nc.jetstream()
        self.serving = serving
        self.store = store
        self.publisher = publisher
        self.replicas, self.replica = replicas, replica
        self.durable = durable or f"recommender-{replica}-of-{replicas}"
        self.batch = batch
        self.cache: OrderedDict[str, UserState] = OrderedDict()
        self.cache_size = cache_size
        self.ack_wait = ack_wait
        self.work_dir = work_dir
        self.stats = Stats()
        self.queue: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self.ready = asyncio.Event()

    def owns(self, token: str) -> bool:
        return owner(token, self.replicas) == self.replica

    # -- running ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        registry = await Registry.open(self.nc)
        await self.reload(registry)
        last_catalog = 0

        def on_catalog(batch: list[tuple[int, str, bytes]]) -> None:
            nonlocal last_catalog
            self.serving.catalog.update(batch)
            if batch:
                last_catalog = batch[-1][0]

        await scan(self.js, "CATALOG", on_catalog)
        consumers = [
            PushConsumer(self.js, stream, self.durable, self._enqueue, ack_wait=self.ack_wait)
            for stream in ("ACTIVITY", "CRM")
        ]

        async def on_published(_msg: Any) -> None:
            self._spawn(self.reload(registry))

        subs = [
            await self.nc.subscribe(REQUEST_SUBJECT, cb=self._spawn_request),
            await self.nc.subscribe(PUBLISHED_SUBJECT, cb=on_published),
            await self.nc.subscribe(FORGET_SUBJECT, cb=self._on_forget),
        ]
        async with tail(self.js, "CATALOG", last_catalog + 1, self.serving.catalog.update):
            for c in consumers:
                await c.start()
            self.ready.set()
            log.info(
                "recommender %s: %d slots, models %s",
                self.durable,
                len(self.serving.config.slots),
                self.serving.versions(),
            )
            try:
                await self._work(consumers, stop, registry)
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
            delay = 0.2
            while True:
                try:
                    await self.process(deliveries)
                    break
                except Exception:
                    # Retry the same batch: acknowledgements are cumulative, so moving on to
                    # the next batch would acknowledge this one. Effects are idempotent.
                    log.exception("a batch of %d failed; retrying in %.1fs", n, delay)
                    if stop.is_set():
                        return  # unacknowledged: delivered again after a restart
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            last: dict[str, Delivery] = {}
            for d in deliveries:
                last[d.stream] = d
            for stream, d in last.items():
                await by_stream[stream].ack(d)

    # -- the batch ------------------------------------------------------------------------------
    async def process(self, deliveries: list[Delivery]) -> None:
        """Fold a batch into the working profiles, recompute the users it touches, publish the
        lists that changed and wait until they are stored."""
        self.stats.batches += 1
        self.stats.events += len(deliveries)
        grouped: dict[str, list[tuple[str, int, dict[str, Any], Delivery]]] = {}
        refused: list[tuple[Delivery, str]] = []
        for d in deliveries:
            try:
                token = token_of(d.subject)
            except CannotApply as exc:
                refused.append((d, str(exc)))
                continue
            if not is_user_token(token) or not self.owns(token):
                continue
            try:
                event = orjson.loads(d.data)
            except orjson.JSONDecodeError as exc:
                refused.append((d, f"not valid JSON: {exc}"))
                continue
            grouped.setdefault(token, []).append((SHORT[d.stream], d.seq, event, d))
        states = await self._states(list(grouped))
        now_ms = time.time_ns() // 1_000_000
        changed: list[UserState] = []
        for token, events in grouped.items():
            state = states[token]
            relevant = False
            for short, seq, event, d in events:
                try:
                    if apply(state.profile, event, short, seq):
                        settle_floor(state.profile, short, seq)
                    # Recompute even if the profile already held the event (loaded from the
                    # bucket after the profiles service applied it): the stored lists may not.
                    relevant = relevant or event.get("type") not in QUIET_TYPES
                except CannotApply as exc:
                    refused.append((d, str(exc)))
            if relevant:
                changed.append(state)
        self.stats.users += len(changed)
        if changed:
            await self._recompute(changed, now_ms)
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
                    s.last[slot] = await self._read_last(s.token, slot)
            raise RuntimeError(f"reco subjects kept changing under us: {todo[:3]}")
        finally:
            for s in ordered:
                s.lock.release()

    async def _publish_changes(
        self, todo: list[tuple[UserState, str]], now_ms: int, context: str | None = None
    ) -> list[tuple[UserState, str]]:
        """Compute each (user, slot), publish what changed; return those that lost a race."""
        pending: list[tuple[UserState, str, dict[str, Any], asyncio.Future[Ack]]] = []
        for s, slot in todo:
            outcome = self.serving.recommend(slot, s.profile, now_ms, context_item=context)
            self.stats.computed += 1
            if outcome.signature() == s.last[slot].signature:
                self.stats.unchanged += 1
                continue
            event = build_event(s.token, outcome, s.profile, now_ms)
            headers = {"Nats-Msg-Id": event["id"], EXPECTED_LAST_SUBJECT_SEQ: str(s.last[slot].seq)}
            fut = await self.publisher.pipeline.publish(
                reco_subject(s.token, slot), orjson.dumps(event), headers
            )
            pending.append((s, slot, event, fut))
        if not pending:
            return []
        await asyncio.wait([p[3] for p in pending], timeout=self.publisher.ack_timeout)
        lost = []
        for s, slot, event, fut in pending:
            if not fut.done():
                fut.cancel()
                raise TimeoutError(f"no ack for {reco_subject(s.token, slot)}")
            exc = fut.exception()
            if isinstance(exc, Refused) and exc.err_code == WRONG_LAST_SEQUENCE:
                self.stats.conflicts += 1
                lost.append((s, slot))
            elif exc is not None:
                raise exc
            else:
                s.last[slot] = Last(fut.result().seq, _signature(event), event)
                self.stats.published += 1
        return lost

    # -- state --------------------------------------------------------------------------------
    async def _states(self, tokens: list[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        missing = []
        for t in tokens:
            st = self.cache.get(t)
            if st is None:
                missing.append(t)
            else:
                self.cache.move_to_end(t)
                out[t] = st
        if missing:
            slots = await self.store.load(missing, create_keys=False)
            lasts = await asyncio.gather(
                *(self._read_last(t, slot) for t in missing for slot in self.serving.config.slots)
            )
            names = list(self.serving.config.slots)
            for i, t in enumerate(missing):
                slot = slots.get(t)
                profile = slot.profile if slot is not None and slot.profile else blank(t)
                last = dict(zip(names, lasts[i * len(names) : (i + 1) * len(names)], strict=True))
                st = self.cache.get(t)  # loaded meanwhile by a request
                if st is None:
                    st = UserState(t, profile, last)
                    self.cache[t] = st
                out[t] = st
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return out

    async def _read_last(self, token: str, slot: str) -> Last:
        found = await last_for_subject(self.js, "RECOMMENDATIONS", reco_subject(token, slot))
        if found is None:
            return Last()
        seq, data = found
        try:
            event = orjson.loads(data)
            return Last(seq, _signature(event), event)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Last(seq)

    async def _on_forget(self, msg: Any) -> None:
        token = msg.data.decode()
        self.cache.pop(token, None)
        self.store.keyring.forget(token)

    # -- requests -----------------------------------------------------------------------------
    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn_request(self, msg: Any) -> None:
        """Each request in its own task: nats-py runs a subscription's callbacks one by one."""
        self._spawn(self._request(msg))

    async def _request(self, msg: Any) -> None:
        try:
            req = RecoRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in e["loc"])
            if self.replica == 0:  # one answer is enough
                await msg.respond(error_reply(where, e["msg"]))
            return
        if (req.user_id is None) == (req.anonymous_id is None):
            if self.replica == 0:
                await msg.respond(
                    error_reply("user_id", "give exactly one of user_id, anonymous_id")
                )
            return
        token = user_token(req.user_id, req.anonymous_id)
        if not self.owns(token):
            return
        self.stats.requests += 1
        try:
            await msg.respond(await self.answer(token, req.slot, req.k, req.context.item_id))
        except Exception as exc:  # the requester must hear something
            log.exception("request for %s/%s failed", token, req.slot)
            await msg.respond(error_reply("", f"{type(exc).__name__}: {exc}", 500))

    async def answer(self, token: str, slot: str, k: int | None, context: str | None) -> bytes:
        """The reply to a request: the user's current list for `slot` (published if new)."""
        cfg = self.serving.config.slots.get(slot)
        if cfg is None:
            known = ", ".join(sorted(self.serving.config.slots))
            return error_reply("slot", f"unknown slot {slot!r} (known: {known})", 404)
        if k is not None and k > cfg.k:
            return error_reply("k", f"at most {cfg.k} for slot {slot!r}")
        state = (await self._states([token]))[token]
        async with state.lock:
            now_ms = time.time_ns() // 1_000_000
            for _attempt in range(3):
                if not await self._publish_changes([(state, slot)], now_ms, context):
                    break
                state.last[slot] = await self._read_last(token, slot)
        event = state.last[slot].event
        assert event is not None
        props = event["properties"]
        if k is not None:
            props = {**props, "items": props["items"][:k]}
        return orjson.dumps({**event, "properties": props})

    # -- models -------------------------------------------------------------------------------

    async def reload(self, registry: Registry) -> None:
        """Load the active model of every registry slot the config uses, where it changed."""
        async with self._reload_lock:
            for slot in sorted(self.serving.config.registry_slots()):
                try:
                    raw = await registry.kv.get(f"active.{slot}")
                    if raw is None:
                        continue
                    version = raw.decode()
                    current = self.serving.models.get(slot)
                    if current is not None and current.version == version:
                        continue
                    artifact = await registry.artifact(version)
                    loaded = await asyncio.to_thread(self._load, slot, version, artifact)
                    self.serving.with_model(loaded)
                    self.stats.reloads += 1
                    log.info("slot %s now served by %s (%s)", slot, version, loaded.name)
                except Exception as exc:  # keep serving the previous model
                    log.error("could not load the model of slot %s: %s", slot, exc)

    def _load(self, slot: str, version: str, artifact: bytes) -> Loaded:
        model = load_packed(artifact, self.work_dir)
        return Loaded(slot, version, model.name, model)

    async def _deadletter(self, refused: list[tuple[Delivery, str]]) -> None:
        records = refusals("recommender", refused)
        await self.publisher.deadletter(records)
        self.stats.deadlettered += len(records)

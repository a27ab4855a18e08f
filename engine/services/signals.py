"""The interest-signals service (`nerve run signals`, part of `nerve up`).

It rebuilds the detector's state (`engine.signals.detector`) on every start by reading ACTIVITY
and CRM from the start of the longest window (`Bus.tail`: ephemeral consumers that acknowledge
nothing, since the state is derived), then follows them live. A firing becomes an
`interest_signal` on `signals.<topic>.<user>` only if:

* the user is known (a user id: a CRM cannot call an anonymous visitor) and has given marketing
  consent (the latest consent seen in the log, else the stored profile);
* the last signal on that subject was decided more than `cooldown_days` earlier. The SIGNALS
  stream itself is the record: the check reads the subject's last message, and the publish is
  conditional on it (`Bus.publish_if_last`), so a restart that replays the window, or a second
  replica, cannot publish inside the cooldown (the loser re-reads and finds the winner);
* the propensity condition, if any, holds.

The message id is derived from the topic, the user and the deciding event, so a retried publish
is stored once.

Replicas: any number, each a hot standby of the others. Its state is a window of the log that
it rebuilds on start, so every replica reads every event, keeps every user's window and tries
to publish every firing; the compare-and-set and cooldown above store each signal once (the
loser re-reads and finds the winner, and the derived message id dedupes a race inside the
window). It does not split users by partition lease: a firing decided while its partition had
no holder (a dead replica's lease not yet expired, a released one not yet claimed) would have
been published by nobody, and signals are rare enough that every replica trying costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from engine.bus import Bus, Conflict, Refusal, decode
from engine.bus.consumer import Batch
from engine.bus.registry import Registry
from engine.evidence import iso
from engine.partitions import PartitionOwner
from engine.profiles.profile import CannotApply, time_ms
from engine.profiles.store import ProfileStore
from engine.profiles.tombstones import Tombstones
from engine.recommender.core import Loaded
from engine.recommender.loading import load_active
from engine.recommender.slots import SignalDef, load_slots
from engine.settings import Settings
from engine.signals.detector import DAY_MS, Detector, Firing, describe, offer_of
from engine.windowed import deadletter_live, follow
from models.nbo import features
from models.scorer import Propensities
from nerve_client.events import parse_event
from nerve_client.ids import derived_uuid7
from nerve_client.subjects import SHORT, SIGNALS, decode_token, signal_subject

log = logging.getLogger("nerve.signals")


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
    refused: int = 0
    deadlettered: int = 0


class SignalsService:
    name = "signals"

    def __init__(
        self,
        bus: Bus,
        definitions: dict[str, SignalDef],
        store: ProfileStore,
        *,
        replicas: int = 1,
        replica: int = 0,
        holder: str | None = None,
    ) -> None:
        self.bus = bus
        self.definitions = definitions
        self.detector = Detector(definitions)
        self.store = store
        self.replicas, self.replica = replicas, replica  # replicas: expected (first round)
        self.holder = holder
        self.owner: PartitionOwner | None = None
        """The partitions this replica publishes for (set in `run`; None: every user)."""
        self.stats = SignalStats()
        self.queue: asyncio.Queue[tuple[str, Batch]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self._models: dict[str, Loaded] = {}
        self._registry: Registry | None = None  # opened on the first propensity check
        self.live_from: dict[str, int] = {}
        self.forgotten: Tombstones | frozenset[str] = frozenset()
        """Per stream, the first sequence stored after this service started."""

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> SignalsService:
        opts = settings.recommender
        slots, _ = load_slots(opts.config, settings.broker.data_dir)
        store = await ProfileStore.open(bus)
        return cls(bus, slots.signals, store, replicas=opts.replicas)

    def describe(self) -> str:
        return f"topics {', '.join(sorted(self.definitions)) or 'none'}"

    async def run(self, stop: asyncio.Event) -> None:
        if not self.definitions:
            log.info("signals: no topic defined; idle")
            self.ready.set()
            await stop.wait()
            return
        self.forgotten = forgotten = await Tombstones.open(self.bus)
        longest = max(d.window_days for d in self.definitions.values())
        since = datetime.now(UTC) - timedelta(days=longest)
        await self._follow(since, forgotten, stop)

    def owns(self, token: str) -> bool:
        """Whether this replica publishes for the user: every replica does (see the module
        docstring), unless a test gives it an `owner`."""
        return self.owner is None or self.owner.owns_token(token)

    async def _follow(self, since: datetime, forgotten: Tombstones, stop: asyncio.Event) -> None:
        await follow(
            self.bus,
            self.name,
            list(SHORT),
            since,
            forget=forgotten.note,
            progress=self._progress,
            process=self.process,
            queue=self.queue,
            live_from=self.live_from,
            ready=self.ready,
            stop=stop,
        )

    async def _progress(self) -> tuple[int, int]:
        """(events read, batches waiting) for the heartbeat."""
        return self.stats.events, self.queue.qsize()

    async def process(self, stream: str, batch: Batch) -> None:
        refused: list[tuple[Refusal, str]] = []
        for seq, subject, data in batch:
            self.stats.events += 1
            record = decode(stream, seq, subject, data)
            if isinstance(record, Refusal):
                refused.append((record, record.reason))
                continue
            if record.system:
                continue
            if record.token in self.forgotten:
                continue
            try:
                firings = self.detector.observe(record.token, record.event, stream, seq)
            except (CannotApply, AttributeError, TypeError) as exc:
                refused.append((Refusal(stream, seq, subject, data, str(exc)), str(exc)))
                continue
            for f in firings:
                self.stats.firings += 1
                if not self.owns(f.token):
                    continue  # another replica's partition: it publishes (its window is ours too)
                try:
                    await self.emit(f)
                except Exception:
                    log.exception("could not publish the %s signal of %s", f.topic, f.token)
        await self._deadletter(stream, refused)

    async def _deadletter(self, stream: str, refused: list[tuple[Refusal, str]]) -> None:
        await deadletter_live(self.bus, "signals", stream, refused, self.live_from, self.stats)

    async def emit(self, f: Firing) -> bool:
        """Publish a firing as an interest_signal unless a rule holds it back; True if stored."""
        user_id, _ = decode_token(f.token)
        if user_id is None:
            self.stats.anonymous += 1
            return False
        d = self.definitions[f.topic]
        subject = signal_subject(f.topic, f.token)
        for _attempt in range(3):
            last = await self.bus.last(SIGNALS, subject)
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
            offer = offer_of(f)
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
                "decided_at": iso(f.decided_at),
                "window_days": d.window_days,
                "consent": consent,
            }
            if offer:
                props["offer"] = offer
            event = {
                "id": sid,
                "type": "interest_signal",
                "schema_version": 1,
                "time": iso(int(time.time() * 1000)),
                "user_id": user_id,
                "source": "signals",
                "properties": props,
            }
            payload = parse_event(event).to_json()  # checked against its model before it leaves
            try:
                await self.bus.publish_if_last(subject, payload, sid, last_seq)
            except Conflict:
                self.stats.conflicts += 1
                continue  # someone else published: check the cooldown again
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
        assert d.propensity is not None
        slot = d.propensity.slot
        cached = self._models.get(slot)
        if self._registry is None:
            self._registry = await self.bus.registry()
        fresh = await load_active(self._registry, slot, cached.version if cached else None)
        if fresh is not None:
            cached = self._models[slot] = fresh
        if cached is None:
            return 0.0, None
        model = cached.model
        if not isinstance(model, Propensities):  # a capability, not a class
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

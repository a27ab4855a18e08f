"""The anomaly detection service (`nerve run anomalies`, part of `nerve up`).

It rebuilds the detectors' state (`engine.anomalies.Detectors`) on every start by reading
ACTIVITY and CRM (and DEADLETTER when a `site_rate_shift` detector counts dead letters) from the
start of the longest history any detector needs (`Bus.tail`: ephemeral consumers that
acknowledge nothing, since the state is derived), then follows them live. A finding becomes an
`anomaly_detected` on `anomalies.<detector>.<user>` (`anomalies.<detector>.~site` for site-wide
ones) as soon as the deciding event is read, unless the subject's last anomaly was decided at or
after it, or less than `cooldown_minutes` before it. The ANOMALIES stream itself is the record:
the check reads the subject's last message and the publish is conditional on it
(`Bus.publish_if_last`), so a restart that replays the window, or a second replica, cannot
publish a finding twice (the loser re-reads and finds the winner). The message id is derived
from the detector, the subject and the deciding event, so a retried publish is stored once.

Replicas split the users like the recommender's (`engine.replicas`): each runs the per-user
detectors for the users it owns; every replica runs the site-wide ones (they need every event),
and the conditional publish keeps one of their identical findings. No consent is needed: the
anomalies are about the safety of the service and its customers, not marketing, and an
anonymous visitor's (a bot's) bursts are reported too.
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

from engine.anomalies import AnomalyDef, Detectors, Finding
from engine.anomalies.user import MINUTE_MS
from engine.bus import Bus, Conflict, Refusal, decode
from engine.bus.consumer import Batch
from engine.evidence import iso
from engine.profiles.profile import CannotApply, time_ms
from engine.profiles.tombstones import Tombstones
from engine.recommender.slots import load_slots
from engine.replicas import owner
from engine.settings import Settings
from engine.windowed import deadletter_live, follow
from nerve_client.events import parse_event
from nerve_client.events.producers import check_producer
from nerve_client.ids import derived_uuid7
from nerve_client.subjects import ANOMALIES, DEADLETTER, anomaly_subject, decode_token

log = logging.getLogger("nerve.anomalies")
SOURCE = "anomalies"


@dataclass
class AnomalyStats:
    events: int = 0
    deadletters_read: int = 0
    findings: int = 0
    published: int = 0
    cooled: int = 0
    conflicts: int = 0
    refused: int = 0
    deadlettered: int = 0


class AnomalyService:
    name = "anomalies"

    def __init__(
        self,
        bus: Bus,
        definitions: dict[str, AnomalyDef],
        *,
        replicas: int = 1,
        replica: int = 0,
    ) -> None:
        self.bus = bus
        self.definitions = definitions
        self.detectors = Detectors(definitions)
        self.replicas, self.replica = replicas, replica
        self.stats = AnomalyStats()
        self.queue: asyncio.Queue[tuple[str, Batch]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.live_from: dict[str, int] = {}
        """Per stream, the first sequence stored after this service started."""
        self.forgotten: Tombstones | frozenset[str] = frozenset()

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> AnomalyService:
        opts = settings.recommender
        slots, _ = load_slots(opts.config, settings.broker.data_dir)
        return cls(bus, slots.anomalies, replicas=opts.replicas, replica=opts.replica)

    def describe(self) -> str:
        return f"detectors {', '.join(sorted(self.definitions)) or 'none'}"

    async def run(self, stop: asyncio.Event) -> None:
        if not self.definitions:
            log.info("anomalies: no detector defined; idle")
            self.ready.set()
            await stop.wait()
            return
        self.forgotten = forgotten = await Tombstones.open(self.bus)
        longest = max(d.horizon_minutes for d in self.definitions.values())
        since = datetime.now(UTC) - timedelta(minutes=longest)
        streams = sorted(self.detectors.streams)

        def forget(token: str) -> None:
            forgotten.note(token)
            self.detectors.forget(token)

        await follow(
            self.bus,
            self.name,
            streams,
            since,
            forget=forget,
            progress=self._progress,
            process=self.process,
            queue=self.queue,
            live_from=self.live_from,
            ready=self.ready,
            stop=stop,
        )

    async def _progress(self) -> tuple[int, int]:
        """(messages read, batches waiting) for the heartbeat."""
        return self.stats.events + self.stats.deadletters_read, self.queue.qsize()

    async def process(self, stream: str, batch: Batch) -> None:
        """Feed one batch to the detectors and publish what they find."""
        if stream == DEADLETTER:
            await self._emit_all(self._deadletters(batch))
            return
        refused: list[tuple[Refusal, str]] = []
        found: list[Finding] = []
        for seq, subject, data in batch:
            self.stats.events += 1
            record = decode(stream, seq, subject, data)
            if isinstance(record, Refusal):
                refused.append((record, record.reason))
                continue
            if record.system or record.token in self.forgotten:
                continue
            mine = owner(record.token, self.replicas) == self.replica
            try:
                found += self.detectors.observe(record.token, record.event, stream, seq, mine=mine)
            except (CannotApply, AttributeError, TypeError, ValueError) as exc:
                refused.append((Refusal(stream, seq, subject, data, str(exc)), str(exc)))
            if len(found) >= 50:  # publish promptly even inside a big batch
                await self._emit_all(found)
                found = []
        await self._emit_all(found)
        await self._deadletter(stream, refused)

    def _deadletters(self, batch: Batch) -> list[Finding]:
        found: list[Finding] = []
        for seq, _subject, data in batch:
            self.stats.deadletters_read += 1
            try:
                record = orjson.loads(data)
                found += self.detectors.observe_deadletter(record, seq)
            except (orjson.JSONDecodeError, CannotApply, AttributeError, TypeError) as exc:
                # not dead-lettered again: a dead letter about a dead letter could loop
                log.warning("skipping unreadable dead letter #%d: %s", seq, exc)
        return found

    async def _emit_all(self, found: list[Finding]) -> None:
        for f in found:
            self.stats.findings += 1
            try:
                await self.emit(f)
            except Exception:
                log.exception("could not publish the %s anomaly of %s", f.detector, f.token)

    async def _deadletter(self, stream: str, refused: list[tuple[Refusal, str]]) -> None:
        await deadletter_live(self.bus, SOURCE, stream, refused, self.live_from, self.stats)

    async def emit(self, f: Finding) -> bool:
        """Publish a finding as an anomaly_detected unless the subject's last one holds it
        back (decided at or after it, or within the cooldown); True if stored."""
        cooldown = self.definitions[f.detector].cooldown_minutes * MINUTE_MS
        subject = anomaly_subject(f.detector, f.token)
        payload, aid = anomaly_event(f)
        for _attempt in range(3):
            last = await self.bus.last(ANOMALIES, subject)
            last_seq = 0
            if last is not None:
                last_seq = last[0]
                with contextlib.suppress(Exception):
                    decided = time_ms(orjson.loads(last[1])["properties"]["decided_at"])
                    if f.decided_at <= decided or f.decided_at - decided < cooldown:
                        self.stats.cooled += 1
                        return False
            try:
                await self.bus.publish_if_last(subject, payload, aid, last_seq)
            except Conflict:
                self.stats.conflicts += 1
                continue  # another replica published: check again
            self.stats.published += 1
            return True
        return False


def anomaly_event(f: Finding) -> tuple[bytes, str]:
    """The `anomaly_detected` event of a finding, checked against its model, and its id
    (derived from the detector, the subject and the deciding event)."""
    aid = derived_uuid7(f.decided_at, "anomaly", f.detector, f.token, f.deciding.event_id)
    props: dict[str, Any] = {
        "detector": f.detector,
        "kind": f.kind,
        "subject": "site" if f.site else "user",
        "score": f.score,
        "value": f.value,
        "threshold": f.threshold,
        "baseline": [b.to_dict() for b in f.baselines],
        "evidence": [e.to_dict() for e in f.evidence],
        "decided_at": iso(f.decided_at),
        "description": f.description[:500],
    }
    if f.event_type:
        props["event_type"] = f.event_type[:64]
    event: dict[str, Any] = {
        "id": aid,
        "type": "anomaly_detected",
        "schema_version": 1,
        "time": iso(int(time.time() * 1000)),
        "source": SOURCE,
        "properties": props,
    }
    if not f.site:
        user_id, anonymous_id = decode_token(f.token)
        event["user_id" if user_id is not None else "anonymous_id"] = user_id or anonymous_id
    parsed = check_producer(SOURCE, parse_event(event))
    return parsed.to_json(), aid

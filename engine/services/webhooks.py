"""The webhooks service (`nerve run webhooks`): each subscription's feed POSTed to its URL.

Every subscription (`engine.webhooks.subscriptions`) gets its own durable consumer on the
feed's stream (SIGNALS), filtered by its topic, so a receiver that is slow, down or failing
holds up nobody else, and its place in the stream lives in the broker. A delivery is
acknowledged only after a 2xx answer or after it was dead-lettered, so a restart (or a crash
mid-POST) delivers again what was not settled: at least once, with the same `Nerve-Signal-Id`
for the receiver to deduplicate on. A failed attempt is negatively acknowledged with the
backoff as its delay: the broker redelivers it then, while the messages behind it keep going
(webhooks are not ordered), and the attempt number is the broker's delivery count, so the
schedule survives restarts too. After the last attempt the signal goes to DEADLETTER
(`dlq.webhooks`) with the reason and the raw event, then is acknowledged.

The service re-reads the subscriptions every `refresh_s` seconds: a new one starts, a removed
one stops. It needs only its own broker credential (`webhooks`: read SIGNALS and the
`webhooks` bucket, publish dead letters, heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from engine.bus import Bus
from engine.bus.consumer import Delivery, DurableConsumer
from engine.health import beating
from engine.settings import Settings
from engine.webhooks.delivery import DeliveryOptions, backoff, client, post
from engine.webhooks.feeds import FEEDS
from engine.webhooks.subscriptions import Subscription, WebhookStore, shown_url
from nerve_client.errors import FieldError, PublishError
from nerve_client.events import DeadLetter

log = logging.getLogger("nerve.webhooks")
SOURCE = "webhooks"


@dataclass
class WebhookStats:
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    deadlettered: int = 0
    skipped: int = 0
    """Stored before the subscription was added: acknowledged without a POST."""


class WebhookService:
    name = "webhooks"

    def __init__(
        self,
        bus: Bus,
        options: DeliveryOptions | None = None,
        *,
        ack_wait: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.bus = bus
        self.options = options or DeliveryOptions()
        # A POST in flight must finish before the broker thinks it was lost.
        self.ack_wait = max(ack_wait, 3 * self.options.timeout_s)
        self.rng = rng or random.Random()
        self.stats = WebhookStats()
        self.ready = asyncio.Event()
        self.workers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._store: WebhookStore | None = None
        self._http: httpx.AsyncClient | None = None
        self._unread = False  # the last refresh could not read them (warned once)

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> WebhookService:
        return cls(bus, ack_wait=settings.services.ack_wait_s)

    def describe(self) -> str:
        o = self.options
        return f"{o.attempts} attempts per delivery, backoff from {o.backoff_s:g} s"

    async def run(self, stop: asyncio.Event) -> None:
        async with client(self.options) as http, beating(self.bus, self.name, self._progress):
            self._http = http
            try:
                while not stop.is_set():
                    await self.refresh()
                    self.ready.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.options.refresh_s)
            finally:
                await self._stop_all()

    async def _progress(self) -> tuple[int, int]:
        # Nothing is reported as waiting: a receiver in a long backoff is not this service
        # being stuck, and must not turn /healthz red (its failures end in DEADLETTER).
        s = self.stats
        return s.attempts + s.skipped + s.deadlettered, 0

    async def refresh(self) -> None:
        """Start a worker per new subscription and stop those of removed ones."""
        try:
            if self._store is None:
                self._store = await WebhookStore.open(self.bus)
            subs, _ = await self._store.load()
        except Exception as exc:  # no bucket yet (not provisioned), broker away: next time
            (log.debug if self._unread else log.warning)("cannot read subscriptions: %s", exc)
            self._store, self._unread = None, True
            return
        self._unread = False
        wanted = {s.id: s for s in subs}
        for sub_id in [i for i in self.workers if i not in wanted]:
            await self._stop(sub_id)
        for sub_id, sub in wanted.items():
            if sub_id not in self.workers:
                done = asyncio.Event()
                task = asyncio.create_task(self._deliver(sub, done), name=sub.durable)
                self.workers[sub_id] = (task, done)

    async def _stop(self, sub_id: str) -> None:
        task, done = self.workers.pop(sub_id)
        done.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, self.options.timeout_s + 2)

    async def _stop_all(self) -> None:
        for sub_id in list(self.workers):
            await self._stop(sub_id)

    def consumer(self, sub: Subscription) -> DurableConsumer:
        feed = FEEDS[sub.feed]
        return self.bus.durable(
            feed.stream, sub.durable, filter_subject=feed.filter(sub.topic), ack_wait=self.ack_wait
        )

    async def _deliver(self, sub: Subscription, done: asyncio.Event) -> None:
        """Fetch and deliver `sub`'s messages until `done` (errors: wait, then again)."""
        consumer = self.consumer(sub)
        started = False
        try:
            while not done.is_set():
                try:
                    if not started:
                        await consumer.start()
                        started = True
                    batch = await consumer.fetch(self.options.concurrency, timeout=1.0)
                    await asyncio.gather(*(self.handle(consumer, sub, d) for d in batch))
                except Exception as exc:  # broker away, consumer lost: settle nothing, retry
                    log.warning("webhook %s: %s; retrying", sub.id, exc)
                    started = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 1.0)
        finally:
            await consumer.stop()

    async def handle(self, consumer: DurableConsumer, sub: Subscription, d: Delivery) -> None:
        """Deliver one message to `sub`: ack on 2xx, nak with backoff on a failure, dead-letter
        and ack after the last attempt."""
        if d.seq < sub.start_seq:
            self.stats.skipped += 1
            await consumer.ack([d])
            return
        signal_id = event_id(d.data)
        if signal_id is None:  # nothing a receiver could deduplicate on: never sent
            await self._give_up(consumer, sub, d, None, "not a JSON event with a string id")
            return
        assert self._http is not None
        attempt = d.delivered
        self.stats.attempts += 1
        result = await post(self._http, sub, d.data, signal_id, attempt)
        if result.ok:
            self.stats.delivered += 1
            await consumer.ack([d])
        elif attempt >= self.options.attempts:
            reason = (
                f"webhook {sub.id} ({shown_url(sub.url)}): gave up after {attempt} attempts; "
                f"last: {result.reason}"
            )
            await self._give_up(consumer, sub, d, signal_id, reason)
        else:
            self.stats.retried += 1
            log.info("webhook %s: attempt %d failed (%s)", sub.id, attempt, result.reason)
            await consumer.nak(d, backoff(attempt, self.options, self.rng))

    async def _give_up(
        self,
        consumer: DurableConsumer,
        sub: Subscription,
        d: Delivery,
        signal_id: str | None,
        reason: str,
    ) -> None:
        """Dead-letter `d` for `sub`, then acknowledge it (not before: a crash in between
        dead-letters it again, stored once, since the record's id hashes the same inputs)."""
        origin = f"{d.stream}#{d.seq} -> {sub.id}"
        record = DeadLetter.build(
            SOURCE, d.data, [FieldError("", reason)], datetime.now(UTC), origin, signal_id
        )
        try:
            await self.bus.deadletter([record])
        except PublishError as exc:
            log.warning("webhook %s: cannot dead-letter %s (%s); later", sub.id, origin, exc)
            await consumer.nak(d, self.options.backoff_s)
            return
        self.stats.deadlettered += 1
        await consumer.ack([d])


def event_id(data: bytes) -> str | None:
    """The `id` of a stored event, or None when it is not a JSON object with a string id."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) and found else None

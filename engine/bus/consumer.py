"""Consuming streams with acknowledgement: durable pull and push consumers for services.

`DurableConsumer` is what a service runs on: batches are fetched, the service stores their
effect, then acknowledges them (`ack`), asks for a later redelivery (`nak`), or gives up on one
(`term`, after dead-lettering it). Several replicas may share one durable consumer.

Reading without acknowledgement (`scan`, `tail`) is in `engine.bus.scanning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.bus.decode import Refusal
from engine.bus.jsmeta import Batch, ack_info, consumer_seq, stream_subject
from engine.bus.scanning import scan, tail
from engine.settings import ACK_WAIT_S
from nerve_client.errors import FieldError
from nerve_client.events import DeadLetter

log = logging.getLogger("nerve.bus")
GIVE_UP_AFTER = 100
"""Deliveries after which the server stops redelivering a message. Not `MAX_DELIVER` (5):
kills and ack timeouts under load redeliver good messages several times, and a consumer that
gave up on them after 5 lost them (a fault run counted 303 events missing from profiles). A
service dead-letters a message that *fails* on its `MAX_DELIVER`-th delivery itself; what the
server gives up on after this many (a message that takes its service down every time) is
dead-lettered from the GAVEUP stream (`engine.bus.gaveup`)."""

__all__ = [
    "Batch",
    "Delivery",
    "DurableConsumer",
    "Gaps",
    "PushConsumer",
    "refusals",
    "scan",
    "tail",
]


@dataclass(slots=True)
class Delivery:
    """One delivered message: where it was stored, its bytes, and how often it came."""

    stream: str
    seq: int
    subject: str
    data: bytes
    delivered: int
    msg: Msg = field(repr=False)
    mark: int = 0
    """Arrival order among the deliveries of a `PartitionedPush` (its cumulative ack)."""


class DurableConsumer:
    """A durable pull consumer on `stream`, created (or updated) on `start`."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        max_deliver: int = GIVE_UP_AFTER,
        ack_wait: float = ACK_WAIT_S,
        max_ack_pending: int = 20_000,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.max_deliver = max_deliver
        self.config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
            max_waiting=512,
        )
        self._sub: Any = None

    async def start(self) -> None:
        await self.js.add_consumer(self.stream, self.config)
        self._sub = await self.js.pull_subscribe_bind(self.durable, self.stream)

    async def fetch(self, batch: int, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages; an empty list when none came within `timeout`."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:
            return []
        out = []
        for m in msgs:
            delivered, seq, _ = ack_info(m.reply)
            out.append(Delivery(self.stream, seq, m.subject, m.data, delivered, m))
        return out

    async def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            await d.msg.ack()

    async def nak(self, delivery: Delivery, delay: float) -> None:
        await delivery.msg.nak(delay=delay)

    async def term(self, delivery: Delivery) -> None:
        await delivery.msg.term()

    async def backlog(self) -> int:
        """Messages waiting for this consumer: not yet delivered, or not yet acknowledged."""
        return await _backlog(self.js, self.stream, self.durable)

    async def ack_floor(self) -> int:
        """The stream sequence at and below which every message has been acknowledged."""
        info = await self.js.consumer_info(self.stream, self.durable)
        return info.ack_floor.stream_seq if info.ack_floor else 0

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class Gaps:
    """The consumer sequences of one subscription's deliveries: JetStream numbers every
    delivery of a consumer (redeliveries included) 1, 2, 3, ..., so a number skipped is a
    delivery lost on the way (a slow-consumer drop in the client, a node failing over)."""

    def __init__(self) -> None:
        self.next = 1  # a consumer re-created from its ack floor numbers from 1

    def follows(self, reply: str) -> bool:
        """Whether the delivery with this reply subject comes without a gap before it (a
        lower number, a leader that restarted its count, is no loss: it comes again)."""
        cseq = consumer_seq(reply)
        if cseq > self.next:
            return False
        self.next = cseq + 1
        return True


class PushConsumer:
    """A durable push consumer that hands each message to `on_message` as it arrives: the
    low-latency path (NATS-NOTES: a callback sees a message ~0.3 ms after its publish, where
    `fetch` adds a task and a timer per call).

    Acknowledgement is cumulative (`AckPolicy.ALL`): `ack(d)` acknowledges `d` and everything
    delivered before it, which is exact for one worker that finishes messages in delivery
    order, as long as nothing delivered before `d` was lost on the way. So the consumer is
    (re-)created to start right after its acknowledgement floor, on `start` (what a previous
    run received and never acknowledged comes again, first) and whenever a delivery is missing
    (`Gaps`): what came after the gap is dropped unseen, and the consumer starts again from
    its floor, so the lost message is delivered, in order, before anything after it is
    acknowledged. What is not acknowledged within `ack_wait` comes again. A new consumer starts
    at the next message stored (`deliver_new`) or at the first one.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        on_message: Callable[[Delivery], None],
        *,
        deliver_new: bool = True,
        ack_wait: float = ACK_WAIT_S,
        max_ack_pending: int = 20_000,
        max_deliver: int = GIVE_UP_AFTER,
        pending_msgs: int = 200_000,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.on_message = on_message
        self.config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
        )
        self.pending_msgs = pending_msgs
        """Deliveries the client holds for the callback; beyond it they are dropped (the
        server redelivers them: see the class doc)."""
        self.restarts = 0
        """Times a lost delivery made the consumer start again from its floor."""
        self._sub: Any = None
        self._recovery: asyncio.Task[None] | None = None
        self._floors: dict[str, int] = {}

    async def start(self) -> None:
        subject = stream_subject(await self.js.stream_info(self.stream))
        stream, seq = self.stream, Gaps()

        async def on_msg(msg: Msg) -> None:
            if self._sub is not sub[0]:
                return  # a subscription replaced after a gap
            if not seq.follows(msg.reply or ""):
                self._recover()
                return
            delivered, sseq, _ = ack_info(msg.reply or "")
            self.on_message(Delivery(stream, sseq, msg.subject, msg.data, delivered, msg))

        sub: list[Any] = [None]
        config = await self.from_floor(self.durable, subject)
        self._sub = sub[0] = await self.subscribe(self.durable, subject, on_msg, config)

    def _recover(self) -> None:
        if self._recovery is None or self._recovery.done():
            self.restarts += 1
            self._recovery = asyncio.create_task(self._restart_all())

    async def _restart_all(self) -> None:
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        await retried(self.start, f"{self.stream}/{self.durable}")

    async def from_floor(self, name: str, subject: str | None) -> ConsumerConfig:
        """Delete consumer `name`; return the config that re-creates it starting right after
        its acknowledgement floor (or as `self.config` says, the first time)."""
        floor = self._floors.get(name)  # deleted here before, and not re-created (an error)
        with contextlib.suppress(NotFoundError):
            info = await self.js.consumer_info(self.stream, name)
            floor = self._floors[name] = info.ack_floor.stream_seq if info.ack_floor else 0
            await self.js.delete_consumer(self.stream, name)
        start: dict[str, Any] = {"deliver_policy": self.config.deliver_policy}
        if floor is not None:
            start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": floor + 1}
        return ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.config.ack_wait,
            max_ack_pending=self.config.max_ack_pending,
            max_deliver=self.config.max_deliver,
            filter_subject=subject,
            **start,
        )

    async def subscribe(
        self,
        name: str,
        subject: str,
        on_msg: Callable[[Msg], Awaitable[None]],
        config: ConsumerConfig,
    ) -> Any:
        """Bind `on_msg` to consumer `name`, created anew from `config` (a fresh deliver
        subject)."""
        return await self.js.subscribe(
            subject,
            durable=name,
            stream=self.stream,
            cb=on_msg,
            manual_ack=True,
            config=config,
            # No flow control: with it, deliveries here stalled for seconds at a time until
            # the next idle heartbeat answered a stalled flow-control request. The server
            # still stops at max_ack_pending unacknowledged messages.
            pending_msgs_limit=self.pending_msgs,
            pending_bytes_limit=256 << 20,
        )

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge `delivery` and every message delivered before it."""
        await delivery.msg.ack()

    async def backlog(self) -> int:
        """Messages waiting for this consumer: not yet delivered, or not yet acknowledged."""
        return await _backlog(self.js, self.stream, self.durable)

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


async def retried(work: Callable[[], Awaitable[None]], what: str) -> None:
    """`work()` until it succeeds (a broker away for a while), every second; logged."""
    while True:
        try:
            return await work()
        except Exception as exc:
            log.warning("%s: restarting from the ack floor failed, retrying: %r", what, exc)
            await asyncio.sleep(1.0)


async def _backlog(js: JetStreamContext, stream: str, durable: str) -> int:
    info = await js.consumer_info(stream, durable)
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


def refusals(source: str, refused: Sequence[tuple[Delivery | Refusal, str]]) -> list[DeadLetter]:
    """Dead-letter records for messages a service refused, each with its reason and origin
    (`<stream>#<seq>`); their ids hash source, origin and bytes, so refusing the same message
    again (a re-read after a crash) is stored once within the duplicate window."""
    now = datetime.now(UTC)
    return [
        DeadLetter.build(
            source,
            d.data if isinstance(d, Delivery) else d.raw,
            [FieldError("", reason)],
            now,
            f"{d.stream}#{d.seq}",
        )
        for d, reason in refused
    ]

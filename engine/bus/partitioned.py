"""`PartitionedPush`: one stream's events of the partitions this replica holds, and only those.

Each partition `p` of a partitioned user stream has its own durable push consumer,
`<durable>-p<NN>`, filtered on `partition_filter(stream, p)` (`activity.*.*.<p>`); a replica
binds to the consumers of the partitions it holds a lease on (`engine.partitions`), so the
server delivers it exactly its share. An unpartitioned (older) stream is one partition whose
consumer reads everything.

Why one consumer per partition rather than one per replica with a filter subject per owned
partition (`filter_subjects`): a consumer has one acknowledgement floor for all its filters.
When a partition moves, its new owner must start exactly after the last event its previous
owner finished *of that partition*; a per-replica consumer does not know it (its floor mixes
partitions, and the previous owner may be dead), so the new owner would have to replay from a
checkpoint. A per-partition consumer carries its own position from owner to owner.

On every gain the consumer is re-created to start right after its acknowledgement floor: what
the previous owner received but never acknowledged is delivered again, in order, to the new
owner (it must not be acknowledged cumulatively by the new owner's first ack, which is what
binding to the old consumer would do). Re-processing is harmless (profile folds dedupe by
sequence; a list that did not change is not published).

Acknowledgement stays cumulative and exact: `ack(d)` acknowledges, on each held partition's
consumer, the last delivery that arrived before `d` (deliveries carry their arrival `mark`).
Partitions released or lost are not acknowledged at all: their events are the new owner's.
A delivery lost on the way (a number skipped in the consumer sequence: `Gaps`) stops the
partition there: what came after it is dropped unseen and unacknowledged, and the partition's
consumer is re-created from its ack floor, so the lost event comes again, in order, before
anything after it can be acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from engine.bus.consumer import GIVE_UP_AFTER, Delivery, Gaps, PushConsumer
from engine.bus.gaveup import GiveUp, sweep
from engine.bus.jsmeta import ack_info, stream_subject
from engine.settings import ACK_WAIT_S
from nerve_client.subjects import partition_filter

log = logging.getLogger("nerve.bus")


class PartitionedPush(PushConsumer):
    """The durable push consumers of the partitions held, as one consumer of `stream`."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        on_message: Callable[[Delivery], None],
        *,
        partitions: int,
        give_up: GiveUp | None = None,
        valid: Callable[[int], bool] | None = None,
        ack_wait: float = ACK_WAIT_S,
        max_ack_pending: int = 20_000,
        max_deliver: int = GIVE_UP_AFTER,
        pending_msgs: int = 200_000,
    ) -> None:
        super().__init__(
            js,
            stream,
            durable,
            on_message,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
            pending_msgs=pending_msgs,
        )
        self.partitions = partitions
        self.give_up = give_up
        self.valid = valid or (lambda _p: True)
        """Whether the lease of a partition still holds (else nothing of it is acknowledged)."""
        self.received: dict[int, int] = {}
        """Deliveries per partition since start (what a test or a benchmark counts)."""
        self._subs: dict[int, Any] = {}
        self._sweeps: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._unacked: dict[int, deque[Delivery]] = {}
        self._mark = 0
        self._whole = ""
        self._lock = asyncio.Lock()  # lease rounds and gap recoveries add and remove in turn
        self._recovering: set[int] = set()
        self._let_go: set[int] = set()  # removed by the lease rounds: a recovery leaves them
        self._tasks: set[asyncio.Task[None]] = set()

    def name(self, partition: int) -> str:
        """The durable consumer of one partition."""
        return f"{self.durable}-p{partition:02d}"

    @property
    def held(self) -> set[int]:
        return set(self._subs)

    async def start(self) -> None:
        """Make sure every partition has its consumer (bound later, with its lease: `add`).

        A partition nobody holds yet must still keep its place: its consumer is created here,
        at the first start of any replica, so what arrives before a replica claims it is
        delivered then, not skipped (a consumer created at the first claim would start at the
        next message). They all start at the same sequence, the stream's next one when this
        start began: created one after the other, each at *its* next message, an event stored
        meanwhile in a partition whose consumer came later would be skipped. An existing
        consumer is left as it is."""
        info = await self.js.stream_info(self.stream)
        self._whole = stream_subject(info)
        first = int(info.state.last_seq) + 1
        for p in range(max(1, self.partitions)):
            with contextlib.suppress(NotFoundError):
                await self.js.consumer_info(self.stream, self.name(p))
                continue
            placeholder = ConsumerConfig(  # a pull consumer: `add` replaces it, from its floor
                durable_name=self.name(p),
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=first,
                filter_subject=self._filter(p),
            )
            with contextlib.suppress(Exception):  # another replica created it meanwhile
                await self.js.add_consumer(self.stream, placeholder)

    def _filter(self, partition: int) -> str:
        return partition_filter(self.stream, partition) if self.partitions else self._whole

    async def add(self, partition: int) -> None:
        """Receive `partition` from where it was left (called once its lease is won)."""
        async with self._lock:
            self._let_go.discard(partition)
            await self._add(partition)

    async def remove(self, partition: int) -> None:
        """Stop receiving `partition` (released or lost); its unacknowledged events stay on its
        consumer for the next owner."""
        async with self._lock:
            self._let_go.add(partition)
            await self._remove(partition)

    async def _add(self, partition: int) -> None:
        if partition in self._subs:
            return
        config = await self.from_floor(self.name(partition), self._filter(partition))
        unacked: deque[Delivery] = deque()
        stream, gaps, lost = self.stream, Gaps(), [False]

        async def on_msg(msg: Msg) -> None:
            if self._unacked.get(partition) is not unacked or lost[0]:
                return  # removed, or re-created after a gap: nothing more of this one
            if not gaps.follows(msg.reply or ""):
                lost[0] = True  # nothing after the gap is seen or acknowledged here
                self._recover_partition(partition)
                return
            delivered, seq, _ = ack_info(msg.reply or "")
            self._mark += 1
            d = Delivery(stream, seq, msg.subject, msg.data, delivered, msg, self._mark)
            unacked.append(d)
            self.received[partition] = self.received.get(partition, 0) + 1
            self.on_message(d)

        self._unacked[partition] = unacked
        self._subs[partition] = None  # on_msg may run before subscribe returns
        try:
            sub = await self.subscribe(
                self.name(partition), self._filter(partition), on_msg, config
            )
        except BaseException:
            self._subs.pop(partition, None)  # not held: a later `add` tries again
            self._unacked.pop(partition, None)
            raise
        self._subs[partition] = sub
        if self.give_up is not None:
            stop = asyncio.Event()
            task = asyncio.create_task(
                sweep(self.js, self.stream, self.name(partition), self.give_up, stop)
            )
            self._sweeps[partition] = (stop, task)

    def _recover_partition(self, partition: int) -> None:
        """A delivery of `partition` was lost: start its consumer again from its ack floor
        (what arrived before the gap may still be acknowledged meanwhile)."""
        if partition in self._recovering:
            return
        self._recovering.add(partition)
        self.restarts += 1

        async def again() -> None:
            async with self._lock:
                if partition not in self._subs:
                    return  # released meanwhile
                await self._remove(partition)
            while True:  # the lock is let go between attempts: lease rounds go on meanwhile
                async with self._lock:
                    if partition in self._subs or partition in self._let_go:
                        return  # added again by its lease round, or released since
                    try:
                        return await self._add(partition)
                    except Exception as exc:  # a broker away: try again
                        log.warning(
                            "%s: restart from its floor failed: %r", self.name(partition), exc
                        )
                await asyncio.sleep(1.0)

        task = asyncio.create_task(again())
        task.add_done_callback(lambda _t: self._recovering.discard(partition))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, partition: int) -> None:
        sub = self._subs.pop(partition, None)
        self._unacked.pop(partition, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        stop_task = self._sweeps.pop(partition, None)
        if stop_task is not None:
            # cancelled, not awaited through its 1 s fetch: an advisory it did not finish is
            # not acknowledged, and the partition's next owner sweeps it
            stop_task[0].set()
            stop_task[1].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stop_task[1]

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge, partition by partition, everything that arrived up to `delivery`."""
        for partition, unacked in list(self._unacked.items()):
            if not self.valid(partition):
                continue  # lapsed: what it skipped is the next owner's
            last = None
            while unacked and unacked[0].mark <= delivery.mark:
                last = unacked.popleft()
            if last is not None:
                await last.msg.ack()

    async def backlog(self) -> int:
        total = 0
        for p in list(self._subs):
            with contextlib.suppress(NotFoundError):
                info = await self.js.consumer_info(self.stream, self.name(p))
                total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return total

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in list(self._subs):
            await self.remove(p)

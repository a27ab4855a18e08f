"""Two batches in flight: while one batch's lists wait for the broker's acknowledgements, the
next one is decoded, folded and computed.

A batch has two phases. The first (decode, fold into the working profiles, compute, hand the
publishes to the client) runs for one batch at a time and in delivery order: `Turn` is held
from the start of `process` until the batch's publishes are sent (`sent`), so a user's events
are folded in log order. The second (wait for the acknowledgements, retry a lost
compare-and-set, store shadow lists, dead-letter) may overlap the next batch's first phase; a
user's lock is held through both, so the next batch computes that user's lists only once the
previous ones are stored, from the stored sequences. `InFlight` acknowledges the inputs
cumulatively and in order: a batch's deliveries only after it and every batch before it are
done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import orjson

from engine.bus import Bus, Conditional
from engine.bus.consumer import Delivery
from engine.bus.pipeline import publish_conditional
from engine.recommender import experiments as exp
from engine.recommender.core import Serving
from engine.recommender.lists import Last, Stats, UserState
from nerve_client.subjects import reco_subject

DEPTH = 2
"""Batches in flight (the one waiting for the broker, and the next)."""


class Turn:
    """The first phase's lock; `acquire` returns the `sent` of this acquisition, which
    releases it early (once: later calls, e.g. from a `finally`, do nothing)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def acquire(self) -> Callable[[], None]:
        await self._lock.acquire()
        held = [True]

        def sent() -> None:
            """The batch's publishes are with the client: the next batch may start."""
            if held[0]:
                held[0] = False
                self._lock.release()

        return sent


class InFlight:
    """Up to `depth` batches processed at once (`run(deliveries)` -> False when stopped),
    acknowledged in order by `ack(deliveries)`."""

    def __init__(
        self,
        run: Callable[[list[Delivery]], Coroutine[Any, Any, bool]],
        ack: Callable[[list[Delivery]], Awaitable[None]],
        depth: int = DEPTH,
    ) -> None:
        self._run = run
        self._ack = ack
        self.depth = depth
        self._pending: deque[tuple[asyncio.Task[bool], list[Delivery]]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    async def submit(self, deliveries: list[Delivery]) -> bool:
        """Start a batch; first finish the oldest if `depth` are in flight. False once a
        batch was stopped before it was done (nothing after it is acknowledged)."""
        self._pending.append((asyncio.create_task(self._run(deliveries)), deliveries))
        while len(self._pending) >= self.depth:
            if not await self._finish_oldest():
                return False
        return True

    async def flush(self) -> bool:
        """Finish every batch in flight, in order (False as `submit`)."""
        while self._pending:
            if not await self._finish_oldest():
                return False
        return True

    async def _finish_oldest(self) -> bool:
        task, deliveries = self._pending[0]
        try:
            done = await asyncio.shield(task)
        except BaseException:
            self.cancel()
            raise
        self._pending.popleft()
        if not done:
            self.cancel()  # unacknowledged: delivered again after a restart
            return False
        await self._ack(deliveries)
        return True

    def cancel(self) -> None:
        for task, _ in self._pending:
            task.cancel()
        self._pending.clear()


async def publish_changes(
    bus: Bus,
    serving: Serving,
    experiments: exp.Experiments,
    stats: Stats,
    todo: list[tuple[UserState, str]],
    now_ms: int,
    context: str | None = None,
    sent: Callable[[], object] | None = None,
) -> list[tuple[UserState, str]]:
    """Compute each (user, slot), publish what changed; return those that lost a race.
    `sent` is called once the publishes are handed to the client (or when there are none)."""
    computed, pending = exp.changed_lists(serving, experiments, todo, now_ms, context)
    stats.computed += computed
    stats.unchanged += computed - len(pending)
    if not pending:
        if sent is not None:
            sent()
        return []
    writes = [
        Conditional(
            reco_subject(c.state.token, c.slot),
            orjson.dumps(c.event),
            c.event["id"],
            c.state.last[c.slot].seq,
        )
        for c in pending
    ]
    acks = await publish_conditional(
        bus.publisher.pipeline, writes, bus.publisher.ack_timeout, sent
    )
    lost, stored = [], []
    for c, ack in zip(pending, acks, strict=True):
        if ack is None:
            stats.conflicts += 1
            lost.append((c.state, c.slot))
        else:
            c.state.last[c.slot] = Last(ack.seq, c.seen, c.event)
            stats.published += 1
            stored.append(c)
    await exp.publish_shadows(bus, serving, stored, now_ms, context)
    return lost


def last_per_stream(deliveries: Sequence[Delivery]) -> dict[str, Delivery]:
    """The last delivery of each stream (what a cumulative acknowledgement names)."""
    last: dict[str, Delivery] = {}
    for d in deliveries:
        last[d.stream] = d
    return last

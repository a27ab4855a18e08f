"""Publishing to JetStream with the message id as `Nats-Msg-Id`, acknowledgements pipelined.

`Publisher.submit` sends a whole batch without waiting (`engine.bus.pipeline`), then
`settle` waits for its Acks together. A message whose ack does not arrive in time is sent
again with the same `Nats-Msg-Id`, so the stream keeps one copy even if the first attempt was
stored (a timed-out publish may still have been written). Errors are never swallowed: whatever
still fails raises `PublishError`, or its subclass `BrokerDown` when the broker is not reachable.

The time budget is the whole call's, not an attempt's: `ack_timeout` bounds one `publish`
from its start to its last re-send's deadline, a wait for a lost connection to come back
included. The first attempt gets half of it (a healthy broker answers in milliseconds; the
rest is for stragglers), the `retries` re-sends share the other half. So a caller such as the
gateway answers within `ack_timeout` plus its own work, however long the broker is away; it
used to be `ack_timeout` times `retries + 1` (20 s by default), and while disconnected nats-py
buffered publishes until `OutboundBufferLimitError`.

What a producer should do with a failure (the client contract the gateway documents): re-send
the same messages with the same ids after a pause (the gateway's `Retry-After`). Inside the
stream's duplicate window (`StreamSettings.duplicate_window_s`) each id is stored once, whether
or not the failed attempt had been stored; a re-send after the window closed may be stored
twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from engine.bus.pipeline import MSG_ID, Ack, NoStream, Pipeline, Refused
from nerve_client.errors import BrokerDown, PublishError
from nerve_client.events import DeadLetter, Envelope
from nerve_client.subjects import deadletter_subject


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where, what, and the id the stream deduplicates on."""

    subject: str
    payload: bytes
    msg_id: str

    @classmethod
    def event(cls, event: Envelope) -> Outgoing:
        return cls(event.subject, event.to_json(), event.id)

    @classmethod
    def deadletter(cls, record: DeadLetter) -> Outgoing:
        return cls(deadletter_subject(record.source), record.to_json(), record.id)


class Publisher:
    """Pipelined, deduplicated JetStream publishing. One per connection is enough.

    `ack_timeout` is the budget of a whole `publish` (see the module's docstring)."""

    def __init__(
        self,
        nc: NATS,
        *,
        window: int = 4000,
        ack_timeout: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.pipeline = Pipeline(nc, window)
        self.ack_timeout = ack_timeout
        self.retries = retries

    def deadline(self, n: int = 1) -> float:
        """When a publish of `n` messages that starts now must be over (the event loop's
        clock): `ack_timeout` per window's worth of messages, so a bulk publish (a test, a
        tool) of many windows is not refused for its size while a request-sized one (the
        gateway's, at most `max_batch` < `window`) keeps the one `ack_timeout` bound."""
        windows = max(1, -(-n // self.pipeline.window))
        return asyncio.get_running_loop().time() + self.ack_timeout * windows

    async def submit(
        self, messages: Iterable[Outgoing], deadline: float | None = None
    ) -> list[asyncio.Future[Ack]]:
        """Send every message now; return the futures of their acks (check each one).

        Waits for a lost connection until `deadline` (default: `ack_timeout` from now), then
        raises `BrokerDown`; nothing is sent, or buffered, while disconnected."""
        messages = list(messages)
        deadline = self.deadline() if deadline is None else deadline
        if messages and not await self.pipeline.wait_connected(deadline):
            raise BrokerDown(
                messages[0].subject, f"not connected to the broker within {self.ack_timeout:g}s"
            )
        futures: list[asyncio.Future[Ack]] = []
        publish = self.pipeline.publish
        try:
            for m in messages:
                futures.append(await publish(m.subject, m.payload, {MSG_ID: m.msg_id}, deadline))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return futures

    async def settle(
        self,
        messages: Sequence[Outgoing],
        futures: list[asyncio.Future[Ack]],
        deadline: float | None = None,
    ) -> list[Ack]:
        """Wait for the acks of a submitted batch, re-sending what timed out; in input order.

        Everything is over by `deadline` (default: `ack_timeout` from now)."""
        loop = asyncio.get_running_loop()
        deadline = self.deadline() if deadline is None else deadline
        acks: list[Ack | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        for attempt in range(self.retries + 1):
            if attempt:
                futures = await self.submit([messages[i] for i in todo], deadline)
            left = max(0.0, deadline - loop.time())
            share = 2 if attempt == 0 and self.retries else self.retries - attempt + 1
            await self._wait(futures, left / share)
            todo = self._sort(messages, todo, futures, acks)
            if not todo:
                return acks  # type: ignore[return-value]
        error = PublishError if self.pipeline.connected else BrokerDown
        raise error(
            messages[todo[0]].subject,
            f"{len(todo)} message(s) not acknowledged within {self.ack_timeout:g}s "
            f"({self.retries + 1} attempts)",
        )

    @staticmethod
    def _sort(
        messages: Sequence[Outgoing],
        todo: list[int],
        futures: list[asyncio.Future[Ack]],
        acks: list[Ack | None],
    ) -> list[int]:
        """File each answered ack in `acks`; the indexes to send again. A refusal raises."""
        retry = []
        for i, fut in zip(todo, futures, strict=True):
            if not fut.done():
                fut.cancel()
                retry.append(i)
                continue
            exc = fut.exception()
            if exc is None:
                acks[i] = fut.result()
            elif isinstance(exc, NoStream | Refused):
                for f in futures:
                    f.cancel()
                if isinstance(exc, NoStream):
                    reason = "no stream captures this subject (run `nerve init`)"
                    raise PublishError(messages[i].subject, reason)
                raise PublishError(messages[i].subject, f"server refused: {exc}")
            else:
                retry.append(i)
        return retry

    @staticmethod
    async def _wait(futures: list[asyncio.Future[Ack]], timeout: float) -> None:
        """Wait until every future is done or `timeout` seconds passed.

        Acks come back in publish order, so waiting on the last one first usually finds all
        the others done; only stragglers get a second, shared wait.
        """
        if not futures:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.wait(futures[-1:], timeout=timeout)
        rest = [f for f in futures if not f.done()]
        if rest:
            await asyncio.wait(rest, timeout=max(0.0, deadline - loop.time()))

    async def publish(self, messages: Sequence[Outgoing]) -> list[Ack]:
        """Send a batch and wait until the stream has acknowledged every message, all within
        `ack_timeout`; `PublishError` (`BrokerDown`: broker unreachable) if that fails."""
        deadline = self.deadline(len(messages))
        return await self.settle(messages, await self.submit(messages, deadline), deadline)

    async def publish_events(self, events: Sequence[Envelope]) -> list[Ack]:
        return await self.publish([Outgoing.event(e) for e in events])

    async def deadletter(self, records: Sequence[DeadLetter]) -> list[Ack]:
        return await self.publish([Outgoing.deadletter(r) for r in records])

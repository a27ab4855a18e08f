"""Publishing to JetStream with the message id as `Nats-Msg-Id`, acknowledgements pipelined.

`Publisher.submit` sends a whole batch without waiting (`engine.bus.pipeline`), then
`settle` waits for its Acks together. A message whose ack does not arrive in time is sent
again with the same `Nats-Msg-Id`, so the stream keeps one copy even if the first attempt was
stored (a timed-out publish may still have been written). Errors are never swallowed: whatever
still fails after the retries raises `PublishError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from engine.bus.pipeline import MSG_ID, Ack, NoStream, Pipeline, Refused
from engine.errors import PublishError
from engine.events import DeadLetter, Envelope
from engine.subjects import deadletter_subject


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
    """Pipelined, deduplicated JetStream publishing. One per connection is enough."""

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

    async def submit(self, messages: Iterable[Outgoing]) -> list[asyncio.Future[Ack]]:
        """Send every message now; return the futures of their acks (check each one)."""
        publish = self.pipeline.publish
        return [await publish(m.subject, m.payload, {MSG_ID: m.msg_id}) for m in messages]

    async def settle(
        self, messages: Sequence[Outgoing], futures: list[asyncio.Future[Ack]]
    ) -> list[Ack]:
        """Wait for the acks of a submitted batch, re-sending what timed out; in input order."""
        acks: list[Ack | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        for attempt in range(self.retries + 1):
            if attempt:
                futures = await self.submit([messages[i] for i in todo])
            await self._wait(futures)
            retry = []
            for i, fut in zip(todo, futures, strict=True):
                if not fut.done():
                    fut.cancel()
                    retry.append(i)
                    continue
                exc = fut.exception()
                if exc is None:
                    acks[i] = fut.result()
                elif isinstance(exc, NoStream):
                    raise PublishError(
                        messages[i].subject, "no stream captures this subject (run `nerve init`)"
                    )
                elif isinstance(exc, Refused):
                    raise PublishError(messages[i].subject, f"server refused: {exc}")
                else:
                    retry.append(i)
            todo = retry
            if not todo:
                return acks  # type: ignore[return-value]
        raise PublishError(
            messages[todo[0]].subject,
            f"{len(todo)} message(s) not acknowledged after {self.retries + 1} attempts "
            f"of {self.ack_timeout:g}s",
        )

    async def _wait(self, futures: list[asyncio.Future[Ack]]) -> None:
        """Wait until every future is done or `ack_timeout` passed.

        Acks come back in publish order, so waiting on the last one first usually finds all
        the others done; only stragglers get a second, shared wait.
        """
        if not futures:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        await asyncio.wait(futures[-1:], timeout=self.ack_timeout)
        rest = [f for f in futures if not f.done()]
        if rest:
            await asyncio.wait(rest, timeout=max(0.0, deadline - loop.time()))

    async def publish(self, messages: Sequence[Outgoing]) -> list[Ack]:
        """Send a batch and wait until the stream has acknowledged every message."""
        return await self.settle(messages, await self.submit(messages))

    async def publish_events(self, events: Sequence[Envelope]) -> list[Ack]:
        return await self.publish([Outgoing.event(e) for e in events])

    async def deadletter(self, records: Sequence[DeadLetter]) -> list[Ack]:
        return await self.publish([Outgoing.deadletter(r) for r in records])

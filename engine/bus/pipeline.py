"""Pipelined JetStream publishing with our own reply inbox.

nats-py's `publish_async` never resolves the future of a publish the server refuses
(`APIError.from_error` raises inside its reply callback, so the error is lost and the future
waits forever): a compare-and-set that loses, or a stream that is full, would hang. This module
does the same job — one wildcard reply subscription, a future per message, a bounded number in
flight — and resolves every reply: a PubAck, the server's error with its code, or "no stream"
(status 503, no responders). Replies are decoded with orjson.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from engine.errors import PublishError

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
"""The server's error code when `Nats-Expected-Last-Subject-Sequence` does not hold."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The server stored the message: in `stream` at `seq`; `duplicate` if it already had it."""

    stream: str
    seq: int
    duplicate: bool = False


class Refused(Exception):
    """The server answered the publish with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class NoStream(Exception):
    """No stream captures the subject (the server had no responder for it)."""


class Pipeline:
    """Publishes with a reply inbox and returns a future per message; at most `window`
    unanswered at a time."""

    def __init__(self, nc: NATS, window: int = 4000) -> None:
        self._nc = nc
        self._window = asyncio.Semaphore(window)
        self._futures: dict[str, asyncio.Future[Ack]] = {}
        self._prefix = ""
        self._counter = 0
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if not self._prefix:
                prefix = self._nc.new_inbox() + "."
                await self._nc.subscribe(prefix + "*", cb=self._on_reply)
                self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(NoStream())
            return
        try:
            resp: dict[str, Any] = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            fut.set_exception(Refused(0, 0, f"unreadable reply {msg.data[:80]!r}"))
            return
        err = resp.get("error")
        if err:
            fut.set_exception(
                Refused(err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
            )
        else:
            fut.set_result(Ack(resp["stream"], resp["seq"], bool(resp.get("duplicate"))))

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Ack]:
        """Send now; the future resolves to `Ack`, or fails with `Refused` / `NoStream`."""
        if not self._prefix:
            await self._start()
        await self._window.acquire()
        self._counter += 1
        token = str(self._counter)
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def done(_: asyncio.Future[Ack], token: str = token) -> None:
            self._futures.pop(token, None)
            self._window.release()

        fut.add_done_callback(done)
        self._futures[token] = fut
        await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        return fut


@dataclass(frozen=True, slots=True)
class Conditional:
    """A publish stored only if `subject`'s last sequence is `expected` (0: none yet; None:
    unconditional, for tools that overwrite)."""

    subject: str
    payload: bytes
    msg_id: str | None
    expected: int | None


async def publish_conditional(
    pipeline: Pipeline, items: Sequence[Conditional], timeout: float
) -> list[Ack | None]:
    """Send every conditional publish at once; per item its `Ack`, or None where the subject
    had moved on (the compare-and-set was lost). Anything else raises `PublishError`."""
    futures: list[asyncio.Future[Ack]] = []
    for item in items:
        headers: dict[str, str] = {}
        if item.expected is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(item.expected)
        if item.msg_id is not None:
            headers[MSG_ID] = item.msg_id
        futures.append(await pipeline.publish(item.subject, item.payload, headers))
    if futures:
        await asyncio.wait(futures, timeout=timeout)
    out: list[Ack | None] = []
    for item, fut in zip(items, futures, strict=True):
        if not fut.done():
            fut.cancel()
            raise PublishError(item.subject, f"no acknowledgement within {timeout:g}s")
        exc = fut.exception()
        if exc is None:
            out.append(fut.result())
        elif isinstance(exc, Refused) and exc.err_code == WRONG_LAST_SEQUENCE:
            out.append(None)
        else:
            raise PublishError(item.subject, str(exc))
    return out

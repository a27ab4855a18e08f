"""Pipelined JetStream publishing with our own reply inbox.

nats-py's `publish_async` never resolves the future of a publish the server refuses
(`APIError.from_error` raises inside its reply callback, so the error is lost and the future
waits forever): a compare-and-set that loses, or a stream that is full, would hang. This module
does the same job — one wildcard reply subscription, a future per message, a bounded number in
flight — and resolves every reply: a PubAck, the server's error with its code, or "no stream"
(status 503, no responders). Replies are decoded with orjson.

It is also where nats-py's own exceptions stop. While the client is disconnected, nats-py
buffers a publish in its pending buffer and raises `OutboundBufferLimitError` once that is full
(after a long outage), `ConnectionClosedError` once closed, `ConnectionDrainingError` while
draining; a request or JetStream API call raises `nats.errors.TimeoutError`,
`NoRespondersError` or `ServiceUnavailableError`. `Pipeline.publish` sends nothing while the
client is not connected (so an event refused during an outage is not flushed into the stream
behind its client's back when the connection returns) and turns every one of those into
`BrokerDown`; `broker_unavailable` tells any other code path (the gateway's exception
handlers) which nats-py errors mean "the broker is unavailable" without importing nats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from nerve_client.errors import BrokerDown, BrokerError, PublishError

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


NATS_ERROR: type[Exception] = nats.errors.Error
"""The root of every nats-py exception (for exception handlers outside the bus)."""

UNAVAILABLE: tuple[type[Exception], ...] = (
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,  # UnexpectedEOF too
    nats.errors.NoServersError,
    nats.errors.TimeoutError,  # FlushTimeoutError, DrainTimeoutError, FetchTimeoutError too
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    BrokerError,
)
"""What a call raises when the broker is down, unreachable, overloaded or not answering."""


def broker_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the broker is (temporarily) unavailable rather than a bug."""
    return isinstance(exc, UNAVAILABLE)


def publish_failure(subject: str, exc: Exception) -> PublishError:
    """The engine's error for a nats-py exception raised while sending to `subject`."""
    reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, nats.errors.OutboundBufferLimitError):
        reason = "not connected to the broker and the client's outbound buffer is full"
    elif isinstance(exc, nats.errors.MaxPayloadError):
        return PublishError(subject, "message exceeds the server's max_payload")
    return BrokerDown(subject, reason) if broker_unavailable(exc) else PublishError(subject, reason)


class Pipeline:
    """Publishes with a reply inbox and returns a future per message; at most `window`
    unanswered at a time."""

    def __init__(self, nc: NATS, window: int = 4000) -> None:
        self._nc = nc
        self.window = window
        self._window = asyncio.Semaphore(window)
        self._futures: dict[str, asyncio.Future[Ack]] = {}
        self._prefix = ""
        self._counter = 0
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def wait_connected(self, deadline: float) -> bool:
        """Wait until the client is connected or the loop's clock reaches `deadline`.

        Polls every 20 ms: nats-py offers no awaitable for "reconnected" besides the
        connection's callback, which belongs to `engine.bus.connection`."""
        loop = asyncio.get_running_loop()
        while not self.connected:
            if self._nc.is_closed or loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.02, max(0.0, deadline - loop.time())))
        return True

    async def _start(self) -> None:
        async with self._lock:
            if not self._prefix:
                prefix = self._nc.new_inbox() + "."
                try:
                    await self._nc.subscribe(prefix + "*", cb=self._on_reply)
                except nats.errors.Error as exc:
                    raise publish_failure(prefix + "*", exc) from None
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
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> asyncio.Future[Ack]:
        """Send now; the future resolves to `Ack`, or fails with `Refused` / `NoStream`.

        Raises `BrokerDown` at once when the client is not connected (nothing is buffered for
        later), or when the window has no room before `deadline` (the loop's clock)."""
        if not self.connected:
            raise BrokerDown(subject, "not connected to the broker")
        if not self._prefix:
            await self._start()
        if deadline is None or not self._window.locked():
            # Room in the window: taken without yielding to the loop (`asyncio.wait_for` would
            # start a task and yield on every publish, so nats-py's flusher would send each
            # message of a batch in a socket write of its own).
            await self._window.acquire()
        else:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                await asyncio.wait_for(self._window.acquire(), timeout)
            except TimeoutError:
                raise BrokerDown(subject, "too many publishes waiting for the broker") from None
        self._counter += 1
        token = str(self._counter)
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def done(_: asyncio.Future[Ack], token: str = token) -> None:
            self._futures.pop(token, None)
            self._window.release()

        fut.add_done_callback(done)
        self._futures[token] = fut
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException as exc:
            fut.cancel()  # frees its place in the window
            if isinstance(exc, nats.errors.Error):
                raise publish_failure(subject, exc) from None
            raise
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
    pipeline: Pipeline,
    items: Sequence[Conditional],
    timeout: float,
    sent: Callable[[], object] | None = None,
) -> list[Ack | None]:
    """Send every conditional publish at once; per item its `Ack`, or None where the subject
    had moved on (the compare-and-set was lost). Anything else raises `PublishError`
    (`BrokerDown` when the client is not connected); the whole call takes at most `timeout`
    seconds, a wait for the connection to come back included. `sent` is called once every
    publish is handed to the client, before the wait for the acknowledgements (a caller may
    start its next batch meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if items and not await pipeline.wait_connected(deadline):
        raise BrokerDown(items[0].subject, f"not connected to the broker within {timeout:g}s")
    futures: list[asyncio.Future[Ack]] = []
    try:
        for item in items:
            headers: dict[str, str] = {}
            if item.expected is not None:
                headers[EXPECTED_LAST_SUBJECT_SEQ] = str(item.expected)
            if item.msg_id is not None:
                headers[MSG_ID] = item.msg_id
            futures.append(await pipeline.publish(item.subject, item.payload, headers, deadline))
        if sent is not None:
            sent()
        if futures:
            await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    late = [item for item, fut in zip(items, futures, strict=True) if not fut.done()]
    for fut in futures:
        fut.cancel()  # no-op on the answered ones; frees the window of the late ones
    if late:
        error = PublishError if pipeline.connected else BrokerDown
        raise error(late[0].subject, f"no acknowledgement within {timeout:g}s")
    out: list[Ack | None] = []
    for item, fut in zip(items, futures, strict=True):
        exc = fut.exception()
        if exc is None:
            out.append(fut.result())
        elif isinstance(exc, Refused) and exc.err_code == WRONG_LAST_SEQUENCE:
            out.append(None)
        else:
            raise PublishError(item.subject, str(exc))
    return out

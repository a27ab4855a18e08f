"""What the services that keep a window of the log in memory share (signals, anomalies): on
start they re-read the window, then follow the streams live through one queue; they
dead-letter only what was stored after they started (the window they re-read was
dead-lettered when it arrived), and they hear `nerve forget`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from engine.bus import Bus, Refusal
from engine.bus.consumer import Batch, refusals
from engine.health import beating

log = logging.getLogger("nerve.windowed")


class Counts(Protocol):
    refused: int
    deadlettered: int


async def follow(
    bus: Bus,
    name: str,
    streams: Sequence[str],
    since: datetime,
    *,
    forget: Callable[[str], None],
    progress: Callable[[], Awaitable[tuple[int, int]]],
    process: Callable[[str, Batch], Awaitable[None]],
    queue: asyncio.Queue[tuple[str, Batch]],
    live_from: dict[str, int],
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Note in `live_from` where each stream's live part starts, re-read `streams` from
    `since`, then `process` every batch, in order, until `stop`."""

    def feeder(stream: str) -> Any:
        def handle(batch: Batch) -> None:
            queue.put_nowait((stream, batch))

        return handle

    for stream in streams:
        _, newest = await bus.last_messages(stream, 1)
        live_from[stream] = newest[0][0] + 1 if newest else 1
    async with contextlib.AsyncExitStack() as stack:
        sub = await bus.on_forget(forget)
        stack.push_async_callback(sub.unsubscribe)
        for stream in streams:
            await stack.enter_async_context(bus.tail(stream, 0, feeder(stream), since=since))
        await stack.enter_async_context(beating(bus, name, progress))
        ready.set()
        while not stop.is_set():
            try:
                stream, batch = await asyncio.wait_for(queue.get(), 0.5)
            except TimeoutError:
                continue
            await process(stream, batch)


async def deadletter_live(
    bus: Bus,
    source: str,
    stream: str,
    refused: list[tuple[Refusal, str]],
    live_from: dict[str, int],
    counts: Counts,
) -> None:
    """Dead-letter what the service could not read or apply, of what was stored after it
    started (the records' ids hash their bytes, so a re-send is stored once anyway)."""
    live = [(r, reason) for r, reason in refused if r.seq >= live_from.get(stream, 1)]
    counts.refused += len(refused)
    if not live:
        return
    try:
        await bus.deadletter(refusals(source, live))
        counts.deadlettered += len(live)
    except Exception:
        log.exception("could not dead-letter %d message(s) of %s", len(live), stream)

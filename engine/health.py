"""Is each service making progress? Heartbeats in the `health` bucket, judged by `/healthz`.

Every stream service writes, every `INTERVAL` seconds, one small record under its own key
(`<service>` or `<service>-<replica>`): when, how many messages it has handled in total
(`done`), and how many wait for it (`behind`: its consumer's pending and unacknowledged
messages, or the stream's last sequence minus the warehouse's). The bucket keeps a value for a
minute, so a stopped service's key disappears instead of lying.

A service is **stuck** when work waits for it (`behind > 0`) and `done` has not moved for
`STUCK_AFTER_S` seconds: a poison message retried forever, a lost subscription, a deadlock.
`/healthz` answers 503 and names it. A service that is merely busy moves `done`; an idle one
has nothing behind it. Since heartbeats go through the broker, this works whatever process or
machine each service runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from engine.bus import Bus, JetStreamKV

log = logging.getLogger("nerve.health")

BUCKET = "health"
INTERVAL = 5.0
STUCK_AFTER_S = 60.0
"""Longer than the retry backoff of a failing batch (10 s) and the consumers' ack wait."""

Progress = Callable[[], Awaitable[tuple[int, int]]]
"""(messages handled so far, messages waiting): what a service reports."""


@dataclass
class Beat:
    """One service's last heartbeat, and since when `done` has not changed."""

    at: float
    done: int
    behind: int
    moved_at: float

    def stuck(self, now: float, after: float = STUCK_AFTER_S) -> bool:
        return self.behind > 0 and now - self.moved_at > after


async def heartbeat(
    bus: Bus, name: str, progress: Progress, stop: asyncio.Event, interval: float = INTERVAL
) -> None:
    """Write `name`'s progress every `interval` seconds until `stop` (errors are logged: a
    heartbeat never takes its service down)."""
    kv: JetStreamKV | None = None
    moved_at, last_done = time.time(), -1
    while True:
        final = stop.is_set()  # one last beat after `stop`: the state it stopped in
        try:
            kv = kv or await bus.kv(BUCKET)
            done, behind = await progress()
            now = time.time()
            if done != last_done:
                moved_at, last_done = now, done
            beat = {"at": now, "done": done, "behind": behind, "moved_at": moved_at}
            await kv.put(name, orjson.dumps(beat))
        except Exception as exc:
            log.debug("heartbeat of %s not written: %s", name, exc)
        if final:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def key(name: str) -> str:
    """The heartbeat key of `name` in this process (replicas of one service differ)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
    return f"{name}.{host}-{os.getpid()}"


@contextlib.asynccontextmanager
async def beating(bus: Bus, name: str, progress: Progress) -> AsyncIterator[None]:
    """Heartbeats of `name` while the block runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat(bus, key(name), progress, stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 2.0)


async def beats(kv: JetStreamKV) -> dict[str, Beat]:
    """Every service's last heartbeat."""
    out = {}
    for key in await kv.keys():
        raw = await kv.get(key)
        with contextlib.suppress(ValueError, TypeError, KeyError):
            d = orjson.loads(raw or b"")
            out[key] = Beat(float(d["at"]), int(d["done"]), int(d["behind"]), float(d["moved_at"]))
    return out


async def report(bus: Bus, after: float = STUCK_AFTER_S) -> dict[str, object]:
    """For `/healthz`: each service's heartbeat and the names of the stuck ones."""
    found = await beats(await bus.kv(BUCKET))
    now = time.time()
    services = {
        name: {
            "done": b.done,
            "behind": b.behind,
            "seconds_since_progress": round(now - b.moved_at, 1),
            "stuck": b.stuck(now, after),
        }
        for name, b in sorted(found.items())
    }
    return {"services": services, "stuck": [n for n, s in services.items() if s["stuck"]]}

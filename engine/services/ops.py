"""The ops service (`nerve run ops`, part of `nerve up`): it answers `nerve.ops.state` with the
operator console's state (`engine.ops.OpsState`), and `nerve.ops.stats` and
`nerve.ops.experiments` with the reports of `/v1/stats` and `/v1/experiments`
(`engine.ops.reports`).

It exists so the internet-facing gateway needs no grant to read stream and consumer info,
DEADLETTER, SIGNALS, ANOMALIES, the model registry, or the log and the lists the reports
count: the gateway's `/ops/state`, `/metrics`, `/v1/stats` and `/v1/experiments` ask here (as
its `/v1/profiles` asks the profiles service). Its own credential (`engine.credentials` role
`ops`) may read exactly those and nothing else: no CRM, no profiles, no publishing beyond its
heartbeat; it answers with aggregates, never an event. It keeps what lasts between two questions
(`engine.ops.Watch`): the stream samples the events/s come from, and a tally of the newest
dead letters, kept live by a tail of DEADLETTER from start to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson

from engine.bus import Bus
from engine.health import beating
from engine.ops import Watch, following, state_of
from engine.ops.reports import ExperimentsQuery, StatsQuery, answering, experiments, stats
from engine.settings import Settings
from nerve_client.subjects import OPS_EXPERIMENTS_SUBJECT, OPS_REQUEST_SUBJECT, OPS_STATS_SUBJECT

Handler = Callable[[bytes], Awaitable[bytes]]

log = logging.getLogger("nerve.ops")


class OpsService:
    """Answers `nerve.ops.state` until `stop` is set; `answer` is the handler."""

    name = "ops"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.watch = Watch()
        self.answered = 0
        self.ready = asyncio.Event()

    @classmethod
    async def build(cls, bus: Bus, _settings: Settings) -> OpsService:
        return cls(bus)

    def describe(self) -> str:
        return (
            f"operator console state on {OPS_REQUEST_SUBJECT}, reports on {OPS_STATS_SUBJECT} "
            f"and {OPS_EXPERIMENTS_SUBJECT}"
        )

    async def answer(self, _data: bytes) -> bytes:
        """The console's state as `OpsState` JSON (the request's body is not read)."""
        state = await state_of(self.bus, self.watch)
        self.answered += 1
        return orjson.dumps(state.model_dump(mode="json"))

    def counted(self, handler: Handler) -> Handler:
        """`handler`, its answers counted in the heartbeat's progress."""

        async def answer(data: bytes) -> bytes:
            reply = await handler(data)
            self.answered += 1
            return reply

        return answer

    async def run(self, stop: asyncio.Event) -> None:
        bus = self.bus
        async with contextlib.AsyncExitStack() as stack:
            try:
                self.watch.tally = await stack.enter_async_context(following(self.bus))
                self.watch.tally_note = None
            except Exception as exc:  # a broker nobody provisioned, a credential without it
                self.watch.tally_note = f"DEADLETTER not readable: {exc!r}"
                log.warning("ops: %s", self.watch.tally_note)
            handlers: dict[str, Handler] = {
                OPS_REQUEST_SUBJECT: self.answer,
                OPS_STATS_SUBJECT: self.counted(answering(bus, StatsQuery, stats)),
                OPS_EXPERIMENTS_SUBJECT: self.counted(
                    answering(bus, ExperimentsQuery, experiments)
                ),
            }
            for subject, handler in handlers.items():
                sub = await bus.serve(subject, handler)
                stack.push_async_callback(sub.unsubscribe)
            self.ready.set()

            async def progress() -> tuple[int, int]:
                return self.answered, 0

            async with beating(self.bus, self.name, progress):
                await stop.wait()

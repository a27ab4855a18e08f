"""The ops service (`nerve run ops`, part of `nerve up`): it answers `nerve.ops.state` with the
operator console's state (`engine.ops.OpsState`).

It exists so the internet-facing gateway needs no grant to read stream and consumer info,
DEADLETTER, SIGNALS, ANOMALIES or the model registry: the gateway's `/ops/state` and
`/metrics` ask here (as its `/v1/profiles` asks the profiles service). Its own credential
(`engine.credentials` role `ops`) may read exactly those and nothing else: no ACTIVITY, no
profiles, no publishing beyond its heartbeat. It keeps what lasts between two questions
(`engine.ops.Watch`): the stream samples the events/s come from, and a tally of the newest
dead letters, kept live by a tail of DEADLETTER from start to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from engine.bus import Bus
from engine.health import beating
from engine.ops import Watch, following, state_of
from engine.settings import Settings
from nerve_client.subjects import OPS_REQUEST_SUBJECT

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
        return f"operator console state on {OPS_REQUEST_SUBJECT}"

    async def answer(self, _data: bytes) -> bytes:
        """The console's state as `OpsState` JSON (the request's body is not read)."""
        state = await state_of(self.bus, self.watch)
        self.answered += 1
        return orjson.dumps(state.model_dump(mode="json"))

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                self.watch.tally = await stack.enter_async_context(following(self.bus))
                self.watch.tally_note = None
            except Exception as exc:  # a broker nobody provisioned, a credential without it
                self.watch.tally_note = f"DEADLETTER not readable: {exc!r}"
                log.warning("ops: %s", self.watch.tally_note)
            answering = await self.bus.serve(OPS_REQUEST_SUBJECT, self.answer)
            stack.push_async_callback(answering.unsubscribe)
            self.ready.set()

            async def progress() -> tuple[int, int]:
                return self.answered, 0

            async with beating(self.bus, self.name, progress):
                await stop.wait()

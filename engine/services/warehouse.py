"""The warehouse service: tails ACTIVITY into the Parquet warehouse (`engine.warehouse`),
exactly once: the warehouse's own state file, not a consumer, records how far it got."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from engine.bus import Bus
from engine.bus.consumer import Batch
from engine.settings import Settings
from engine.subjects import ACTIVITY
from engine.warehouse import Warehouse, row

log = logging.getLogger("nerve.warehouse")


class WarehouseService:
    """Tails ACTIVITY into the warehouse until `stop` is set."""

    name = "warehouse"

    def __init__(
        self, bus: Bus, root: Path, *, flush_events: int = 50_000, flush_seconds: float = 5.0
    ) -> None:
        self.bus = bus
        self.ready = asyncio.Event()
        self.warehouse = Warehouse(root)
        self.flush_events = flush_events
        self.flush_seconds = flush_seconds
        self.written = 0

    @classmethod
    async def build(cls, bus: Bus, settings: Settings) -> WarehouseService:
        root = settings.broker.data_dir / "warehouse"
        return cls(bus, root, flush_events=settings.services.flush_events)

    def describe(self) -> str:
        return f"appending ACTIVITY to Parquet under {self.warehouse.root}"

    async def run(self, stop: asyncio.Event) -> None:
        removed = self.warehouse.recover()
        if removed:
            log.warning("removed %d file(s) written after the last recorded sequence", removed)
        start = self.warehouse.state()["last_seq"] + 1
        pending: Batch = []
        arrived = asyncio.Event()

        def handle(batch: Batch) -> None:
            pending.extend(batch)
            arrived.set()

        async with self.bus.tail(ACTIVITY, start, handle):
            self.ready.set()
            last_flush = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.2)
                arrived.clear()
                due = time.monotonic() - last_flush >= self.flush_seconds
                if pending and (len(pending) >= self.flush_events or due):
                    await self.flush(pending)
                    last_flush = time.monotonic()
            if pending:
                await self.flush(pending)

    async def flush(self, pending: Batch) -> None:
        chunk = pending[:]
        pending.clear()
        # decoding and writing both run off the event loop, which other services share
        self.written += await asyncio.to_thread(self._write, chunk)

    def _write(self, chunk: Batch) -> int:
        rows = [r for seq, subject, data in chunk if (r := row(seq, subject, data))]
        self.warehouse.append(rows, chunk[0][0], chunk[-1][0])
        return len(rows)

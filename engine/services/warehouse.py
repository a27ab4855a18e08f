"""The warehouse service: tails ACTIVITY into the Parquet warehouse (`engine.warehouse`),
exactly once: the warehouse's own state file, not a consumer, records how far it got."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from engine.bus import Bus, Refusal, decode
from engine.bus.consumer import Batch, refusals
from engine.health import beating
from engine.settings import Settings
from engine.warehouse import Warehouse, row_of
from nerve_client.errors import PublishError
from nerve_client.subjects import ACTIVITY

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
        self.deadlettered = 0

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

        async def progress() -> tuple[int, int]:
            done = self.warehouse.state()["last_seq"]
            _, newest = await self.bus.last_messages(ACTIVITY, 1)
            return done, max(0, (newest[0][0] if newest else 0) - done)

        async with self.bus.tail(ACTIVITY, start, handle), beating(self.bus, self.name, progress):
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
        """Write what is pending; what cannot be read is dead-lettered first (before the
        chunk's sequence is recorded, so a crash in between re-reads it). While the broker
        refuses the dead letters, the chunk stays pending and is tried again."""
        chunk = pending[:]
        # decoding and writing both run off the event loop, which other services share
        rows, refused = await asyncio.to_thread(self._decode, chunk)
        if refused:
            try:
                await self.bus.deadletter(refusals("warehouse", refused))
            except PublishError as exc:
                log.warning("could not dead-letter %d message(s): %s; retrying", len(refused), exc)
                return
            self.deadlettered += len(refused)
        del pending[: len(chunk)]
        await asyncio.to_thread(self.warehouse.append, rows, chunk[0][0], chunk[-1][0])
        self.written += len(rows)

    @staticmethod
    def _decode(chunk: Batch) -> tuple[list[dict[str, Any]], list[tuple[Refusal, str]]]:
        rows, refused = [], []
        for seq, subject, data in chunk:
            record = decode(ACTIVITY, seq, subject, data)
            if isinstance(record, Refusal):
                refused.append((record, record.reason))
            elif not record.system:
                rows.append(row_of(record))
        return rows, refused

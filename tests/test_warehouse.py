"""The warehouse: Parquet by day, exactly once across crashes; history as a DataFrame."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.reader import read_all
from engine.services.warehouse import WarehouseService
from engine.synth import generate
from engine.warehouse import Warehouse
from nerve_client.events import parse_event
from training import load_history

END = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("wh") / "h.jsonl"
    generate(path, users=400, days=10, seed=4, end=END)
    return path.read_bytes().splitlines()


async def publish(nc: NATS, lines: list[bytes]) -> int:
    acks = await Publisher(nc).publish_events([parse_event(orjson.loads(x)) for x in lines])
    return acks[-1].seq


async def run_until(service: WarehouseService, last: int, timeout: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while service.warehouse.state()["last_seq"] < last:
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
    finally:
        stop.set()
        await task


def rows(root: Path) -> list[int]:
    return sorted(s for f in Warehouse(root).files() for s in pq.read_table(f)["seq"].to_pylist())


async def test_events_land_once_in_daily_partitions_and_load_as_a_dataframe(
    fresh: NATS, nats_url: str, tmp_path: Path, history: list[bytes]
) -> None:
    last = await publish(fresh, history)
    service = WarehouseService(
        Bus(fresh), tmp_path / "warehouse", flush_events=700, flush_seconds=0.2
    )
    await run_until(service, last)
    assert rows(tmp_path / "warehouse") == list(range(1, last + 1))
    days = {f.parent.name for f in service.warehouse.files()}
    assert len(days) == 10 and all(d.startswith("date=2026-05-") for d in days)
    frame = load_history("warehouse", data_dir=tmp_path)
    assert len(frame) == last and frame["seq"].is_monotonic_increasing
    assert str(frame["time"].dtype) == "datetime64[ms, UTC]"
    first = orjson.loads(history[0])
    assert (frame.loc[0, "id"], frame.loc[0, "type"]) == (first["id"], first["type"])
    purchases = load_history("warehouse", types=["item_purchased"], data_dir=tmp_path)
    assert set(purchases["type"]) == {"item_purchased"} and purchases["value"].notna().all()
    window = load_history("warehouse", since="2026-05-25", until="2026-05-27", data_dir=tmp_path)
    assert window["time"].min() >= datetime(2026, 5, 25, tzinfo=UTC)
    assert window["time"].max() < datetime(2026, 5, 27, tzinfo=UTC)
    assert 0 < len(window) < len(frame)
    streamed = load_history("stream", nats_url=nats_url, data_dir=tmp_path)
    assert streamed.equals(frame)


async def test_a_chunk_written_but_not_recorded_is_removed_and_written_once(
    fresh: NATS, tmp_path: Path, history: list[bytes]
) -> None:
    last = await publish(fresh, history[:2000])
    root = tmp_path / "warehouse"
    service = WarehouseService(Bus(fresh), root, flush_events=500, flush_seconds=0.2)
    await run_until(service, 1000)
    recorded = service.warehouse.state()["last_seq"]
    # What a crash between writing a file and recording it leaves behind:
    orphan = service.warehouse.files()[0].parent / f"part-{recorded + 1:020d}-{last:020d}.parquet"
    orphan.write_bytes(service.warehouse.files()[0].read_bytes())
    await run_until(WarehouseService(Bus(fresh), root, flush_events=500, flush_seconds=0.2), last)
    assert not orphan.exists()
    assert rows(root) == list(range(1, last + 1))


async def test_kill_9_while_writing_loses_and_duplicates_nothing(
    fresh: NATS, nats_url: str, tmp_path: Path, history: list[bytes]
) -> None:
    last = await publish(fresh, history)
    rnd = random.Random(int(os.environ.get("NERVE_FAULT_SEED", "4")))
    command = [
        sys.executable,
        "-m",
        "engine.cli",
        "--nats-url",
        nats_url,
        "--data-dir",
        str(tmp_path),
        "run",
        "warehouse",
        "--flush-events",
        "20",
    ]
    progress = []
    for _ in range(3):
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("NATS"):
                break
        await asyncio.sleep(rnd.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        progress.append(Warehouse(tmp_path / "warehouse").state()["last_seq"])
        # what the kill left is readable as a directory, as Spark reads it (no half file shows)
        if (tmp_path / "warehouse" / "activity").exists():
            ds.dataset(tmp_path / "warehouse" / "activity", format="parquet").to_table()
    assert progress[0] < last, f"a kill must land while it is still writing: {progress}"
    await run_until(WarehouseService(Bus(fresh), tmp_path / "warehouse"), last)
    assert rows(tmp_path / "warehouse") == list(range(1, last + 1)), progress


async def test_unreadable_messages_are_dead_lettered_not_dropped(
    fresh: NATS, tmp_path: Path, history: list[bytes]
) -> None:
    """Before, the warehouse skipped what it could not decode and told nobody; now each such
    message is in DEADLETTER (source warehouse, its raw bytes and reason) and the readable
    events around it are written once."""
    js = fresh.jetstream()
    await publish(fresh, history[:5])
    await js.publish("activity.x.item_viewed", b"not json at all")
    await js.publish("activity.y.page_viewed", b"[1, 2]")
    last = await publish(fresh, history[5:10])
    service = WarehouseService(Bus(fresh), tmp_path / "wh", flush_seconds=0.1)
    await run_until(service, last)
    assert len(rows(tmp_path / "wh")) == 10
    dead = [orjson.loads(d) for _, _, d in await read_all(js, "DEADLETTER")]
    mine = [d for d in dead if d["source"] == "warehouse"]
    assert [base64.b64decode(d["raw_b64"]) for d in mine] == [b"not json at all", b"[1, 2]"]
    assert mine[0]["reason"].startswith("not valid JSON")
    assert mine[1]["reason"] == "not a JSON object"
    assert service.deadlettered == 2

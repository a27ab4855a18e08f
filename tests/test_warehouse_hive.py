"""The warehouse as a Hive-partitioned Parquet dataset: DuckDB reads what the real service
wrote from a real broker, counts match ACTIVITY per day, every part has one schema, and a write
cut short leaves nothing a reader of the directory trips on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.reader import read_all
from engine.services.warehouse import WarehouseService
from engine.synth import generate
from engine.warehouse import SCHEMA, Warehouse, row, write_atomically
from nerve_client.events import parse_event
from tests.conftest import event
from tests.test_warehouse import run_until
from training import load_history

END = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("hive") / "h.jsonl"
    generate(path, users=300, days=8, seed=7, end=END)
    return path.read_bytes().splitlines()


async def fill(nc: NATS, root: Path, events: list[dict[str, object]]) -> int:
    """Publish `events`, run the real service until all are written; the last sequence."""
    acks = await Publisher(nc).publish_events([parse_event(e) for e in events])
    service = WarehouseService(Bus(nc), root, flush_events=400, flush_seconds=0.2)
    await run_until(service, acks[-1].seq)
    return acks[-1].seq


async def activity_days(nc: NATS) -> Counter[str]:
    """What ACTIVITY holds: user events per UTC day of their `time`, read from the broker."""
    days: Counter[str] = Counter()
    for seq, subject, data in await read_all(nc.jetstream(), "ACTIVITY"):
        r = row(seq, subject, data)
        if r is not None:
            days[datetime.fromtimestamp(r["time"] / 1000, UTC).strftime("%Y-%m-%d")] += 1
    return days


def glob(root: Path) -> str:
    return str(root / "activity" / "**" / "*.parquet")


async def test_duckdb_reads_the_warehouse_and_counts_match_activity_per_day(
    fresh: NATS, tmp_path: Path, history: list[bytes]
) -> None:
    root = tmp_path / "warehouse"
    await fill(fresh, root, [orjson.loads(x) for x in history])
    want = await activity_days(fresh)
    con = duckdb.connect()
    src = f"read_parquet('{glob(root)}', hive_partitioning = true)"
    total = con.execute(f"SELECT count(*), count(DISTINCT seq) FROM {src}").fetchone()
    assert total == (sum(want.values()), sum(want.values()))
    per_day = con.execute(f"SELECT strftime(date, '%Y-%m-%d'), count(*) FROM {src} GROUP BY 1")
    assert dict(per_day.fetchall()) == dict(want) and len(want) == 8
    # `date` is a real DATE column (from the directory names), and it is the UTC day of `time`
    kinds = {c[0]: c[1] for c in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    assert kinds["date"] == "DATE" and kinds["time"] == "TIMESTAMP WITH TIME ZONE"
    con.execute("SET TimeZone = 'UTC'")
    wrong = con.execute(f"SELECT count(*) FROM {src} WHERE CAST(time AS DATE) <> date").fetchone()
    assert wrong == (0,)
    # a filter on the partition column reads only that day's directory
    day = sorted(want)[3]
    one = con.execute(f"SELECT count(*) FROM {src} WHERE date = DATE '{day}'").fetchone()
    assert one == (want[day],)
    # training's reader sees the same rows
    frame = load_history("warehouse", data_dir=tmp_path)
    assert len(frame) == sum(want.values()) and "date" not in frame.columns
    window = load_history("warehouse", since=day, until=f"{day}T12:00:00", data_dir=tmp_path)
    assert 0 < len(window) < want[day]


async def test_every_partition_has_the_same_columns_and_types(
    fresh: NATS, tmp_path: Path, history: list[bytes]
) -> None:
    """Also a chunk that holds only page views (no item, category or value in any row) and a
    day that holds only purchases: the columns and types do not depend on what a file holds."""
    root = tmp_path / "warehouse"
    first = datetime(2026, 4, 1, 9, tzinfo=UTC)
    views = [
        event("page_viewed", time=(first + timedelta(seconds=i)).isoformat()) for i in range(5)
    ]
    buys = [event("item_purchased", time=(first + timedelta(days=1)).isoformat())]
    await fill(fresh, root, views)  # a chunk of its own
    await fill(fresh, root, buys + [orjson.loads(x) for x in history[:1500]])
    files = Warehouse(root).files()
    assert {f.parent.name for f in files} >= {"date=2026-04-01", "date=2026-04-02"}
    con = duckdb.connect()
    described = {
        str(f): con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{f}', hive_partitioning = false)"
        ).fetchall()
        for f in files
    }
    assert len({tuple(d) for d in described.values()}) == 1, described
    assert [c[0] for c in next(iter(described.values()))] == SCHEMA.names
    assert all(pq.read_schema(f).remove_metadata() == SCHEMA for f in files)
    # and DuckDB reads them all at once without unifying anything by name
    con.execute(f"SELECT count(*) FROM read_parquet('{glob(root)}', union_by_name = false)")


def test_a_write_cut_short_is_invisible_to_readers_of_the_directory(tmp_path: Path) -> None:
    """Spark, Hive and pyarrow read every file of a dataset directory except those named `.*`
    and `_*`. Before, a write cut short (a crash) left `part-….parquet.tmp`, half a Parquet
    file, beside the finished parts, and reading the directory failed until the service
    restarted and removed it; now the temporary file is hidden."""
    warehouse = Warehouse(tmp_path / "warehouse")
    good = row_at(1, "2026-05-01T10:00:00Z")
    warehouse.append([good], 1, 1)
    part = (
        warehouse.root
        / "date=2026-05-02"
        / "part-00000000000000000002-00000000000000000002.parquet"
    )
    part.parent.mkdir()

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half a file")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_atomically(part, crash)
    read = ds.dataset(warehouse.root, format="parquet", partitioning="hive").to_table()
    assert read["seq"].to_pylist() == [1]
    assert warehouse.recover() == 1 and sorted(p.name for p in part.parent.iterdir()) == []


def row_at(seq: int, when: str) -> dict[str, object]:
    data = orjson.dumps(event("page_viewed", time=when))
    parsed = row(seq, "activity.u-1.page_viewed", data)
    assert parsed is not None
    return parsed


async def test_a_warehouse_of_the_previous_version_reads_and_resumes(
    fresh: NATS, tmp_path: Path, history: list[bytes]
) -> None:
    """The previous version wrote the same `date=` directories and names; only its temporary
    files were visible. Such a warehouse (with a leftover `.tmp` from a crash) resumes: the
    leftover is removed and the rest is read as it is."""
    root = tmp_path / "warehouse"
    last = await fill(fresh, root, [orjson.loads(x) for x in history[:800]])
    some = Warehouse(root).files()[0]
    leftover = some.with_name(some.name.replace(".parquet", ".parquet.tmp"))
    leftover.write_bytes(b"PAR1 cut short")
    more = await Publisher(fresh).publish_events(
        [parse_event(orjson.loads(x)) for x in history[800:900]]
    )
    await run_until(WarehouseService(Bus(fresh), root, flush_seconds=0.1), more[-1].seq)
    assert not leftover.exists()
    con = duckdb.connect()
    seqs = con.execute(f"SELECT count(*), max(seq) FROM read_parquet('{glob(root)}')").fetchone()
    assert seqs == (sum((await activity_days(fresh)).values()), more[-1].seq)
    assert last < more[-1].seq

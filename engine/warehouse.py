"""The warehouse: ACTIVITY appended to Parquet files partitioned by day, exactly once.

Layout under `<data dir>/warehouse/activity/` (a Hive-partitioned Parquet dataset: DuckDB,
Spark, pyarrow and Polars read the directory as it is, with `date` as a partition column):

    date=2026-11-27/part-00000000000000012001-00000000000000014000.parquet
    _state.json      {"last_seq": 14000, "files": 12, ...}

`date` is the UTC day of the event's `time`; the files themselves hold the `SCHEMA` columns
only (no `date` column, as Hive partitioning expects), every file with exactly that schema
whatever its rows hold. Anything that is not a finished part is hidden from readers of the
directory: the state file starts with `_`, and a file being written is `.<name>.tmp` (dot
files and `_` files are skipped by Spark, pyarrow and Hive; a visible half-written file would
make `spark.read.parquet(dir)` fail). Versions before this one named it `<name>.tmp`; start-up
removes those too, and the rest of their layout is this one, so an older warehouse needs no
migration.

The state file is the only record of progress, kept beside the files it describes (no
server-side consumer: a warehouse restored from backup resumes from its own state, not from
what a consumer acknowledged). The service reads ACTIVITY through an ordered consumer from
`last_seq + 1`, gathers a chunk (`flush_events` events or `flush_seconds`), writes one file per
day the chunk touches (each file named by the chunk's sequence range, written to a hidden
temporary name, fsynced, renamed), and only then advances `last_seq` in the state file (again
write, fsync, rename). After a crash, files whose range starts beyond `last_seq` are deleted at
start-up and their events read again: no row is ever written twice and none is lost.

Each row is one event: its stream sequence, the envelope fields, the user token, `category`
and `value` lifted out of the properties (value = purchase value, rating, or simulated amount),
and the properties as JSON. Small chunks make small files; `nerve` does not compact them yet.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.bus.decode import Record, Refusal, decode
from nerve_client.subjects import ACTIVITY

log = logging.getLogger("nerve.warehouse")

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("time", pa.timestamp("ms", tz="UTC")),
        ("received_at", pa.timestamp("ms", tz="UTC")),
        ("type", pa.string()),
        ("schema_version", pa.int32()),
        ("user", pa.string()),
        ("user_id", pa.string()),
        ("anonymous_id", pa.string()),
        ("session_id", pa.string()),
        ("source", pa.string()),
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("value", pa.float64()),
        ("properties", pa.string()),
    ]
)
VALUE_FIELDS = ("value", "rating", "amount")
# The Hive partition column, in the directory names only (`date=2026-11-27`): UTC day of `time`.
PARTITION = pa.schema([("date", pa.date32())])


def _ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def row(seq: int, subject: str, data: bytes) -> dict[str, Any] | None:
    """The warehouse row of one stored event (None for system events and unreadable bytes)."""
    record = decode(ACTIVITY, seq, subject, data)
    if isinstance(record, Refusal) or record.system:
        return None
    return row_of(record)


def row_of(record: Record) -> dict[str, Any]:
    """The warehouse row of a decoded user event."""
    seq, e = record.seq, record.event
    raw_props = e.get("properties")
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    value = next((props[f] for f in VALUE_FIELDS if isinstance(props.get(f), int | float)), None)
    category = props.get("category")
    return {
        "seq": seq,
        "id": e.get("id"),
        "time": _ms(e.get("time")),
        "received_at": _ms(e.get("received_at")),
        "type": e.get("type"),
        "schema_version": e.get("schema_version"),
        "user": record.token,
        "user_id": e.get("user_id"),
        "anonymous_id": e.get("anonymous_id"),
        "session_id": e.get("session_id"),
        "source": e.get("source"),
        "item_id": e.get("item_id"),
        "category": category if isinstance(category, str) else None,
        "value": float(value) if value is not None else None,
        "properties": orjson.dumps(props).decode(),
    }


def table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then fsync and rename to `path`: a reader sees the whole file or none. The
    temporary name starts with a dot, so readers of the directory never pick it up."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


class Warehouse:
    """The files and the state of one warehouse directory."""

    def __init__(self, root: Path) -> None:
        self.root = root / "activity"
        self.state_path = self.root / "_state.json"

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return {"last_seq": 0, "files": 0, "rows": 0}

    def recover(self) -> int:
        """Delete files written after the last recorded sequence; returns how many."""
        last = self.state()["last_seq"]
        removed = 0
        for path in self.root.glob("date=*/.part-*.tmp"):  # a write a crash cut short
            path.unlink()
            removed += 1
        for path in self.root.glob("date=*/part-*.parquet*"):  # `.tmp`: an older version's
            first = int(path.name.split("-")[1].split(".")[0])
            if first > last or path.name.endswith(".tmp"):
                path.unlink()
                removed += 1
        return removed

    def append(self, rows: list[dict[str, Any]], first: int, last: int) -> None:
        """Write a chunk (the events with sequences first..last) and record it."""
        by_day: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            day = datetime.fromtimestamp((r["time"] or 0) / 1000, UTC).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(r)
        for day, part in by_day.items():
            folder = self.root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{first:020d}-{last:020d}.parquet"
            write_atomically(path, partial(pq.write_table, table(part)))
        state = self.state()
        state.update(
            last_seq=last,
            files=state["files"] + len(by_day),
            rows=state["rows"] + len(rows),
            updated_at=time.time(),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_path, lambda p: p.write_text(json.dumps(state)))

    def files(self) -> list[Path]:
        """The finished parts, oldest day first."""
        return sorted(self.root.glob("date=*/part-*.parquet"))

    def dataset(self) -> ds.Dataset:
        """The finished parts as one pyarrow dataset: the `SCHEMA` columns plus `date` from the
        directory names, so a filter on `date` skips whole days unread."""
        return ds.dataset(
            [str(f) for f in self.files()],
            schema=pa.unify_schemas([SCHEMA, PARTITION]),
            format="parquet",
            partitioning=ds.partitioning(PARTITION, flavor="hive"),
            partition_base_dir=str(self.root),
        )

    def erase(self, tokens: set[str]) -> int:
        """Rewrite every file holding rows of these users without them (`nerve forget`);
        returns how many rows were removed. The old file is replaced by rename, so no readable
        copy stays in the warehouse directory."""
        import pyarrow.compute as pc

        removed = 0
        for path in self.files():
            tbl = pq.read_table(path)
            keep = pc.invert(pc.is_in(tbl["user"], value_set=pa.array(sorted(tokens))))
            kept = tbl.filter(keep)
            if kept.num_rows == tbl.num_rows:
                continue
            removed += tbl.num_rows - kept.num_rows
            write_atomically(path, partial(pq.write_table, kept))
        return removed

"""History as a pandas DataFrame, from the warehouse's Parquet files or straight from the log.

One row per event, with the columns of `engine.warehouse.SCHEMA`: `seq` (ACTIVITY sequence),
`id`, `time` and `received_at` (UTC), `type`, `schema_version`, `user` (the subject token: one
id per person, anonymous visitors included), `user_id`, `anonymous_id`, `session_id`, `source`,
`item_id`, `category`, `value` (purchase value, rating or simulated amount) and `properties`
(JSON). Rows are sorted by `seq`.

Reading the stream needs no warehouse (a fresh install); reading the warehouse needs no broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from engine.bus import Bus
from engine.bus.consumer import Batch
from engine.settings import BrokerSettings
from engine.warehouse import SCHEMA, row, table
from nerve_client.subjects import ACTIVITY
from training.remote import on_bus, settings_of


def _utc(value: str | datetime | None) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def load_history(
    source: Literal["warehouse", "stream"] = "warehouse",
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    types: Sequence[str] | None = None,
    *,
    data_dir: Path | str | None = None,
    nats_url: str | None = None,
    broker: BrokerSettings | None = None,
) -> pd.DataFrame:
    """The stored history between `since` (inclusive) and `until` (exclusive), of `types`.

    `source="stream"` reads ACTIVITY through `nats_url` (or the embedded broker of `data_dir`),
    or with `broker`'s settings (credential, TLS) when given.
    """
    start, end = _utc(since), _utc(until)
    settings = settings_of(nats_url, data_dir, broker)
    if source == "warehouse":
        tbl = _from_warehouse(settings.data_dir / "warehouse" / "activity", start, end, types)
    elif source == "stream":
        tbl = _from_stream(settings, start, end, types)
    else:
        raise ValueError(f"source must be 'warehouse' or 'stream', not {source!r}")
    frame = tbl.to_pandas()
    return frame.sort_values("seq", ignore_index=True)


def _filters(start: Any, end: Any, types: Sequence[str] | None) -> Any:
    expr = None
    parts = []
    if start is not None:
        parts.append(
            ds.field("time") >= pa.scalar(start.to_pydatetime(), pa.timestamp("ms", "UTC"))
        )
    if end is not None:
        parts.append(ds.field("time") < pa.scalar(end.to_pydatetime(), pa.timestamp("ms", "UTC")))
    if types:
        parts.append(ds.field("type").isin(list(types)))
    for p in parts:
        expr = p if expr is None else expr & p
    return expr


def _from_warehouse(root: Path, start: Any, end: Any, types: Sequence[str] | None) -> pa.Table:
    files = sorted(root.glob("date=*/part-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    return dataset.to_table(filter=_filters(start, end, types))


async def read_stream(bus: Bus) -> pa.Table:
    """Every event of ACTIVITY as a table with the warehouse's columns, read through `bus`."""
    rows: list[dict[str, Any]] = []

    def handle(batch: Batch) -> None:
        rows.extend(r for seq, subject, data in batch if (r := row(seq, subject, data)))

    await bus.scan(ACTIVITY, handle)
    return table(rows)


def _from_stream(
    settings: BrokerSettings, start: Any, end: Any, types: Sequence[str] | None
) -> pa.Table:
    tbl = on_bus(settings, "nerve-history", read_stream)
    expr = _filters(start, end, types)
    return tbl if expr is None else ds.dataset(tbl).to_table(filter=expr)

"""History as a pandas DataFrame, from the warehouse's Parquet files or straight from the log.

One row per event, with the columns of `engine.warehouse.SCHEMA`: `seq` (ACTIVITY sequence),
`id`, `time` and `received_at` (UTC), `type`, `schema_version`, `user` (the subject token: one
id per person, anonymous visitors included), `user_id`, `anonymous_id`, `session_id`, `source`,
`item_id`, `category`, `value` (purchase value, rating or simulated amount) and `properties`
(JSON). Rows are sorted by `seq`.

Reading the stream needs no warehouse (a fresh install); reading the warehouse needs no broker.
`read_interactions` reads an interactions file (CSV) column-wise, for `nerve recommend-batch`
and benchmarks on outside data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from engine.bus import Bus
from engine.bus.consumer import Batch
from engine.importer import ALIASES, InteractionReader
from engine.settings import BrokerSettings
from engine.warehouse import SCHEMA, Warehouse, row, table
from models.data import Interactions
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
        tbl = _from_warehouse(settings.data_dir / "warehouse", start, end, types)
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


def _days(start: Any, end: Any) -> Any:
    """The partitions (`date=` directories) that can hold events in [start, end)."""
    parts = []
    if start is not None:
        parts.append(ds.field("date") >= pa.scalar(start.date(), pa.date32()))
    if end is not None:
        parts.append(ds.field("date") <= pa.scalar(end.date(), pa.date32()))
    return parts


def _from_warehouse(root: Path, start: Any, end: Any, types: Sequence[str] | None) -> pa.Table:
    warehouse = Warehouse(root)
    if not warehouse.files():
        return SCHEMA.empty_table()
    expr = _filters(start, end, types)
    for day in _days(start, end):  # prunes whole days; `time` still decides within one
        expr = day if expr is None else expr & day
    return warehouse.dataset().to_table(columns=SCHEMA.names, filter=expr)


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


@dataclass(frozen=True)
class FileHistory:
    """An interactions file read by `read_interactions`: the rows it could read, as a frame
    (`seq` = order in the file, `time` UTC, `type`, `user`, `item_id`, `value`: the rating of
    an `item_rated`, the value of an `item_purchased`), and how many rows it could not."""

    frame: pd.DataFrame
    rejected: int

    def interactions(self) -> Interactions:
        """The user x item matrix `nerve recommend-batch` fits on: a rated row weighs its
        rating, any other row 1."""
        f = self.frame
        rated = (f["type"] == "item_rated").to_numpy() & f["value"].notna().to_numpy()
        weights = np.where(rated, f["value"].to_numpy(dtype="float64", na_value=np.nan), 1.0)
        return Interactions.from_triples(f["user"], f["item_id"], weights)


def read_interactions(
    path: Path, columns: tuple[str, ...] | None = None, default_type: str | None = None
) -> FileHistory:
    """An interactions file (`nerve import --format interactions`: the columns, delimiter,
    header, time and type rules of `engine.importer.InteractionReader`) read column-wise by
    pyarrow's CSV reader, ids dictionary-encoded (pandas categoricals), nothing row by row.
    Rows the importer would refuse (no user or item, a bad time or rating, another number of
    cells than the first line) are counted in `rejected`. `ValueError` if the first line names
    no usable columns."""
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    reader = InteractionReader(first, columns, default_type)
    width = len(reader.split(first))
    names = [*reader.columns[:width], *(f"_ignored{i}" for i in range(len(reader.columns), width))]
    bad = [0]

    def invalid(_: Any) -> str:
        bad[0] += 1
        return "skip"

    tbl = _csv(path, reader.delimiter, names, reader.has_header, invalid)
    frame, refused = _typed(tbl, reader.default_type)
    return FileHistory(frame, bad[0] + refused)


IDS = ("user_id", "item_id")  # read as dictionaries: a million rows, a few thousand distinct


def _csv(path: Path, delimiter: str, names: list[str], header: bool, invalid: Any) -> pa.Table:
    """Every cell as a string (ids dictionary-encoded), one chunk; `::` (MovieLens-1M) and
    invalid UTF-8 through one rewrite of the bytes."""
    # one thread: on a shared 2-core box it costs no wall time and saves ~30 MB of per-thread heaps
    read = pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0, use_threads=False)
    parse = pacsv.ParseOptions(
        delimiter="\x1f" if delimiter == "::" else delimiter,
        quote_char='"' if delimiter == "," else False,  # as the importer: quotes only in CSV
        invalid_row_handler=invalid,
    )
    kinds = {n: pa.dictionary(pa.int32(), pa.string()) if n in IDS else pa.string() for n in names}
    convert = pacsv.ConvertOptions(column_types=kinds, strings_can_be_null=False)
    source: Any = str(path)
    if delimiter == "::":
        source = pa.BufferReader(path.read_bytes().replace(b"::", b"\x1f"))
    try:
        tbl = pacsv.read_csv(source, read, parse, convert)
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc).upper():
            raise
        raw = path.read_bytes().decode("utf-8", "replace").encode()
        raw = raw.replace(b"::", b"\x1f") if delimiter == "::" else raw
        tbl = pacsv.read_csv(pa.BufferReader(raw), read, parse, convert)
    return tbl.unify_dictionaries()


NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last time Python's datetime holds
TYPES = pa.array(["item_rated", "item_purchased", "item_viewed"])  # derived without a type


def _np(a: Any) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False))


def _trimmed(cells: Any) -> Any:
    """The strings without surrounding blanks (copied only when some have them)."""
    if pc.any(pc.match_substring_regex(cells, r"^\s|\s$")).as_py():
        return pc.utf8_trim_whitespace(cells)
    return cells


def _number(cells: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each cell as a float (NaN where it is not a number), and where it is one."""
    ok = pc.match_substring_regex(cells, NUMBER)
    if not pc.all(ok).as_py():
        cells = pc.if_else(ok, cells, pa.scalar(None, pa.string()))
    return _np(pc.cast(cells, pa.float64())).astype(np.float64), _np(ok)


def _times(cells: Any) -> np.ndarray:
    """Unix seconds (milliseconds above 10^12) or ISO 8601 (naive: UTC) as epoch ms; NaN for
    what is neither."""
    num, numeric = _number(cells)
    num = np.where(num > 1e12, num / 1000.0, num)
    ms = np.where(np.abs(num) <= LAST_SECOND, np.floor(num * 1000.0), np.nan)
    iso = ~numeric & _np(pc.not_equal(cells, ""))
    if iso.any():
        text = pd.Series(cells.filter(pa.array(iso)).to_pylist(), dtype="str")
        when = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        ms[iso] = when.dt.as_unit("ms").astype("int64").where(when.notna()).to_numpy(np.float64)
    return ms


def _ids(cells: pa.DictionaryArray) -> tuple[pa.DictionaryArray, np.ndarray]:
    """Ids without surrounding blanks, and which rows have one (work on the dictionary)."""
    words = _trimmed(cells.dictionary)
    if len(words) != len(pc.unique(words)):  # " a" and "a": one id once trimmed
        cells = pc.dictionary_encode(pc.take(words, cells.indices))
        words = cells.dictionary
    else:
        cells = pa.DictionaryArray.from_arrays(cells.indices, words)
    return cells, _np(pc.not_equal(words, ""))[_np(cells.indices)]


def _typed(tbl: pa.Table, default_type: str | None) -> tuple[pd.DataFrame, int]:
    """The frame of the rows the importer would accept, and how many it would refuse."""
    n = tbl.num_rows
    text = {
        c: _trimmed(tbl[c].combine_chunks())
        for c in tbl.column_names
        if c in ALIASES and c not in IDS
    }
    has = {c: _np(pc.not_equal(a, "")) for c, a in text.items()}
    none = np.zeros(n, dtype=bool)
    rating, rating_ok = _number(text["rating"]) if "rating" in text else (none, none)
    value, value_ok = _number(text["value"]) if "value" in text else (none, none)
    has_rating, has_value = has.get("rating", none), has.get("value", none)
    if default_type is None:  # as the importer: rated if a rating, bought if a value, else viewed
        code = np.where(has_rating, 0, np.where(has_value, 1, 2)).astype(np.int8)
        etype: Any = pa.DictionaryArray.from_arrays(pa.array(code), TYPES)
    else:
        etype = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), [default_type])
    if "type" in text:
        etype = pc.if_else(has["type"], text["type"], etype.cast(pa.string())).dictionary_encode()
    codes = _np(etype.indices)
    is_rated = _np(pc.equal(etype.dictionary, "item_rated"))[codes]
    is_bought = _np(pc.equal(etype.dictionary, "item_purchased"))[codes]
    uses_rating, uses_value = is_rated & has_rating, is_bought & has_value
    ms = _times(text["timestamp"])
    users, has_user = _ids(tbl["user_id"].combine_chunks())
    items, has_item = _ids(tbl["item_id"].combine_chunks())
    keep = ~np.isnan(ms) & has_user & has_item & (rating_ok | ~uses_rating)
    keep &= value_ok | ~uses_value
    amount = np.where(uses_rating, rating, np.where(uses_value, value, np.nan))
    mask = pa.array(keep)
    frame = pa.table(
        {
            "seq": pa.array(np.flatnonzero(keep) + 1),
            "time": pa.array(ms[keep].astype(np.int64), pa.timestamp("ms", "UTC")),
            "type": etype.filter(mask),
            "user": users.filter(mask),
            "item_id": items.filter(mask),
            "value": pa.array(amount[keep], pa.float64(), from_pandas=True),
        }
    )
    return frame.to_pandas(), int(n - keep.sum())

"""Bulk import of history files into the log, resumable and idempotent.

Two formats:

* `jsonl` — one event envelope per line. A line without `id` gets one derived from its bytes
  (the same line always gets the same id); a line without `source` gets `import`.
* `interactions` — CSV-like rows `user_id,item_id,timestamp[,rating|value][,type]`. A header
  row is recognised by its names (`userId`, `movieId`, `item`, `ts`, `score`, `amount`, … are
  understood); without one, `columns` gives the order, and a headerless 4-column file whose
  third column looks like a rating and fourth like a Unix time (MovieLens `u.data`) is read as
  user, item, rating, timestamp. The delimiter is found from the first line (`,` `\\t` `;` `|`
  or MovieLens-1M's `::`). Timestamps are Unix seconds (milliseconds when > 10^12) or ISO 8601
  (naive means UTC). The event type is the `type` column, else `default_type`, else
  `item_rated` when a rating is present, `item_purchased` when a value is, `item_viewed`
  otherwise. A rating is kept only on `item_rated`, a value only on `item_purchased`. Each row's
  id is derived from its content, so the same row always gets the same id.

Idempotence has two layers. Within the stream's duplicate window a re-sent id is stored once.
Beyond it, a checkpoint per file (keyed by the SHA-256 of its bytes, kept in the `imports`
bucket) records the last line whose publish was acknowledged: a re-run of a finished file
publishes nothing, an interrupted one resumes after the checkpoint.

Rejected lines go to DEADLETTER (`dlq.import`) with the reason, `file:line` and the raw bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from engine.bus import Ack, KeyValueStore, Outgoing, Publisher
from nerve_client.errors import EventRejected, FieldError
from nerve_client.events import OUTPUT_TYPES, DeadLetter, parse_event
from nerve_client.ids import derived_uuid7

Format = Literal["jsonl", "interactions"]
ALIASES = {
    "user_id": ("user_id", "userid", "user", "customer_id", "visitor_id"),
    "item_id": ("item_id", "itemid", "item", "movieid", "movie_id", "product_id", "productid"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "event_time"),
    "rating": ("rating", "score", "stars"),
    "value": ("value", "amount", "price", "revenue"),
    "type": ("type", "event", "event_type", "action"),
}
_NAME_OF = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
DEFAULT_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "type")


class Checkpoint(BaseModel):
    """Progress of one file's import, stored in the `imports` bucket under its hash."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    sha256: str
    name: str
    format: str
    line: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    complete: bool = False
    updated_at: datetime


@dataclass
class ImportSummary:
    """What an import did. `resumed_from` > 0 when an earlier run had already applied lines."""

    name: str
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    resumed_from: int = 0
    already_complete: bool = False
    seconds: float = 0.0
    first_reasons: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.lines - self.resumed_from) / self.seconds if self.seconds else 0.0


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _parse_time(raw: str) -> datetime:
    raw = raw.strip()
    try:
        num = float(raw)
    except ValueError:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if num > 1e12:
        num /= 1000.0
    return datetime.fromtimestamp(num, UTC)


class InteractionReader:
    """Turns rows of an interactions file into event dicts (or raises `EventRejected`)."""

    def __init__(
        self, first_line: str, columns: tuple[str, ...] | None, default_type: str | None
    ) -> None:
        self.delimiter = next((d for d in ("::", "\t", ",", ";", "|") if d in first_line), ",")
        cells = self.split(first_line)
        named = [_NAME_OF.get(c.strip().lower().replace(" ", "_")) for c in cells]
        self.has_header = "user_id" in named and "item_id" in named
        if self.has_header:
            self.columns = tuple(n or f"_ignored{i}" for i, n in enumerate(named))
        elif columns:
            self.columns = columns
        elif len(cells) >= 4 and _looks_like_rating_then_time(cells):
            self.columns = ("user_id", "item_id", "rating", "timestamp", "type")[: len(cells)]
        else:
            self.columns = DEFAULT_COLUMNS[: len(cells)]
        unknown = set(self.columns) - set(ALIASES) - {c for c in self.columns if "_ignored" in c}
        if unknown or "user_id" not in self.columns or "timestamp" not in self.columns:
            raise ValueError(f"cannot read columns {self.columns}: need user_id,item_id,timestamp")
        self.default_type = default_type

    def split(self, line: str) -> list[str]:
        if self.delimiter == ",":
            return next(csv.reader([line]))
        return line.split(self.delimiter)

    def event(self, line: str) -> dict[str, Any]:
        cells = self.split(line)
        if len(cells) < 3:
            raise EventRejected([FieldError("", f"{len(cells)} columns, need at least 3")])
        row = {c: v.strip() for c, v in zip(self.columns, cells, strict=False) if v.strip()}
        try:
            when = _parse_time(row.get("timestamp", ""))
        except (ValueError, OverflowError, OSError):
            raise EventRejected(
                [FieldError("timestamp", f"not a Unix time or ISO 8601: {row.get('timestamp')!r}")]
            ) from None
        etype = row.get("type") or self.default_type
        if etype is None:
            etype = (
                "item_rated"
                if "rating" in row
                else "item_purchased"
                if "value" in row
                else ("item_viewed")
            )
        props: dict[str, Any] = {}
        try:
            if etype == "item_rated" and "rating" in row:
                props["rating"] = float(row["rating"])
            if etype == "item_purchased" and "value" in row:
                props["value"] = float(row["value"])
        except ValueError as exc:
            raise EventRejected(
                [FieldError("rating" if "rating" in row else "value", str(exc))]
            ) from None
        ms = int(when.timestamp() * 1000)
        return {
            "id": derived_uuid7(ms, "interactions", line),
            "type": etype,
            "time": when.isoformat(),
            "user_id": row.get("user_id"),
            "item_id": row.get("item_id"),
            "source": "import",
            "properties": props,
        }


def _looks_like_rating_then_time(cells: list[str]) -> bool:
    try:
        return float(cells[2]) <= 10 and float(cells[3]) > 1e8
    except ValueError:
        return False


def _jsonl_event(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventRejected([FieldError("", f"not valid JSON: {exc}")]) from None
    if isinstance(data, dict):
        if "id" not in data:
            ms = 0  # a bad time is refused by validation below; the id just needs to be stable
            with contextlib.suppress(ValueError, TypeError, OverflowError, OSError):
                ms = int(_parse_time(str(data.get("time"))).timestamp() * 1000)
            data["id"] = derived_uuid7(ms, "jsonl", raw.decode(errors="replace"))
        data.setdefault("source", "import")
    return data


def _lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if number > start:
                yield number, raw


def _event(line: bytes, reader: InteractionReader | None, now: datetime) -> Outgoing:
    """The line as a message to store, or `EventRejected` / `UnicodeDecodeError`."""
    data = reader.event(line.decode()) if reader else _jsonl_event(line)
    event = parse_event(data, now=now)
    if event.type in OUTPUT_TYPES:
        raise EventRejected([FieldError("type", f"{event.type} is produced by Nerve itself")])
    return Outgoing.event(event)


def _rejected(
    exc: EventRejected | UnicodeDecodeError, line: bytes, origin: str, now: datetime
) -> tuple[list[FieldError], Outgoing]:
    """Why a line was refused, and its DEADLETTER record."""
    errors = exc.errors if isinstance(exc, EventRejected) else [FieldError("", f"not UTF-8: {exc}")]
    record = DeadLetter.build("import", line, errors, now, origin)
    return errors, Outgoing.deadletter(record)


class _InFlight:
    """Chunks submitted but not yet acknowledged, oldest first. Settling the oldest advances the
    checkpoint to its last line, so a checkpoint never covers a line whose publish may be lost."""

    def __init__(
        self, publisher: Publisher, checkpoints: KeyValueStore, key: str, cp: Checkpoint
    ) -> None:
        self.publisher, self.checkpoints, self.key, self.cp = publisher, checkpoints, key, cp
        self.pending: deque[tuple[int, list[Outgoing], int, list[asyncio.Future[Ack]]]] = deque()

    def __len__(self) -> int:
        return len(self.pending)

    async def submit(self, last_line: int, events: list[Outgoing], dead: list[Outgoing]) -> None:
        msgs = events + dead
        self.pending.append((last_line, msgs, len(events), await self.publisher.submit(msgs)))

    async def settle_oldest(self) -> None:
        last_line, msgs, n_events, futures = self.pending.popleft()
        acks = await self.publisher.settle(msgs, futures)
        dups = sum(1 for a in acks[:n_events] if a.duplicate)
        cp = self.cp
        cp.accepted += n_events - dups
        cp.duplicates += dups
        cp.rejected += len(msgs) - n_events
        cp.line = last_line
        cp.updated_at = datetime.now(UTC)
        await self.checkpoints.put(self.key, cp.model_dump_json().encode())

    async def settle_all(self) -> None:
        while self.pending:
            await self.settle_oldest()


async def _checkpoint(
    checkpoints: KeyValueStore, key: str, sha: str, name: str, fmt: Format, now: datetime
) -> Checkpoint:
    stored = await checkpoints.get(key)
    if stored:
        return Checkpoint.model_validate_json(stored)
    return Checkpoint(sha256=sha, name=name, format=fmt, updated_at=now)


def _counts(summary: ImportSummary, cp: Checkpoint) -> None:
    summary.accepted, summary.duplicates, summary.rejected = cp.accepted, cp.duplicates, cp.rejected


async def import_file(
    path: Path,
    publisher: Publisher,
    checkpoints: KeyValueStore,
    *,
    fmt: Format = "jsonl",
    columns: tuple[str, ...] | None = None,
    default_type: str | None = None,
    chunk: int = 2000,
    in_flight: int = 4,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import `path` into the log; see the module docstring for formats and idempotence.

    `progress` is called with the number of bytes consumed since the previous call.
    """
    sha = file_sha256(path)
    key = f"{fmt}.{sha}"
    now = datetime.now(UTC)
    cp = await _checkpoint(checkpoints, key, sha, path.name, fmt, now)
    summary = ImportSummary(name=path.name, lines=cp.line, resumed_from=cp.line)
    _counts(summary, cp)
    if cp.complete:
        summary.already_complete = True
        return summary
    reader: InteractionReader | None = None
    if fmt == "interactions":
        with path.open(encoding="utf-8", errors="replace") as f:
            reader = InteractionReader(f.readline().rstrip("\r\n"), columns, default_type)
    started = time.perf_counter()
    batches = _InFlight(publisher, checkpoints, key, cp)
    events: list[Outgoing] = []
    dead: list[Outgoing] = []
    last, consumed = cp.line, 0
    for number, raw in _lines(path, cp.line):
        last = number
        consumed += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line.strip() or (reader and reader.has_header and number == 1):
            continue
        try:
            events.append(_event(line, reader, now))
        except (EventRejected, UnicodeDecodeError) as exc:
            errors, record = _rejected(exc, line, f"{path.name}:{number}", now)
            if len(summary.first_reasons) < 5:
                summary.first_reasons.append(f"line {number}: " + "; ".join(map(str, errors)))
            dead.append(record)
        if len(events) + len(dead) >= chunk:
            await batches.submit(last, events, dead)
            events, dead = [], []
            if progress:
                progress(consumed)
                consumed = 0
            if len(batches) >= in_flight:
                await batches.settle_oldest()
    await batches.submit(last, events, dead)
    await batches.settle_all()
    if progress:
        progress(consumed)
    cp.complete = True
    await checkpoints.put(key, cp.model_dump_json().encode())
    summary.lines = last
    _counts(summary, cp)
    summary.seconds = time.perf_counter() - started
    return summary

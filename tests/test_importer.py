import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.bus.reader import read_all
from engine.importer import Checkpoint, file_sha256, import_file
from engine.settings import StreamSettings
from nerve_client.events import DeadLetter
from tests.conftest import count, event, stored, write_lines


async def run_import(nc: NATS, path: Path, **kw: object):  # type: ignore[no-untyped-def]
    bus = Bus(nc)
    return await import_file(path, bus.publisher, await bus.kv("imports"), **kw)  # type: ignore[arg-type]


def jsonl(tmp_path: Path, n: int, bad_every: int = 0) -> Path:
    lines = []
    for i in range(n):
        if bad_every and i % bad_every == 1:
            lines.append('{"type": "page_viewed", "time": "nope"}' if i % 2 else "{broken")
        else:
            lines.append(orjson.dumps(event("item_viewed", user_id=f"u{i % 13}")).decode())
    return write_lines(tmp_path / "history.jsonl", lines)


async def test_jsonl_import_stores_every_valid_line_and_dead_letters_the_rest(
    fresh: NATS, tmp_path: Path
) -> None:
    path = jsonl(tmp_path, 1000, bad_every=50)
    summary = await run_import(fresh, path, chunk=128)
    assert (summary.lines, summary.accepted, summary.rejected) == (1000, 980, 20)
    assert await count(fresh, "ACTIVITY") == 980
    assert await count(fresh, "DEADLETTER") == 20
    records = [
        DeadLetter.model_validate_json(d)
        for _, _, d in await read_all(fresh.jetstream(), "DEADLETTER")
    ]
    assert records[0].origin == "history.jsonl:2" and records[0].source == "import"
    assert records[0].raw == path.read_bytes().splitlines()[1]
    assert len(summary.first_reasons) == 5 and summary.first_reasons[0].startswith("line 2:")


async def test_reimport_publishes_nothing_even_after_the_duplicate_window(
    fresh: NATS, tmp_path: Path
) -> None:
    await Bus(fresh).provision(StreamSettings(duplicate_window_s=1))
    path = jsonl(tmp_path, 300)
    await run_import(fresh, path)
    await asyncio.sleep(1.2)  # the stream would now store a re-sent id again
    again = await run_import(fresh, path)
    assert again.already_complete
    assert await count(fresh, "ACTIVITY") == 300


async def test_an_interrupted_import_resumes_after_its_checkpoint(
    fresh: NATS, tmp_path: Path
) -> None:
    path = jsonl(tmp_path, 500)
    sha = file_sha256(path)
    kv = await Bus(fresh).kv("imports")
    # What a run killed after acknowledging 200 lines leaves behind.
    cp = Checkpoint(
        sha256=sha,
        name=path.name,
        format="jsonl",
        line=200,
        accepted=200,
        updated_at=datetime.now(UTC),
    )
    await kv.put(f"jsonl.{sha}", cp.model_dump_json().encode())
    summary = await run_import(fresh, path)
    assert summary.resumed_from == 200
    assert summary.accepted == 500
    assert await count(fresh, "ACTIVITY") == 300
    expected = [orjson.loads(line)["id"] for line in path.read_text().splitlines()[200:]]
    assert [e.id for e in await stored(fresh)] == expected


async def test_lines_without_ids_get_stable_ids_so_a_copy_of_the_file_dedupes(
    fresh: NATS, tmp_path: Path
) -> None:
    lines = []
    for i in range(100):
        e = event(user_id=f"u{i}")
        del e["id"]
        lines.append(orjson.dumps(e).decode())
    a = write_lines(tmp_path / "a.jsonl", lines)
    b = write_lines(tmp_path / "b.jsonl", [*lines, ""])  # another file: another hash
    await run_import(fresh, a)
    second = await run_import(fresh, b)
    assert second.duplicates == 100 and second.accepted == 0
    assert await count(fresh, "ACTIVITY") == 100


async def test_interactions_csv_with_bad_rows(fresh: NATS, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "1,31,2.5,1260759144",
            "1,1029,3.0,1260759179",
            "2,10,4.0,not-a-time",
            "3,17,11,1260759200",
            "4,,3.5,1260759300",
            "5,39,5.0,2009-12-14T02:52:24Z",
        ],
    )
    summary = await run_import(fresh, path, fmt="interactions")
    assert (summary.accepted, summary.rejected) == (3, 3)
    events = await stored(fresh)
    assert [e.type for e in events] == ["item_rated"] * 3
    assert events[0].user_id == "1" and events[0].item_id == "31"
    assert events[0].properties.rating == 2.5  # type: ignore[attr-defined]
    assert events[0].time == datetime.fromtimestamp(1260759144, UTC)
    assert await count(fresh, "DEADLETTER") == 3
    assert any("timestamp" in r for r in summary.first_reasons)
    assert any("item_id" in r for r in summary.first_reasons)


@pytest.mark.parametrize(
    ("lines", "kw"),
    [
        (["196\t242\t3\t881250949", "186\t302\t3\t891717742"], {}),  # MovieLens u.data
        (["196::242::3::881250949", "186::302::3::891717742"], {}),  # MovieLens-1M
        (["242,196,881250949,3"], {"columns": ("item_id", "user_id", "timestamp", "rating")}),
    ],
)
async def test_headerless_movielens_style_files_are_understood(
    fresh: NATS, tmp_path: Path, lines: list[str], kw: dict[str, object]
) -> None:
    path = write_lines(tmp_path / "u.data", lines)
    summary = await run_import(fresh, path, fmt="interactions", **kw)
    assert summary.rejected == 0 and summary.accepted == len(lines)
    first = (await stored(fresh))[0]
    assert (first.user_id, first.item_id, first.type) == ("196", "242", "item_rated")
    assert first.time == datetime.fromtimestamp(881250949, UTC)


async def test_purchases_with_values_and_typed_rows(fresh: NATS, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "orders.csv",
        [
            "user_id,item_id,timestamp,value,type",
            "c1,fund-esg,1700000000,250.5,item_purchased",
            "c1,fund-esg,1700000100,,item_viewed",
        ],
    )
    summary = await run_import(fresh, path, fmt="interactions")
    assert summary.accepted == 2
    events = await stored(fresh)
    assert events[0].properties.value == 250.5  # type: ignore[attr-defined]
    assert events[1].type == "item_viewed"

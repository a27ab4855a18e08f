"""Interactions files read column-wise (`training.read_interactions`) and matrices built from
codes (`Interactions.from_frame` / `from_triples`): the same result as the row-by-row reader,
in memory near the data's size."""

from __future__ import annotations

import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.importer import InteractionReader
from models import Interactions
from nerve_client.errors import EventRejected
from training.history import read_interactions

FILES = {
    "header.csv": [
        "userId,movieId,rating,timestamp",
        "u1,m1,4.5,1500000000",
        ' u2 ,"m,2",3,1500000100',  # blanks around an id, a quoted comma
        "u1,m1,1,1500000200",  # repeated: weights add up
        "u3,m3,,2017-07-14T02:40:00Z",  # no rating: item_viewed, weight 1
        "u3,m2,2,1500000000000",  # milliseconds
        "u4,m9,x,1500000000",  # a rating that is not a number: refused
        "u4,m9,5,yesterday",  # a time that is neither: refused
        "u5,m5",  # two cells: refused
        "",
        "u6,m1,5,2017-07-14 02:40:00",  # naive ISO: UTC
    ],
    "u.data": ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "196\t302\t1\t891717742"],
    "ratings.dat": ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"],
    "typed.csv": [
        "user,item,ts,type,value",
        "a,i1,1500000000,item_purchased,99.5",
        "a,i2,1500000000,item_viewed,",
        "b,i1,1500000000,,",
        "b,i2,1500000000,item_rated,",
    ],
}


def by_rows(path: Path) -> tuple[dict[tuple[str, str], float], int]:
    """What `nerve recommend-batch` did before: one `InteractionReader.event` per line; the
    summed weight of each (user, item) and the number of unreadable rows."""
    with path.open(encoding="utf-8") as f:
        first = f.readline().rstrip("\r\n")
        reader = InteractionReader(first, None, None)
        lines = ([] if reader.has_header else [first]) + [x.rstrip("\r\n") for x in f]
    sums: dict[tuple[str, str], float] = defaultdict(float)
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = reader.event(line)
        except EventRejected:
            bad += 1
            continue
        key = (str(event["user_id"]), str(event["item_id"]))
        sums[key] += float(event["properties"].get("rating", 1.0))
    return dict(sums), bad


def cells(data: Interactions) -> dict[tuple[str, str], float]:
    coo = data.matrix.tocoo()
    return {
        (str(data.users[r]), str(data.items[c])): float(v)
        for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)
    }


@pytest.mark.parametrize("name", sorted(FILES))
def test_reading_by_columns_gives_what_the_row_by_row_reader_gives(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_text("\n".join(FILES[name]) + "\n")
    want, bad = by_rows(path)
    read = read_interactions(path)
    data = read.interactions()
    assert cells(data) == pytest.approx(want) and read.rejected == bad
    assert list(data.users) == sorted({u for u, _ in want})  # rows and columns sorted by id
    assert list(data.items) == sorted({i for _, i in want})
    frame = read.frame
    assert str(frame["time"].dtype) == "datetime64[ms, UTC]"
    assert isinstance(frame["user"].dtype, pd.CategoricalDtype)


def test_times_types_and_values_are_the_importers(tmp_path: Path) -> None:
    path = tmp_path / "typed.csv"
    path.write_text("\n".join(FILES["typed.csv"] + ["c,,1500000000,,"]) + "\n")
    frame = read_interactions(path).frame
    assert list(frame["type"].astype(str)) == [
        "item_purchased",
        "item_viewed",
        "item_viewed",
        "item_rated",
    ]
    assert frame["value"].iloc[0] == 99.5 and frame["value"].iloc[1:].isna().all()
    assert read_interactions(path).rejected == 1  # a row without an item is not "None"
    header = tmp_path / "h.csv"
    header.write_text("\n".join(FILES["header.csv"]) + "\n")
    times = read_interactions(header).frame["time"]
    assert times.iloc[3] == pd.Timestamp("2017-07-14T02:40:00Z")
    assert times.iloc[4] == pd.Timestamp(1_500_000_000, unit="s", tz="UTC")
    assert times.iloc[-1] == pd.Timestamp("2017-07-14T02:40:00Z")


def synthetic(rows: int, seed: int = 3) -> pd.DataFrame:
    """A warehouse-shaped frame as `load_history` returns it (string columns)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user": pd.Series([f"c-{u:08d}" for u in rng.integers(0, 8000, rows)], dtype="str"),
            "item_id": pd.Series(
                [f"item-{i:05d}" for i in np.minimum(rng.zipf(1.3, rows), 6000)], dtype="str"
            ),
            "type": pd.Series(rng.choice(["item_viewed", "item_purchased"], rows), dtype="str"),
            "value": rng.random(rows),
        }
    )


def traced_peak(work: object) -> int:
    tracemalloc.start()
    try:
        assert callable(work)
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_200k_row_matrix_is_built_in_memory_near_the_data_size() -> None:
    """The data: per row two codes and a weight, 24 bytes. Before, `from_triples` made a Python
    string per id, object arrays and fixed-width unicode copies to sort: ~8.6x the data (41 MiB
    for 200,000 rows); from codes it is ~2.6x."""
    rows = 200_000
    frame = synthetic(rows)
    data_bytes = rows * 24
    assert traced_peak(lambda: Interactions.from_frame(frame)) < 4 * data_bytes
    assert traced_peak(lambda: Interactions.from_triples(frame["user"], frame["item_id"])) < (
        4 * data_bytes
    )


def test_a_200k_row_file_is_read_in_memory_near_the_data_size(tmp_path: Path) -> None:
    rows = 200_000
    frame = synthetic(rows)
    path = tmp_path / "big.csv"
    ts = 1_500_000_000 + np.arange(rows)
    pd.DataFrame({"user_id": frame["user"], "item_id": frame["item_id"], "ts": ts}).to_csv(
        path, index=False
    )
    got: list[Interactions] = []
    peak = traced_peak(lambda: got.append(read_interactions(path).interactions()))
    assert peak < 4 * rows * 24
    assert got[0].matrix.sum() == rows  # every row read, weight 1

"""Training, publishing and rolling back through the registry; the batch plug-in contract."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.sparse as sp
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.bus.registry import UnknownModel
from engine.synth import generate
from models.base import Recommender, pack, unpack
from nerve_client.events import parse_event
from tests.conftest import stored
from training.history import load_history
from training.train import train, write


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("train") / "h.jsonl"
    generate(path, users=800, days=20, seed=9, end=datetime(2026, 6, 1, tzinfo=UTC))
    return path.read_bytes().splitlines()


async def test_train_publish_activate_and_roll_back(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await Bus(fresh).publish_events([parse_event(orjson.loads(x)) for x in lines])
    frame = load_history("stream", nats_url=nats_url)
    first = train(frame, "itemknn", curve=False)
    second = train(frame, "ease", {"l2": 50.0})
    assert second.card["metrics"]["ease"]["ndcg@10"] > second.card["metrics"]["popular"]["ndcg@10"]
    assert second.card["data"]["seq_from"] == 1 and second.card["data"]["seq_to"] == len(lines)
    sizes = [events for events, _ in second.curve]  # training events at 25/50/75/100 % of users
    assert (
        len(sizes) == 4
        and sizes == sorted(sizes)
        and sizes[-1] == second.card["split"]["train_events"]
    )
    registry = await Bus(fresh).registry()
    for result in (first, second):
        folder = write(result, tmp_path)
        assert (folder / "report.html").read_text().count("<svg") == (3 if result.curve else 2)
        await registry.publish(result.version, result.card, pack(folder), "home")
    cards, active = await registry.listing()
    assert [c["version"] for c in cards] == [first.version, second.version]
    assert active == {"home": second.version}
    loaded = Recommender.load(unpack(await registry.artifact(second.version), tmp_path / "x"))
    probe = _rows(second.model)  # the artifact scores exactly like the trained model
    assert np.array_equal(loaded.score_many(probe), second.model.score_many(probe))
    await registry.activate(first.version, "home")  # roll back
    assert (await registry.listing())[1] == {"home": first.version}
    published = [e for e in await stored(fresh) if e.type == "model_published"]
    assert [e.properties.model_version for e in published] == [  # type: ignore[attr-defined]
        first.version,
        second.version,
        first.version,
    ]
    with pytest.raises(UnknownModel):
        await registry.activate("nope-1", "home")


def _rows(model: Recommender) -> sp.csr_matrix:
    assert model.items is not None
    n = len(model.items)
    return sp.random(20, n, density=0.1, random_state=3, format="csr", dtype=np.float32)


def test_recommend_batch_writes_ranked_lists_for_any_dataset(tmp_path: Path) -> None:
    train_csv = tmp_path / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"]
    rng = np.random.default_rng(1)
    for u in range(60):
        for m in rng.choice(30, size=8, replace=False):
            rows.append(f"{u},{m if u % 2 else m + 30},{rng.integers(1, 6)},{1_600_000_000 + u}")
    rows.append("99,bad,not-a-rating,notatime")
    train_csv.write_text("\n".join(rows) + "\n")
    users = tmp_path / "users.txt"
    users.write_text("user_id\n1\n2\nnever-seen\n")
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "recommend-batch",
            "--train",
            str(train_csv),
            "--users",
            str(users),
            "--k",
            "5",
            "--model",
            "itemknn",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 unreadable rows skipped" in done.stdout
    with out.open() as f:
        got = list(csv.DictReader(f))
    by_user: dict[str, list[tuple[int, str]]] = {}
    for r in got:
        by_user.setdefault(r["user_id"], []).append((int(r["rank"]), r["item_id"]))
    assert set(by_user) == {"1", "2", "never-seen"}
    assert all([rank for rank, _ in v] == [1, 2, 3, 4, 5] for v in by_user.values())
    # user 1 rated movies 0-29, user 2 movies 30-59: each is offered its own half
    assert all(int(item) < 30 for _, item in by_user["1"])
    assert all(int(item) >= 30 for _, item in by_user["2"])
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "recommend-batch",
            "--train",
            str(train_csv),
            "--users",
            str(users),
            "--model",
            "ease",
            "--params",
            '{"l3": 1}',
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--params: l3" in bad.stderr

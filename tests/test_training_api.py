"""Training's Python API and the commands built on it: slots keep their kind of model unless
forced, every change is named, `nerve models` fits 80 columns and has --json, the help lists
the registry's kinds, and `import training.cli` works first in a fresh interpreter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.synth import generate
from models import REGISTRY
from models.artifact import LOADERS
from nerve_client.events import parse_event
from training import api, load_history


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("api") / "h.jsonl"
    generate(path, users=800, days=20, seed=9, end=datetime(2026, 6, 1, tzinfo=UTC))
    return path.read_bytes().splitlines()


async def _history(nc: NATS, lines: list[bytes]) -> None:
    await Bus(nc).publish_events([parse_event(orjson.loads(x)) for x in lines])


def nerve(url: str, data_dir: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--nats-url", url, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def test_import_training_cli_first_in_a_fresh_interpreter_works_and_the_api_needs_no_cli() -> None:
    first = subprocess.run(
        [sys.executable, "-c", "import training.cli"], capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    probe = "import sys, training.api; print('engine.cli' in sys.modules)"
    alone = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert alone.returncode == 0 and alone.stdout.strip() == "False", alone.stderr


def test_train_help_lists_every_kind_the_model_registry_loads(tmp_path: Path) -> None:
    assert {"popular-segment", "nbo"} <= set(LOADERS)
    done = nerve("nats://127.0.0.1:1", tmp_path, "train", "--help")
    assert done.returncode == 0, done.stderr
    assert f"The kind of model: {' | '.join(api.kinds())}" in unwrapped(done.stdout)
    assert "--force" in done.stdout and "exit code 2" in unwrapped(done.stdout)
    batch = nerve("nats://127.0.0.1:1", tmp_path, "recommend-batch", "--help")
    assert f"The kind of model: {' | '.join(sorted(REGISTRY))}" in unwrapped(batch.stdout)


def unwrapped(help_text: str) -> str:
    """Help text as one line (click wraps it at 80 columns, also after a hyphen)."""
    return " ".join(re.sub(r"-\n\s+", "-", help_text).split())


async def test_api_publishes_to_the_kinds_slot_refuses_a_kind_change_and_rolls_back(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await _history(fresh, lines)
    where: dict[str, Any] = {"nats_url": nats_url, "data_dir": tmp_path}
    frame = load_history("stream", nats_url=nats_url)
    knn = api.train(frame, "itemknn", curve=False, data_dir=tmp_path)
    assert (knn.folder / "card.json").is_file() and (knn.folder / "report.html").is_file()
    first = api.publish(knn, **where)
    assert first == api.Change("similar", knn.version, "itemknn")
    assert str(first) == f"slot similar: (empty) → itemknn {knn.version}"
    metrics = api.evaluate(frame, "ease", {"l2": 50.0})
    assert set(metrics) == {"ease", "popular"}
    assert metrics["ease"]["ndcg@10"] > metrics["popular"]["ndcg@10"]
    ease = api.train(frame, "ease", {"l2": 50.0}, curve=False, data_dir=tmp_path)
    with pytest.raises(api.KindChange) as refused:
        api.publish(ease, **where)
    assert (refused.value.slot, refused.value.active_kind) == ("similar", "itemknn")
    assert [r["version"] for r in api.listing(**where)] == [knn.version]
    forced = api.publish(ease.version, force=True, **where)
    assert str(forced) == f"slot similar: itemknn {knn.version} → ease {ease.version}"
    with pytest.raises(api.KindChange):
        api.activate(knn.version, **where)
    back = api.activate(knn.version, force=True, **where)
    assert (back.slot, back.previous, back.version) == ("similar", ease.version, knn.version)
    rows = {r["version"]: r for r in api.listing(**where)}
    assert rows[knn.version]["slots"] == ["similar"] and rows[ease.version]["slots"] == []
    assert rows[ease.version]["metrics"]["ndcg@10"] == ease.card["metrics"]["ease"]["ndcg@10"]


async def test_cli_publish_names_the_change_and_refuses_a_kind_change_without_force(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await _history(fresh, lines)
    train = ("train", "--source", "stream", "--no-curve", "--publish")
    popular = nerve(nats_url, tmp_path, *train, "--model", "popular")
    assert popular.returncode == 0, popular.stderr
    version = next(
        line.split()[1].rstrip(";")
        for line in popular.stdout.splitlines()
        if line.startswith("published ")
    )
    assert f"slot trending: (empty) → popular {version}" in popular.stdout
    assert "warning" not in popular.stderr  # trending is a slot of the default slots file
    nowhere = nerve(nats_url, tmp_path, *train, "--model", "popular", "--slot", "nosuchslot")
    assert nowhere.returncode == 0, nowhere.stderr  # published, but said nothing serves it
    assert "nerve: warning: no slot of default_slots.toml is served by registry slot" in (
        nowhere.stderr
    )
    refused = nerve(nats_url, tmp_path, *train, "--model", "ease", "--slot", "trending")
    assert refused.returncode == 2
    assert refused.stderr.startswith("nerve: error: slot trending serves popular")
    assert len(refused.stderr.strip().splitlines()) == 1 and "--force" in refused.stderr
    assert not list((tmp_path / "models").glob("ease-*"))  # refused before training
    forced = nerve(nats_url, tmp_path, *train, "--model", "ease", "--slot", "trending", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"slot trending: popular {version} → ease ease-" in forced.stdout


async def test_a_candidate_is_stored_for_replay_and_experiments_and_activates_nothing(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    """Before: --publish always activated, so a challenger could not wait in the registry for
    `nerve replay models --candidate` and `nerve experiments start` (the loop's next steps)."""
    await _history(fresh, lines)
    train = ("train", "--source", "stream", "--no-curve", "--publish")
    live = nerve(nats_url, tmp_path, *train, "--model", "itemknn")
    assert live.returncode == 0, live.stderr
    challenger = nerve(nats_url, tmp_path, *train, "--model", "ease", "--candidate")
    assert challenger.returncode == 0, challenger.stderr
    assert "a candidate, slot similar unchanged" in challenger.stdout
    rows = {r["model"]: r for r in api.listing(nats_url=nats_url, data_dir=tmp_path)}
    assert rows["itemknn"]["slots"] == ["similar"] and rows["ease"]["slots"] == []
    alone = nerve(nats_url, tmp_path, "train", "--model", "ease", "--candidate")
    assert alone.returncode == 2 and "--candidate: only with --publish" in alone.stderr


async def test_models_fits_80_columns_with_full_versions_and_lists_json(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await _history(fresh, lines)
    where: dict[str, Any] = {"nats_url": nats_url, "data_dir": tmp_path}
    frame = load_history("stream", nats_url=nats_url)
    published = []
    for kind in ("nbo", "popular-segment", "ease"):
        trained = api.train(frame, kind, curve=False, data_dir=tmp_path)
        api.publish(trained, **where)
        published.append(trained)
    table = nerve(nats_url, tmp_path, "models", columns=80)
    assert table.returncode == 0, table.stderr
    shown = table.stdout.splitlines()
    assert max(len(line) for line in shown) <= 80, table.stdout
    header = shown[0].split()
    assert "nDCG@10" in header and "AUC" in header, table.stdout
    for trained in published:
        row = next(line for line in shown if trained.version in line)  # the full version
        auc = f"{trained.card['metrics'][trained.kind].get('auc', 0):.4f}"
        assert (auc in row) == (trained.kind == "nbo"), row
        if trained.kind != "nbo":
            assert f"{trained.card['metrics'][trained.kind]['ndcg@10']:.4f}" in row
    listed = nerve(nats_url, tmp_path, "models", "--json", columns=80)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["version"] for r in rows] == [t.version for t in published]
    assert rows[0]["metrics"]["auc"] == published[0].card["metrics"]["nbo"]["auc"]
    assert [r["slots"] for r in rows] == [["home"], ["trending"], ["similar"]]


async def test_demo_fills_each_kinds_default_slot_once(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    from engine.settings import BrokerSettings
    from training.demo import prepare

    await _history(fresh, lines)
    settings = BrokerSettings(nats_url=nats_url, data_dir=tmp_path)
    prepare(settings)
    rows = api.listing(broker=settings)
    assert {r["model"]: r["slots"] for r in rows} == {
        "nbo": ["home"],
        "itemknn": ["similar"],
        "popular": ["trending"],
    }
    prepare(settings)  # a second demo trains nothing
    assert api.listing(broker=settings) == rows


async def test_the_api_example_runs_and_two_runs_in_a_second_get_two_versions(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    await _history(fresh, lines)
    doc = api.__doc__ or ""
    example = doc.split("```python\n")[1].split("```")[0]
    assert 'URL = "nats://127.0.0.1:4222"' in example
    example = example.replace('"nats://127.0.0.1:4222"', repr(nats_url))
    monkeypatch.chdir(tmp_path)  # the example writes to .nerve/models
    for _ in range(2):
        exec(compile(example, "training.api example", "exec"), {})
    versions = sorted(p.name for p in (tmp_path / ".nerve" / "models").iterdir())
    assert len(versions) == 2 and all(v.startswith("itemknn-") for v in versions)
    rows = {r["version"]: r["slots"] for r in api.listing(nats_url=nats_url)}
    assert rows == {versions[0]: ["similar"], versions[1]: []}  # the second run rolled back


def test_the_api_finds_the_data_dir_as_the_cli_does_and_an_empty_history_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the API always used ./.nerve (a new, empty broker when NERVE_DATA_DIR pointed
    elsewhere) and an empty history died deep in the model with a traceback."""
    from training.remote import data_dir_of, settings_of

    monkeypatch.setenv("NERVE_DATA_DIR", str(tmp_path / "shop"))
    assert data_dir_of(None) == tmp_path / "shop"
    assert settings_of().data_dir == tmp_path / "shop"
    assert data_dir_of(tmp_path / "other") == tmp_path / "other"
    frame = load_history("warehouse")  # nothing stored there yet
    with pytest.raises(api.ConfigError, match=r"^no interactions to train on") as exc:
        api.train(frame, "itemknn", curve=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "shop" / "models").exists()

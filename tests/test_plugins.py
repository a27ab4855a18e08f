"""Bring your own model: the plugin contract (`models.plugins`) and its worked example
(`models.contrib.sklearn_svd`), found by `pkg.module:Class` or by a `nerve.models` entry point,
trained by `nerve train`, published, hot-reloaded by a running recommender, explained; and a
model the serving side cannot load is refused at activation, the slot keeping its model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.registry import Unservable
from engine.profiles.store import ProfileStore
from engine.recommender.core import Serving
from engine.recommender.slots import load_slots
from engine.services.recommender import RecommenderService
from engine.synth import generate
from models import REGISTRY, Interactions, load_packed, make, pack, unpack
from models.artifact import LOADERS
from models.plugins import PluginError, PluginModel, entry_points
from nerve_client.events import parse_event
from nerve_client.subjects import REQUEST_SUBJECT
from tests.conftest import event
from training import api

SPEC = "models.contrib.sklearn_svd:TruncatedSVDItems"
EXAMPLE_ENTRY = "sklearn-svd-example"


@pytest.fixture(autouse=True)
def registry_kept() -> Iterator[None]:
    """Plugins a test registers are forgotten after it: other tests iterate `REGISTRY`."""
    kinds, loaders = dict(REGISTRY), dict(LOADERS)
    yield
    REGISTRY.clear()
    REGISTRY.update(kinds)
    LOADERS.clear()
    LOADERS.update(loaders)


def small() -> Interactions:
    rng = np.random.default_rng(4)
    users = [f"u{u}" for u in rng.integers(0, 120, 3000)]
    items = [f"i{i}" for i in rng.zipf(1.6, 3000) % 50]
    return Interactions.from_triples(users, items)


def forget(name: str) -> None:
    """Make `name` unknown again, as in a process that never imported the plugin."""
    REGISTRY.pop(name, None)
    LOADERS.pop(name, None)


def dist_info(root: Path, entries: dict[str, str]) -> Path:
    """An installed distribution (metadata only) declaring `nerve.models` entry points: what
    `pip install` of a package with `[project.entry-points."nerve.models"]` leaves behind."""
    info = root / "nerve_plugin_example-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nerve-plugin-example\nVersion: 0.1\n"
    )
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[nerve.models]\n{lines}")
    return root


def test_the_example_fits_saves_arrays_and_json_only_and_loads_back_identical(
    tmp_path: Path,
) -> None:
    forget(SPEC)
    model = make(SPEC, factors=8)
    assert isinstance(model, PluginModel) and model.name == SPEC
    data = small()
    model.fit(data)
    history = {"i1": 2.0, "i2": 1.0}
    before = model.recommend(history, k=5)
    assert len(before) == 5 and not {s.item for s in before} & set(history)
    folder = model.save(tmp_path / "m")
    files = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
    assert files == ["arrays.npz", "model.json", "plugin/item_factors.npy", "plugin/model.json"]
    assert json.loads((folder / "model.json").read_text())["name"] == SPEC  # how to find it
    forget(SPEC)  # a fresh process: the archive alone says which class to import
    loaded = load_packed(pack(folder), tmp_path)
    assert loaded.name == SPEC and loaded.recommend(history, k=5) == before  # type: ignore[attr-defined]
    assert np.array_equal(loaded.score({}, history, 0), model.score({}, history, 0))
    because = loaded.explain({}, history, [s.item for s in before], 0)
    assert set(because.values()) <= {"item:i1", "item:i2"} and because
    with pytest.raises(ValueError, match="factors"):
        make(SPEC, factors="many")
    with pytest.raises(ValueError, match="no_such"):
        make(SPEC, no_such=1)


def test_an_entry_point_name_finds_the_plugin_and_is_a_kind_train_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EXAMPLE_ENTRY not in entry_points()
    monkeypatch.syspath_prepend(str(dist_info(tmp_path, {EXAMPLE_ENTRY: SPEC})))
    assert entry_points()[EXAMPLE_ENTRY].value == SPEC
    assert EXAMPLE_ENTRY in api.kinds() and api.default_slot(EXAMPLE_ENTRY) == "similar"
    forget(EXAMPLE_ENTRY)
    assert api.config(EXAMPLE_ENTRY, {"factors": 4}).factors == 4
    model = make(EXAMPLE_ENTRY, factors=4).fit(small())
    assert model.name == EXAMPLE_ENTRY
    folder = model.save(tmp_path / "m")
    forget(EXAMPLE_ENTRY)
    assert load_packed(pack(folder)).name == EXAMPLE_ENTRY


def test_a_plugin_that_cannot_be_imported_or_lacks_the_contract_is_refused_naming_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "half_plugin.py").write_text(
        "class OnlyFit:\n    def fit(self, interactions): pass\n"
        "class Pickler:\n"
        "    def fit(self, interactions): self.items = list(interactions.items)\n"
        "    def score(self, history, items): return [0.0] * len(items)\n"
        "    def save(self, folder): (folder / 'model.pkl').write_bytes(b'x')\n"
        "    @classmethod\n    def load(cls, folder): return cls()\n"
        "NOT_A_CLASS = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="cannot import no_such_pkg"):
        make("no_such_pkg.models:Model")
    with pytest.raises(PluginError, match="lacks save, load, score \\(or recommend\\)"):
        make("half_plugin:OnlyFit")
    with pytest.raises(PluginError, match="is not a class"):
        make("half_plugin:NOT_A_CLASS")
    with pytest.raises(ValueError, match="unknown model 'nosuch'"):
        make("nosuch")
    model = make("half_plugin:Pickler").fit(small())
    with pytest.raises(PluginError, match=r"model\.pkl: .* never pickle"):
        model.save(tmp_path / "m")


def test_an_archive_holding_pickle_or_object_arrays_is_refused_before_any_load(
    tmp_path: Path,
) -> None:
    folder = make("popular").fit(small()).save(tmp_path / "m")
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy: an array of Python objects"):
        unpack(pack(folder), tmp_path / "out")
    (folder / "objects.npy").unlink()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("model.json", "{}")
        z.writestr("../escape.json", "{}")
    with pytest.raises(ValueError, match="unexpected entry"):
        unpack(buffer.getvalue(), tmp_path / "out2")


def test_an_archive_naming_an_untrusted_module_is_refused_before_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the class an archive named was imported to be checked, so an archive naming any
    installed module ran that module's code on load (review: `this:X` printed the Zen)."""
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass X: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = make("popular").fit(small()).save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "name": "side_effect_mod:X"}))
    with pytest.raises(ValueError, match="refused before importing it"):
        load_packed(pack(folder), tmp_path)
    assert not marker.exists() and "side_effect_mod" not in sys.modules
    monkeypatch.setenv("NERVE_PLUGIN_MODULES", "side_effect_mod")  # trusted by its operator
    with pytest.raises(ValueError, match="lacks"):  # imported now, then refused as no plugin
        load_packed(pack(folder), tmp_path)
    assert marker.exists()


# -- end to end, with a real broker --------------------------------------------------------------


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("plugins") / "h.jsonl"
    generate(path, users=250, days=15, seed=5, end=datetime(2026, 6, 1, tzinfo=UTC))
    return path.read_bytes().splitlines()


def nerve(
    url: str, data_dir: Path, *args: str, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`nerve` in a fresh interpreter (which has imported no plugin), `path` prepended."""
    env = {**os.environ, "COLUMNS": "200"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--nats-url", url, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def published(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return next(
        line.split()[1].rstrip(";")
        for line in done.stdout.splitlines()
        if line.startswith("published ")
    )


@contextlib.asynccontextmanager
async def recommender(nc: NATS, data_dir: Path) -> AsyncIterator[RecommenderService]:
    bus = Bus(nc)
    config, _ = load_slots(None, data_dir)  # the default slots file, as `nerve explain` reads
    service = RecommenderService(bus, Serving(config), await ProfileStore.open(bus))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 30)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def ask(nc: NATS, user: str, slot: str, item: str) -> dict[str, Any]:
    body = {"user_id": user, "slot": slot, "context": {"item_id": item}}
    reply = orjson.loads((await nc.request(REQUEST_SUBJECT, orjson.dumps(body), 10)).data)
    assert "error" not in reply, reply
    return dict(reply)


async def served_by(service: RecommenderService, slot: str, version: str) -> None:
    """Wait (bounded) until the service has swapped `version` in for `slot`."""
    for _ in range(600):
        current = service.serving.models.get(slot)
        if current is not None and current.version == version:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"slot {slot} still served by {service.serving.models.get(slot)}")


async def test_the_example_trained_by_nerve_train_is_hot_reloaded_served_and_explained(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await Bus(fresh).publish_events([parse_event(orjson.loads(x)) for x in lines])
    train = ("train", "--source", "stream", "--no-curve", "--publish")
    old = published(nerve(nats_url, tmp_path, *train, "--model", "itemknn"))
    frame_items = [orjson.loads(x).get("item_id") for x in lines]
    anchor = max(set(filter(None, frame_items)), key=frame_items.count)
    forget(SPEC)
    async with recommender(fresh, tmp_path) as service:
        before = await ask(fresh, "pat", "similar", anchor)
        assert before["properties"]["model_version"] == old
        done = nerve(nats_url, tmp_path, *train, "--model", SPEC, "--force")
        new = published(done)
        assert f"slot similar: itemknn {old} → {SPEC} {new}" in done.stdout
        await served_by(service, "similar", new)
        await Publisher(fresh).publish_events(
            [parse_event(event("item_viewed", user_id="pat", item_id=anchor))]
        )
        after = await ask(fresh, "pat", "similar", anchor)
    props = after["properties"]
    assert (props["model_version"], props["model"]) == (new, SPEC)
    assert props["items"] and after["id"] != before["id"]
    listed = {r["version"]: r for r in api.listing(nats_url=nats_url, data_dir=tmp_path)}
    assert listed[new]["slots"] == ["similar"] and listed[new]["model"] == SPEC
    explained = nerve(nats_url, tmp_path, "explain", after["id"], "--user", "pat")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert f"model {new} ({SPEC})" in explained.stdout
    assert "the recomputed list matches the stored one" in explained.stdout


async def test_a_plugin_whose_module_is_missing_is_refused_at_activation_and_the_slot_keeps_it(
    fresh: NATS, nats_url: str, tmp_path: Path
) -> None:
    registry = await Bus(fresh).registry()
    good = make("popular").fit(small())
    await registry.publish(
        "popular-1",
        {"version": "popular-1", "model": "popular"},
        pack(good.save(tmp_path / "good")),
        "similar",
    )
    folder = make(SPEC, factors=4).fit(small()).save(tmp_path / "gone")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "name": "gone_pkg.models:Gone"}))
    card = {"version": "gone-1", "model": "gone_pkg.models:Gone"}
    with pytest.raises(Unservable, match="cannot import gone_pkg"):
        await registry.publish("gone-1", card, pack(folder), "similar")
    cards, active = await registry.listing()
    assert active["similar"] == "popular-1" and [c["version"] for c in cards] == ["popular-1"]
    await registry.publish("gone-1", card, pack(folder), None)  # stored by hand, not active
    refused = nerve(nats_url, tmp_path, "models", "activate", "gone-1", "--force")
    assert refused.returncode == 1
    assert refused.stderr.startswith("nerve: error: model gone-1 cannot be served")
    assert "cannot import gone_pkg" in refused.stderr and len(refused.stderr.splitlines()) == 1
    with pytest.raises(Unservable, match="PluginError"):
        api.activate("gone-1", slot="similar", force=True, nats_url=nats_url, data_dir=tmp_path)
    assert (await registry.listing())[1]["similar"] == "popular-1"
    back = api.activate("popular-1", slot="similar", nats_url=nats_url, data_dir=tmp_path)
    assert back.version == "popular-1"

"""A model on disk and in transit: the format version of a saved model directory, the zip
archive that travels to the object store, and loading a saved model of any kind by its name.

Every kind of model registers its loader here (`register`) when its module is imported;
`models/__init__.py` imports them all, so the loaders are known wherever `models` is used. A name
no module registered may be a plugin's (`pkg.module:Class`, or a `nerve.models` entry point):
the finders (`add_finder`; `models.plugins` adds one) import it, which registers it.

An archive holds data, never code: only the file types in `SAFE_SUFFIXES`, and `.npy`/`.npz`
arrays whose dtype holds no Python objects (which only pickle could restore). Both are checked
when an archive is unpacked, before any model's `load` reads it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

from models.scorer import Scorer

FORMAT_VERSION = 1
LOADERS: dict[str, Callable[[Path], Scorer]] = {}
"""Model name (`model.json`'s `name`) -> the function that loads a directory saved by it."""
FINDERS: list[Callable[[str], bool]] = []
"""Functions that make an unknown model name known (import it, which registers it): True if
one did. One that recognises a name but cannot import it raises, saying why."""
SAFE_SUFFIXES = frozenset({".json", ".npy", ".npz", ".txt", ".csv", ".html"})
"""What a model archive may hold: arrays and text (a card, a report), nothing that runs."""


def register(name: str, load: Callable[[Path], Scorer]) -> None:
    """Load saved models named `name` with `load`."""
    LOADERS[name] = load


def add_finder(find: Callable[[str], bool]) -> None:
    """Ask `find` about model names no module has registered (see `FINDERS`)."""
    if find not in FINDERS:
        FINDERS.append(find)


def find(name: str) -> bool:
    """Whether a finder made the unknown model `name` known (registered its loader)."""
    return any(f(name) for f in FINDERS)


def load_model(path: Path) -> Scorer:
    """A saved model of any kind: a `Recommender`, a `NextBestOffer` (name `nbo`), or a plugin
    (its name says where its class is; the finders import it)."""
    meta = json.loads((path / "model.json").read_text())
    name = meta.get("name")
    load = LOADERS.get(name)
    if load is None and isinstance(name, str):
        _refuse_untrusted(path, name)
        if find(name):
            load = LOADERS.get(name)
    if load is None:
        raise ValueError(f"{path}: unknown model {name!r} (known: {sorted(LOADERS)})")
    return load(path)


def servable(data: bytes, work_dir: Path | None = None) -> Scorer:
    """The model an archive holds, loaded and asked to score an empty history as serving would
    (a cold visitor); raises, saying why, if serving could not use it."""
    model = load_packed(data, work_dir)
    candidates = len(model.candidates())
    scores = np.asarray(model.score({}, {}, time.time_ns() // 1_000_000))
    if scores.shape != (candidates,):
        raise ValueError(
            f"{model.name}: scoring an empty history gave shape {scores.shape}, "
            f"not one score for each of its {candidates} candidates"
        )
    return model


def load_packed(data: bytes, work_dir: Path | None = None) -> Scorer:
    """A model of any kind from an archive made by `pack` (what the registry stores)."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        return load_model(unpack(data, Path(tmp)))


def pack(folder: Path) -> bytes:
    """A saved model directory (and its subdirectories: a plugin's own files) as one zip
    archive, what travels to the object store."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> Path:
    """Extract an archive made by `pack` into `folder`: relative names without hidden or parent
    parts, only `SAFE_SUFFIXES`, arrays without objects; anything else is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            parts = PurePosixPath(name).parts
            if "\\" in name or name.startswith("/") or any(p.startswith(".") for p in parts):
                raise ValueError(f"unexpected entry {name!r} in a model archive")
            target = folder.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
    check_files(folder)
    return folder


def check_files(folder: Path) -> None:
    """Refuse (ValueError naming the file) anything under `folder` that only code or pickle
    could read back: a file type outside `SAFE_SUFFIXES`, an array of Python objects."""
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        where = f.relative_to(folder).as_posix()
        if f.suffix.lower() not in SAFE_SUFFIXES:
            text = ", ".join(sorted(SAFE_SUFFIXES - {".npy", ".npz"}))
            raise ValueError(
                f"{where}: a model artifact holds arrays (.npy, .npz) and text ({text}) only, "
                "never pickle or code"
            )
        if f.suffix.lower() == ".npy":
            with f.open("rb") as stream:
                _plain_array(stream, where)
        elif f.suffix.lower() == ".npz":
            with zipfile.ZipFile(f) as z:
                for member in z.namelist():
                    with z.open(member) as stream:
                        _plain_array(stream, f"{where}:{member}")


def _plain_array(stream: IO[bytes], where: str) -> None:
    """Read an .npy header (not the data) and refuse a dtype of Python objects."""
    try:
        version = np.lib.format.read_magic(stream)
        header = np.lib.format.read_array_header_1_0
        if version != (1, 0):
            header = np.lib.format.read_array_header_2_0
        dtype = header(stream)[2]
    except ValueError as exc:
        raise ValueError(f"{where}: not a numpy array file ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: an array of Python objects (only pickle restores it)")


PLUGIN_MODULES_ENV = "NERVE_PLUGIN_MODULES"
"""Comma-separated modules whose `module:Class` plugins an archive may name, beyond those of
the installed `nerve.models` entry points."""


def _refuse_untrusted(path: Path, name: str) -> None:
    """An archive names its class, and importing a module runs its code: an archive may name
    `module:Class` only for a module of an installed `nerve.models` entry point, one this process
    already imported, or one listed in `NERVE_PLUGIN_MODULES`; any other installed module is
    refused before it is imported (a module that is not installed at all is left to the plugin
    finder, which says so)."""
    if ":" not in name:
        return
    module = name.partition(":")[0]
    top = module.split(".")[0]
    if module in sys.modules or importlib.util.find_spec(top) is None:
        return
    listed = {m.strip() for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m.strip()}
    points = importlib.metadata.entry_points(group="nerve.models")
    if module in listed | {ep.value.partition(":")[0] for ep in points}:
        return
    raise ValueError(
        f"{path}: the model names {name!r}, and {module} is neither a nerve.models entry point "
        f"installed here nor listed in {PLUGIN_MODULES_ENV}: refused before importing it "
        "(an archive holds data, never code)"
    )

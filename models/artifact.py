"""A model on disk and in transit: the format version of a saved model directory, the zip
archive that travels to the object store, and loading a saved model of any kind by its name.

Every kind of model registers its loader here (`register`) when its module is imported;
`models/__init__.py` imports them all, so the loaders are known wherever `models` is used.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from models.scorer import Scorer

FORMAT_VERSION = 1
LOADERS: dict[str, Callable[[Path], Scorer]] = {}
"""Model name (`model.json`'s `name`) -> the function that loads a directory saved by it."""


def register(name: str, load: Callable[[Path], Scorer]) -> None:
    """Load saved models named `name` with `load`."""
    LOADERS[name] = load


def load_model(path: Path) -> Scorer:
    """A saved model of any kind: a `Recommender`, or a `NextBestOffer` (name `nbo`)."""
    meta = json.loads((path / "model.json").read_text())
    load = LOADERS.get(meta.get("name"))
    if load is None:
        raise ValueError(f"{path}: unknown model {meta.get('name')!r} (known: {sorted(LOADERS)})")
    return load(path)


def load_packed(data: bytes, work_dir: Path | None = None) -> Scorer:
    """A model of any kind from an archive made by `pack` (what the registry stores)."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        return load_model(unpack(data, Path(tmp)))


def pack(folder: Path) -> bytes:
    """A saved model directory as one zip archive (what travels to the object store)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                z.write(f, f.name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> Path:
    """Extract an archive made by `pack` (flat names only) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"unexpected entry {name!r} in a model archive")
            (folder / name).write_bytes(z.read(name))
    return folder

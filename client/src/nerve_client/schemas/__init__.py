"""JSON Schemas of the events a client reads and writes, shipped as files beside this module.

They are generated from the pydantic models (`nerve_client.events.json_schema`), never written
by hand: `python -m nerve_client.schemas` writes them again after a model changes, and a test
fails while the shipped files differ from freshly generated ones. A service in another language
validates against these files; a Python one uses the models.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from nerve_client.events import json_schema

TYPES = ("interest_signal", "anomaly_detected", "recommendations_updated", "crm_contact_logged")
"""What a client consumes (signals, lists) and what it publishes (CRM events)."""


def file_name(event_type: str) -> str:
    return f"{event_type}.schema.json"


def render(event_type: str) -> str:
    """The schema of `event_type` as the text of its shipped file (stable key order)."""
    return json.dumps(json_schema(event_type), indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> text of every shipped schema, generated from the models now."""
    return {file_name(t): render(t) for t in TYPES}


def shipped() -> dict[str, str]:
    """File name -> text of every schema file in the installed package."""
    here = files(__name__)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in here.iterdir()
        if entry.name.endswith(".schema.json")
    }


def load(event_type: str) -> dict[str, Any]:
    """The shipped JSON Schema of `event_type` (one of `TYPES`)."""
    if event_type not in TYPES:
        raise KeyError(f"no schema shipped for {event_type!r} (shipped: {', '.join(TYPES)})")
    text = files(__name__).joinpath(file_name(event_type)).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def write(directory: Path) -> list[Path]:
    """Write every schema into `directory` (stale `*.schema.json` removed); the paths written."""
    wanted = generate()
    for old in directory.glob("*.schema.json"):
        if old.name not in wanted:
            old.unlink()
    written = []
    for name, text in wanted.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

"""The client distribution's contract: its shipped JSON Schema files are the models' own, its
version is the engine's, and its package imports nothing of the engine."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import engine
import nerve_client
from nerve_client import schemas
from nerve_client.events import json_schema, parse_event
from tests.conftest import event

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_schemas_equal_freshly_generated_ones() -> None:
    # After a model change: python -m nerve_client.schemas (writes them into the source tree)
    assert schemas.shipped() == schemas.generate()


def test_a_schema_of_what_the_client_consumes_and_publishes_ships() -> None:
    assert set(schemas.shipped()) == {
        "interest_signal.schema.json",
        "anomaly_detected.schema.json",
        "recommendations_updated.schema.json",
        "crm_contact_logged.schema.json",
    }
    for etype in schemas.TYPES:
        loaded = schemas.load(etype)
        assert loaded == json_schema(etype)
        assert loaded["properties"]["type"]["const"] == etype
    with pytest.raises(KeyError, match="no schema shipped for 'page_viewed'"):
        schemas.load("page_viewed")


def test_writing_the_schemas_replaces_stale_files(tmp_path: Path) -> None:
    (tmp_path / "gone_type.schema.json").write_text("{}")
    (tmp_path / "crm_contact_logged.schema.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    written = schemas.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(schemas.generate())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*schemas.generate(), "notes.txt"])
    text = (tmp_path / "crm_contact_logged.schema.json").read_text()
    assert json.loads(text) == json_schema("crm_contact_logged")


def test_a_crm_contact_the_client_builds_is_valid_under_the_engines_models() -> None:
    contact = nerve_client.CrmContact(
        user_id="u-1", offer="loan-personal", channel="phone", outcome="interested"
    )
    parsed = parse_event(contact.to_event())
    assert parsed.type == "crm_contact_logged"
    assert parsed.subject.startswith("crm.")
    assert parse_event(event("interest_signal")).type == "interest_signal"


def test_the_client_has_the_engines_version() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert nerve_client.__version__ == root == engine.__version__
    assert client["dynamic"] == ["version"]  # read from nerve_client.__version__


def test_the_client_depends_on_nothing_of_the_engines_numerical_stack() -> None:
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in client["dependencies"]}
    assert names == {"nats-py", "pydantic", "orjson"}


def test_a_planted_client_import_of_the_engine_is_found(tmp_path: Path) -> None:
    from tests.test_layout import CLIENT, lines_of, one_way_violations, plant

    root = plant(
        tmp_path,
        {
            f"{CLIENT}/client.py": "from nerve_client.ids import uuid7\nimport nats\n",
            f"{CLIENT}/events/x.py": "from engine.settings import BrokerSettings\n",
            f"{CLIENT}/y.py": "def f():\n    import models\n    from training import cli\n",
            "engine/e.py": "from nerve_client.events import parse_event\n",
        },
    )
    assert lines_of(one_way_violations(root, CLIENT)) == {
        f"{CLIENT}/events/x.py:1",
        f"{CLIENT}/y.py:2",
        f"{CLIENT}/y.py:3",
    }
    assert one_way_violations(root, "engine") == []

"""The nerve-client distribution on its own: built as a wheel from client/, installed into a
clean virtual environment with only its own dependencies, and used there against a real
nats-server. None of the engine's numerical stack may come along."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from engine.bus.reader import read_all
from nerve_client.events import parse_event, parse_event_json
from nerve_client.subjects import signal_subject, user_token
from tests.conftest import event

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "scipy", "pandas", "sklearn", "pyarrow", "engine", "fastapi")
"""What the engine needs and a CRM does not (the engine itself included)."""

CRM = """
import asyncio, json, sys
from nerve_client import CrmContact, NerveClient
from nerve_client.schemas import load

async def main(url: str) -> None:
    async with await NerveClient.connect(url, name="crm-in-a-clean-venv") as nerve:
        async for signal in nerve.interest_signals(topic="loan", durable="clean-venv-crm"):
            contact = CrmContact(user_id=signal.user_id, offer=signal.offer or "loan-personal",
                                 channel="phone", outcome="interested", signal_id=signal.id)
            published = await nerve.publish(contact)
            break
    schema = load("crm_contact_logged")
    print(json.dumps({"signal": signal.id, "user": signal.user_id, "published": published,
                      "schema": schema["properties"]["type"]["const"]}))

asyncio.run(main(sys.argv[1]))
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def size_mb(venv: Path) -> float:
    return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()) / 1e6


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the client wheel and its dependencies, nothing else."""
    work = tmp_path_factory.mktemp("client-dist")
    source = work / "client"  # a copy: the build writes build/ and *.egg-info beside it
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", source)
    (wheel,) = (work / "dist").glob("nerve_client-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return venv


@pytest.mark.slow
def test_the_client_wheel_installs_without_the_engines_stack(clean_venv: Path) -> None:
    probe = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))"  # noqa: E501
    # cwd: not the repository, whose engine/ `python -c` would find on its path
    found = json.loads(run(clean_venv / "bin" / "python", "-c", probe % (HEAVY,), cwd=clean_venv))
    assert found == dict.fromkeys(HEAVY, False)
    listed = run(clean_venv / "bin" / "python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"nerve-client", "nats-py", "pydantic", "orjson"} <= names
    engine_venv = Path(sysconfig.get_paths()["purelib"]).parents[2]
    print(f"\nclient venv {size_mb(clean_venv):.0f} MB, engine venv {size_mb(engine_venv):.0f} MB")


@pytest.mark.slow
async def test_a_crm_in_a_clean_venv_receives_a_signal_and_publishes_a_contact(
    clean_venv: Path, fresh: NATS, nats_url: str
) -> None:
    signal = parse_event(event("interest_signal", user_id="cli-user"))
    subject = signal_subject("loan", user_token("cli-user"))
    await fresh.jetstream().publish(subject, signal.to_json(), headers={"Nats-Msg-Id": signal.id})
    proc = await asyncio.create_subprocess_exec(
        str(clean_venv / "bin" / "python"),
        "-c",
        CRM,
        nats_url,
        cwd=clean_venv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    said = json.loads(out)
    assert said == {
        "signal": signal.id,
        "user": "cli-user",
        "published": said["published"],
        "schema": "crm_contact_logged",
    }
    stored = [parse_event_json(d) for _, _, d in await read_all(fresh.jetstream(), "CRM")]
    assert [(e.id, e.type, e.user_id) for e in stored] == [
        (said["published"], "crm_contact_logged", "cli-user")
    ]
    assert stored[0].properties.model_dump()["signal_id"] == signal.id

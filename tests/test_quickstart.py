"""The README's quick start as a new user meets it: `make demo` (its port, its end on Ctrl-C),
the refusals a first `nerve up` gives, and `make test` on a machine without Chromium."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_cli import free_port, nerve

ROOT = Path(__file__).resolve().parent.parent
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_short_site_key_is_named_as_the_option_says_not_as_a_missing_key_option() -> None:
    r = nerve("up", "--site-keys", "k1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nerve: error: --site-keys: the key 'k1'")
    assert "--key:" not in lines[0]


def test_a_taken_port_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for args in (
            ("up", "--site-keys", "site-key-123", "--port", str(port)),
            ("demo", "--port", str(port)),
        ):
            r = nerve(*args, data_dir=tmp_path)
            assert r.returncode == 2, (args, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, r.stderr
            assert f"127.0.0.1:{port} is in use" in lines[0] and "PORT=" in lines[0]
    assert not (tmp_path / "demo").exists()  # refused before generating anything


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run make as another user")
def test_make_test_without_chromium_stops_at_once_with_the_command_to_run() -> None:
    """Not root (so nothing can be installed): one line naming the command, exit non-zero.
    As root, the same target installs Debian's chromium (what `.ci/run` relies on)."""
    r = subprocess.run(
        [*AS_NOBODY, "make", "-s", "-f", "-", "browser", "CHROMIUM=/nonexistent/chromium"],
        input=(ROOT / "Makefile").read_text(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    out = r.stdout.strip().splitlines()
    assert out == [
        "make test: /nonexistent/chromium is missing; "
        "run: sudo apt-get install chromium fonts-liberation"
    ], r.stdout + r.stderr


@pytest.mark.slow
def test_make_demo_takes_a_port_and_ends_on_ctrl_c_without_a_make_error(tmp_path: Path) -> None:
    port = free_port()
    venv = Path(sys.prefix)
    make_demo = ["make", "-C", str(ROOT), "demo"]
    proc = subprocess.Popen(
        [*make_demo, f"VENV={venv}", "DEPS=", f"PORT={port}", "ARGS=--users 60 --days 3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NERVE_DATA_DIR": str(tmp_path), "COLUMNS": "200"},
        start_new_session=True,  # a process group, as a terminal's Ctrl-C reaches
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.5)
        else:
            pytest.fail("the demo's gateway never answered on the chosen port")
        # the operator console's state, signed in with the demo's token, shows the engine, and
        # an anomaly within the minute (the demo's visitors plant one about every 30 s)
        token = (tmp_path / "demo" / "ops-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        state: dict[str, object] = {}
        while time.monotonic() < deadline and not state.get("anomalies_seen"):
            r = httpx.get(f"http://127.0.0.1:{port}/ops/state", headers=auth, timeout=5)
            if r.status_code == 200:
                body = r.json()
                state = {"body": body, "anomalies_seen": body["anomalies"]["entries"]}
            time.sleep(1)
        body = state.get("body")
        assert isinstance(body, dict), "no /ops/state answer"
        assert body["problems"] == [] and body["streams"], body["problems"]
        assert body["anomalies"]["entries"], "no anomaly from the demo's trickle"
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"http://127.0.0.1:{port}/demo/" in output and f"http://127.0.0.1:{port}/ops" in output
    assert "Error 130" not in output and "make: ***" not in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    # make itself got the SIGINT too and, its recipe done cleanly, ends by it as any interrupted
    # program does (the shell prints nothing); what is gone is make's "Error 130" line
    assert proc.returncode in (0, -signal.SIGINT), output[-2000:]


def test_the_readme_holds_no_editing_instructions() -> None:
    """A review found notes meant for whoever pasted a section ("Replace the whole block with
    the text below", "~line 1052") published in the Security section."""
    import re

    text = (ROOT / "README.md").read_text()
    leftovers = [
        r"~line \d+",
        r"Replace the whole block",
        r"Insert this paragraph",
        r"Append a sentence",
        r"^Where: ",
        r"^## \d+\. ",
    ]
    found = [p for p in leftovers if re.search(p, text, re.M)]
    assert found == [], found

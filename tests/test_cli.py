import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import event


def nerve(
    *args: str, data_dir: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    pre = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *pre, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_schema_prints_json_schema_of_one_type_or_all() -> None:
    one = nerve("schema", "simulator_used")
    assert one.returncode == 0
    doc = json.loads(one.stdout)
    assert doc["properties"]["type"]["const"] == "simulator_used"
    listing = nerve("schema", "--list")
    assert "crm_contact_logged" in listing.stdout and listing.returncode == 0
    bad = nerve("schema", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("nerve: error: unknown event")


def test_init_twice_then_generate_and_import_twice(tmp_path: Path) -> None:
    first = nerve("init", data_dir=tmp_path)
    assert first.returncode == 0 and "created   ACTIVITY" in first.stdout
    second = nerve("init", data_dir=tmp_path)
    assert second.returncode == 0
    assert "created" not in second.stdout and "updated" not in second.stdout
    history = tmp_path / "h.jsonl"
    gen = nerve("generate", "--users", "200", "--days", "10", "--seed", "3", "-o", str(history))
    assert gen.returncode == 0, gen.stderr
    lines = len(history.read_bytes().splitlines())
    imp = nerve("import", str(history), data_dir=tmp_path)
    assert imp.returncode == 0, imp.stderr
    assert f"{lines} accepted, 0 duplicates, 0 rejected" in imp.stdout
    again = nerve("import", str(history), data_dir=tmp_path)
    assert again.returncode == 0 and "already imported" in again.stdout
    assert not (tmp_path / "broker.json").exists(), "the embedded broker must be stopped"


def test_usage_errors_exit_2_and_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    missing = nerve("import", str(tmp_path / "missing.jsonl"), data_dir=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    bad_sync = nerve("--sync-interval", "sometimes", "init", data_dir=tmp_path)
    assert bad_sync.returncode == 2
    assert bad_sync.stderr.strip() == (
        "nerve: error: --sync-interval: must be 'always' or a duration such as 500ms, 1s, 2m"
    )
    port = free_port()
    down = nerve("--connect-timeout", "0.5", "--nats-url", f"nats://127.0.0.1:{port}", "init")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "cannot reach NATS" in down.stderr
    # a broker nobody provisioned yet (before `nerve init`): one line saying so, not a traceback
    for args in (("deadletters",), ("webhooks", "add", "http://127.0.0.1:9/hook")):
        fresh = nerve(*args, data_dir=tmp_path / "unprovisioned")
        assert fresh.returncode == 2, fresh.stderr
        assert fresh.stderr.strip().endswith("on this broker: run `nerve init` first")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_up_serves_the_gateway_and_stops_everything_on_a_signal(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--data-dir",
            str(tmp_path),
            "up",
            "--port",
            str(port),
            "--site-keys",
            "cli-test-key",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("gateway did not come up")
        r = httpx.post(
            f"{base}/v1/events",
            content=orjson.dumps([event(user_id=None, anonymous_id=f"a-{i}") for i in range(2)]),
            headers={"X-Nerve-Site-Key": "cli-test-key", "Content-Type": "application/json"},
        )
        assert r.status_code == 202 and r.json()["accepted"] == 2
        # a k above the slot's maximum: the maximum, and the warning on stderr (not in the JSON)
        many = nerve("recommend", "a-0", "--anonymous", "--k", "99", "--json", data_dir=tmp_path)
        assert many.returncode == 0, many.stderr
        assert "nerve: warning: k=99 is more than slot 'home' serves" in many.stderr
        assert "warning" not in json.loads(many.stdout)
        broker = json.loads((tmp_path / "broker.json").read_text())
    finally:
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"gateway: {base}/" in stdout
    assert not (tmp_path / "broker.json").exists()
    try:
        os.kill(broker["pid"], 0)
        raise AssertionError("nats-server still running after Ctrl-C")
    except ProcessLookupError:
        pass


def test_profile_replay_verify_and_forget_from_the_command_line(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    assert (
        nerve(
            "generate", "--users", "50", "--days", "5", "--seed", "1", "-o", str(history)
        ).returncode
        == 0
    )
    assert nerve("import", str(history), data_dir=tmp_path).returncode == 0
    # Project with the service, then stop it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--data-dir", str(tmp_path), "run", "profiles"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("NATS"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    shown = nerve("profile", "u0000001", data_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["user_id"] == "u0000001"
    verified = nerve("replay", "profiles", "--verify", data_dir=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified:" in verified.stdout
    one = nerve(
        "replay", "profiles", "--user", "u0000001", "--verify", "--no-write", data_dir=tmp_path
    )
    # the user and each anonymous id its logins stitched into it (engine.profiles.stitch)
    shown_ids = json.loads(shown.stdout)["anonymous_ids"]
    assert one.returncode == 0 and f"{1 + len(shown_ids)} profiles" in one.stdout, one.stdout
    assert "equal the live ones" in one.stdout
    gone = nerve("forget", "u0000001", "--yes", data_dir=tmp_path)
    assert gone.returncode == 0 and "erased" in gone.stdout
    after = nerve("profile", "u0000001", data_dir=tmp_path)
    assert after.returncode == 1 and "no profile" in after.stderr


def test_train_publish_list_and_roll_back_from_the_command_line(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    assert (
        nerve(
            "generate", "--users", "600", "--days", "20", "--seed", "2", "-o", str(history)
        ).returncode
        == 0
    )
    assert nerve("import", str(history), data_dir=tmp_path).returncode == 0
    first = nerve(
        "train",
        "--model",
        "ease",
        "--source",
        "stream",
        "--no-curve",
        "--publish",
        data_dir=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    nbo = nerve("train", "--model", "nbo", "--source", "stream", "--publish", data_dir=tmp_path)
    assert nbo.returncode == 0, nbo.stderr
    listing = nerve("models", data_dir=tmp_path).stdout
    ease_version = next(w for w in listing.split() if w.startswith("ease-"))
    assert "* " in listing and "nbo-" in listing
    # ease went to its kind's default slot (similar); moving it onto home, which serves nbo,
    # is a change of model kind: refused without --force, and said what it replaces with it
    refused = nerve("models", "activate", ease_version, "--slot", "home", data_dir=tmp_path)
    assert refused.returncode == 2 and "slot home serves nbo" in refused.stderr
    back = nerve("models", "activate", ease_version, "--slot", "home", "--force", data_dir=tmp_path)
    assert back.returncode == 0 and f"→ ease {ease_version}" in back.stdout
    after = [
        line
        for line in nerve("models", data_dir=tmp_path).stdout.splitlines()
        if ease_version in line
    ]
    assert after and "*" in after[0] and "home" in after[0]
    reports = list((tmp_path / "models").glob("ease-*/report.html"))
    assert reports and "<svg" in reports[0].read_text()
    bad = nerve("train", "--model", "ease", "--params", "{nope", data_dir=tmp_path)
    assert bad.returncode == 2 and "--params" in bad.stderr


def test_catalog_explain_recommend_and_crm_demo_give_one_clear_line(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        '{"item_id": "loan-1", "name": "Loan", "category": "loans"}\n'
        '{"item_id": "", "name": "no id"}\n'
        '{"item_id": "card-1", "colour": "red"}\n'
    )
    loaded = nerve("catalog", "load", str(items), data_dir=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "1 items upserted into CATALOG, 2 refused" in loaded.stdout
    assert "line 2: item_id" in loaded.stdout and "line 3: colour" in loaded.stdout
    missing = nerve("explain", "0190d6c4-0000-7000-8000-000000000000", data_dir=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("nerve: error: no recommendation")
    nobody = nerve("recommend", "u1", "--timeout", "0.5", data_dir=tmp_path)
    assert nobody.returncode == 1 and "is `nerve up` or `nerve run recommender` running?" in (
        nobody.stderr
    )
    bad_slots = tmp_path / "slots.toml"
    bad_slots.write_text("[slots.home]\nk = 'many'\n")
    refused = nerve("run", "recommender", "--config", str(bad_slots), data_dir=tmp_path)
    assert refused.returncode == 2 and "slots.home.k" in refused.stderr
    leads = nerve("crm-demo", "leads", data_dir=tmp_path)
    assert leads.returncode == 0 and "no leads yet" in leads.stdout

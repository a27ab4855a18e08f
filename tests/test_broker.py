import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.broker import EmbeddedBroker, broker_url, find_server_binary
from engine.bus import connect
from engine.settings import BrokerSettings
from nerve_client.errors import BrokerUnavailable, ConfigError


def port_open(url: str) -> bool:
    host, port = url.removeprefix("nats://").split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_embedded_broker_starts_with_jetstream_and_stops_cleanly(tmp_path: Path) -> None:
    settings = BrokerSettings(data_dir=tmp_path, sync_interval="always")
    with EmbeddedBroker(settings) as b:
        assert b.url and b.url.startswith("nats://127.0.0.1:")
        assert port_open(b.url)
        info = json.loads((tmp_path / "broker.json").read_text())
        assert info == {"url": b.url, "pid": b.pid}
        conf = (tmp_path / "nats-server.conf").read_text()
        assert 'sync_interval: "always"' in conf
        assert str(tmp_path / "jetstream") in conf
        pid = b.pid
        url = b.url
    assert not port_open(url)
    assert not (tmp_path / "broker.json").exists()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "jetstream" / "jetstream").is_dir()


def test_a_second_nerve_on_the_same_data_dir_reuses_the_running_broker(tmp_path: Path) -> None:
    settings = BrokerSettings(data_dir=tmp_path)
    with EmbeddedBroker(settings) as first:
        second = EmbeddedBroker(settings)
        assert second.start() == first.url
        assert second.pid is None
        second.stop()  # must not stop the first one's server
        assert first.url is not None and port_open(first.url)


def test_broker_url_prefers_an_explicit_url(tmp_path: Path) -> None:
    with broker_url(BrokerSettings(nats_url="nats://10.0.0.1:4222", data_dir=tmp_path)) as url:
        assert url == "nats://10.0.0.1:4222"
    assert not (tmp_path / "broker.json").exists()


def test_server_binary_from_setting_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        find_server_binary(str(tmp_path / "missing-nats-server"))
    assert os.access(find_server_binary(), os.X_OK)


async def test_unreachable_broker_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
        await connect(f"nats://127.0.0.1:{port}", "t", timeout=0.5)


def test_server_stops_when_nerve_is_killed(tmp_path: Path) -> None:
    """The child dies with its parent (PR_SET_PDEATHSIG): no orphan holds the store."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from engine.broker import EmbeddedBroker\n"
        "from engine.settings import BrokerSettings\n"
        "b = EmbeddedBroker(BrokerSettings(data_dir=Path(sys.argv[1])))\n"
        "b.start(); print(b.pid, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        server_pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("nats-server outlived its parent")


async def test_auth_is_always_on_and_credentials_survive_a_restart(tmp_path: Path) -> None:
    """The config the broker writes on every start includes the authorization block; the
    credentials are generated once (a restart must not lock out the services' files)."""
    from engine import credstore
    from engine.broker import reload
    from engine.bus import AuthRefused

    settings = BrokerSettings(data_dir=tmp_path)
    with EmbeddedBroker(settings) as b:
        assert b.url is not None
        first = credstore.component(tmp_path, "admin")
        assert "include" in (tmp_path / "nats-server.conf").read_text()
        with pytest.raises(AuthRefused):
            await connect(b.url, "anonymous", timeout=5)
        with broker_url(settings) as url:
            assert url == b.admin_url and f":{first.password}@" in url
    assert reload(tmp_path) is None  # nothing runs: nothing to signal
    with EmbeddedBroker(settings) as b:
        assert credstore.component(tmp_path, "admin") == first
        nc = await connect(b.admin_url, "admin", timeout=5)
        await nc.close()

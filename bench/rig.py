"""The fault rig of `bench/faults.py`: a nats-server and Nerve's services as child processes
that can be killed with SIGKILL and started again on the same port and store.

The broker is a plain, unauthenticated nats-server on 127.0.0.1 (its own child, not `nerve`'s
embedded one), so it can be killed and restarted while the services keep running and
reconnect. Each service is `nerve --nats-url URL --data-dir DIR run NAME`, its stderr kept in
`<work>/logs/NAME.log` (appended across restarts) so a failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.broker import find_server_binary  # noqa: E402

SITE_KEY = "bench-faults-key"
SERVICES = ("gateway", "profiles", "warehouse", "recommender", "signals")
ACK_WAIT_S = 3.0
"""Services redeliver an unacknowledged event after this long (the default is 30 s): a killed
consumer's batch comes back within the audit's patience."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


def nerve_command() -> list[str]:
    """`nerve` beside this interpreter, else `python -m engine.cli`."""
    script = Path(sys.executable).with_name("nerve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


class Broker:
    """A nats-server child with JetStream under `work/broker`, always on the same port."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "broker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "nats-server.conf"
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            "server_name: nerve_faults\n"
            "max_payload: 1MB\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(self.dir / 'jetstream'))}\n"
            '  sync_interval: "1s"\n'
            "}\n"
        )

    def start(self, timeout: float = 30.0) -> float:
        """Start the server; returns the monotonic time at which it accepted connections."""
        log = open(self.dir / "nats-server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [find_server_binary(), "-c", str(self.conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if _listening(self.port):
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to clients."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Service:
    """One `nerve run NAME` process, restartable; the gateway also gets an HTTP port."""

    def __init__(self, name: str, url: str, work: Path, extra: list[str] | None = None) -> None:
        self.name = name
        self.url = url
        self.data_dir = work / "data"
        self.log_path = work / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if name == "gateway" else 0
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes = 0  # exits nobody asked for, seen by `check`

    def command(self) -> list[str]:
        cmd = [*nerve_command(), "--nats-url", self.url, "--data-dir", str(self.data_dir)]
        cmd += ["--connect-timeout", "60", "run", self.name, "--ack-wait", str(ACK_WAIT_S)]
        if self.name == "gateway":
            cmd += ["--port", str(self.port), "--site-keys", SITE_KEY]
        return cmd + self.extra

    def start(self) -> None:
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts + 1} at {time.strftime('%T')}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        log.close()
        self.starts += 1

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the gateway answers /healthz, or the runner has printed its last start line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_path}")
            if self.name == "gateway":
                with contextlib.suppress(httpx.TransportError):
                    base = f"http://127.0.0.1:{self.port}"
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        return
            elif "Ctrl-C stops" in self.log_path.read_text(errors="replace").rsplit("---", 1)[-1]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> bool:
        """True if running; a process that died on its own is counted and started again."""
        if self.alive():
            return True
        self.crashes += 1
        self.start()
        return False

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def provision(url: str, work: Path) -> None:
    """`nerve init` against the broker (streams, buckets, object stores)."""
    subprocess.run(
        [*nerve_command(), "--nats-url", url, "--data-dir", str(work / "data"), "init"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )

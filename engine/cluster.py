"""A JetStream cluster of nats-server processes on loopback ports, for development and tests.

`Cluster(data_dir, nodes=3)` runs `nodes` servers from the same binary as the embedded broker
(`engine.broker.find_server_binary`), each with its own store (`<data_dir>/nodes/<name>/`), its
own client, route and monitoring port, and routes to every other node. The authorization is the
embedded broker's, unchanged: the same component credentials under `<data_dir>/credentials/`
and the same `authorization` block (`engine.credstore`), included by every node, so each
service connects to the cluster with its own least-privilege credential exactly as it does to
the embedded server. The routes between nodes carry a user and password of their own
(`<data_dir>/cluster-route.json`, 0600), so no stray process on the machine joins the cluster.

Ports are chosen once, when the cluster starts, and kept across a node's restart: the client
URL list (`urls`, or `url` comma-separated for `--nats-url`) stays valid for the cluster's life.
While it runs the cluster holds `<data_dir>/broker.lock` and writes `<data_dir>/broker.json`
with that list, like the embedded broker, so no embedded server starts on the same data dir.

`stop_node` (SIGTERM), `kill_node` (SIGKILL: nothing flushed) and `restart_node` exercise
failures; `start` waits until every node answers `/healthz` (JetStream has a meta leader and
its streams are current), `wait_healthy` does the same after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from engine import credentials, credstore
from engine.broker import _die_with_parent, find_server_binary
from nerve_client.credentials import Credential
from nerve_client.errors import BrokerError, ConfigError

ROUTE_FILE = "cluster-route.json"
MAX_NODES = 9


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One nats-server of the cluster: its name, ports, store and (while running) process."""

    name: str
    port: int
    route_port: int
    http_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"127.0.0.1:{self.route_port}"

    @property
    def config(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout: float = 1.0) -> bool:
        """The node's `/healthz`: up, JetStream enabled, a meta leader known, streams current."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return bool(json.loads(r.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class Cluster:
    """`nodes` nats-servers with JetStream, routed to each other, on loopback ports."""

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        *,
        server_binary: str | None = None,
        sync_interval: str = "1s",
        name: str = "nerve",
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ConfigError(f"--nodes {nodes}: between 1 and {MAX_NODES}")
        self.data_dir = data_dir.resolve()
        self.name = name
        self.sync_interval = sync_interval
        self.server_binary = server_binary
        self.nodes = [
            Node(f"n{i + 1}", 0, 0, 0, self.data_dir / "nodes" / f"n{i + 1}") for i in range(nodes)
        ]
        self._lock_fd: int | None = None

    # -- what clients need ------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Every node's client URL (no credential in them)."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs comma-separated: what `--nats-url` takes."""
        return ",".join(self.urls)

    def credential(self, name: str) -> Credential:
        """Component (or issued credential) `name`'s credential, as for the embedded broker."""
        return credstore.component(self.data_dir, name)

    def url_for(self, name: str) -> str:
        """The URL list with `name`'s user and password in every URL."""
        cred = self.credential(name)
        return ",".join(credentials.url_with(u, cred) for u in self.urls)

    @property
    def admin_url(self) -> str:
        return self.url_for("admin")

    # -- the whole cluster ------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> list[str]:
        """Write the configs, start every node, wait until all are healthy; the client URLs."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            binary = find_server_binary(self.server_binary)
            credstore.ensure_components(self.data_dir)
            credstore.write_auth_config(self.data_dir)
            route_user, route_password = self._route_secret()
            used: set[int] = set()
            for node in self.nodes:
                node.port, node.route_port, node.http_port = (_fresh(used) for _ in range(3))
            for node in self.nodes:
                self._write_config(node, route_user, route_password)
            for node in self.nodes:
                self._spawn(binary, node)
            self.wait_healthy(timeout)
            (self.data_dir / "broker.json").write_text(
                json.dumps({"url": self.url, "pid": self.nodes[0].pid, "nodes": self.describe()})
            )
            return self.urls
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after `timeout`) and release the data dir."""
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            _reap(node, timeout)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / "broker.json").unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def wait_healthy(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until the nodes (default: every running one) answer `/healthz` with ok."""
        which = [self.nodes[i] for i in nodes] if nodes is not None else self.nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in which:
                if node.proc is not None and node.proc.poll() is not None:
                    tail = node.log.read_text(errors="replace")[-400:]
                    raise BrokerError(f"{node.name} exited with {node.proc.returncode}: {tail}")
            if all(n.healthy() for n in which if n.running):
                return
            time.sleep(0.05)
        sick = [n.name for n in which if not n.healthy()]
        raise BrokerError(f"cluster nodes {sick} not healthy within {timeout:.0f}s")

    def describe(self) -> list[dict[str, object]]:
        """Each node's name, URL, pid and store, for `broker.json` and `nerve cluster up`."""
        return [
            {"name": n.name, "url": n.url, "pid": n.pid, "store": str(n.directory / "jetstream")}
            for n in self.nodes
        ]

    # -- one node ---------------------------------------------------------------------------
    def stop_node(self, index: int, timeout: float = 10.0) -> None:
        """Stop node `index` cleanly (SIGTERM: it flushes and leaves the cluster)."""
        node = self.nodes[index]
        if node.running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        _reap(node, timeout)

    def kill_node(self, index: int) -> None:
        """Kill node `index` with SIGKILL: no flush, no goodbye, like a crashed machine."""
        node = self.nodes[index]
        if node.running:
            assert node.proc is not None
            node.proc.kill()
        _reap(node, 5.0)

    def restart_node(self, index: int, timeout: float = 30.0) -> None:
        """Start node `index` again on its ports and store; wait until it is healthy."""
        node = self.nodes[index]
        if node.running:
            raise BrokerError(f"{node.name} is running; stop or kill it first")
        self._spawn(find_server_binary(self.server_binary), node)
        self.wait_healthy(timeout, [index])

    def reload(self) -> None:
        """Make every running node re-read its authorization (after `nerve credentials`)."""
        credstore.write_auth_config(self.data_dir)
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGHUP)

    # -- the pieces -------------------------------------------------------------------------
    def _lock(self) -> None:
        fd = os.open(self.data_dir / "broker.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerError(
                f"{self.data_dir} is in use by another nerve process (broker or cluster); "
                "stop it or choose another --data-dir"
            ) from None
        self._lock_fd = fd

    def _route_secret(self) -> tuple[str, str]:
        """The routes' user and password: made once per data dir, kept private (0600)."""
        path = self.data_dir / ROUTE_FILE
        if not path.exists():
            record = {"user": "route", "password": secrets.token_urlsafe(32)}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
        raw = json.loads(path.read_text())
        return str(raw["user"]), str(raw["password"])

    def _write_config(self, node: Node, route_user: str, route_password: str) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        auth = credstore.directory(self.data_dir) / credstore.AUTH_CONF
        # include paths are relative to the including file: link the one authorization block
        link = node.directory / credstore.AUTH_CONF
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(auth)
        routes = ", ".join(
            json.dumps(f"nats-route://{route_user}:{route_password}@{n.route_url}")
            for n in self.nodes
            if n is not node
        )
        node.config.write_text(
            "# written by nerve cluster on every start; do not edit\n"
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f"server_name: {node.name}\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(node.directory / 'jetstream'))}\n"
            f"  sync_interval: {json.dumps(self.sync_interval)}\n"
            "}\n"
            "cluster {\n"
            f"  name: {json.dumps(self.name)}\n"
            f"  listen: {node.route_url}\n"
            f"  authorization {{ user: {json.dumps(route_user)}, "
            f"password: {json.dumps(route_password)} }}\n"
            f"  routes: [{routes}]\n"
            "}\n"
            f"include {json.dumps(credstore.AUTH_CONF)}\n"
        )
        os.chmod(node.config, 0o600)  # it holds the route password

    def _spawn(self, binary: str, node: Node) -> None:
        log = open(node.log, "ab")  # noqa: SIM115 - the child keeps it
        node.proc = subprocess.Popen(
            [binary, "-c", str(node.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches nerve, which stops the nodes in order
            preexec_fn=_die_with_parent,
        )
        log.close()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fresh(used: set[int]) -> int:
    while (port := free_port()) in used:
        pass
    used.add(port)
    return port


def _reap(node: Node, timeout: float) -> None:
    proc = node.proc
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

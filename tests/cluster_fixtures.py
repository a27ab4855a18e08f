"""A 3-node JetStream cluster for tests, and services run as real processes on it.

`cluster` (module scope) starts `engine.cluster.Cluster` with three nodes in a temporary data
dir and provisions every stream, bucket and object store with three replicas. `ServiceProcess`
runs one engine service in its own Python process (this file run as a script), connected to
the cluster's URL list with that service's own least-privilege credential, so a test can kill
it with SIGKILL. `start_recommenders` is the one place that knows how recommender replicas are
started (today's `--replicas N --replica I` split, or partitions with leases once they land).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cluster import Cluster

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
ACK_WAIT_S = 4.0
"""The services' ack wait in these tests: what a killed replica held comes again this soon."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nats-servers with JetStream on loopback ports, the data dir's credentials, every
    stream provisioned with 3 replicas (what `nerve init --replicas 3` does)."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), 3)
    c.start()
    try:
        asyncio.run(_provision(c))
        yield c
    finally:
        c.stop()


async def _provision(c: Cluster) -> None:
    from engine.bus import Bus
    from engine.settings import StreamSettings

    bus = await Bus.connect(c.url, "test-provision", timeout=10, credential=c.credential("admin"))
    try:
        await bus.provision(StreamSettings(replicas=3))
    finally:
        await bus.close()


class ServiceProcess:
    """One engine service in a child process on the cluster (`python cluster_fixtures.py`)."""

    def __init__(self, cluster: Cluster, service: str, *args: str) -> None:
        self.cluster = cluster
        self.service = service
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cluster.data_dir / f"{service}-{'-'.join(args) or 'one'}.log"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start it and wait until it says it is ready (its consumers exist)."""
        ready = self.log.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE), self.service, str(self.cluster.data_dir)]
        cmd += [self.cluster.url, str(ready), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.service} {self.args} did not start: {tail}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: nothing finished, nothing acknowledged, like a crashed machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _partitioned() -> bool:
    from engine.services.recommender import RecommenderService

    return "holder" in inspect.signature(RecommenderService.__init__).parameters


PARTITIONED = _partitioned()
"""True once recommender replicas split the work through broker partitions and leases
(engine.partitions: a replica has a lease `holder`); then `start_recommenders` starts N
identical replicas and a dead one's partitions move to the others."""


def start_recommenders(cluster: Cluster, n: int) -> list[ServiceProcess]:
    """`n` recommender replicas on the cluster, each ready. Before partitions: replica i of n,
    each with its own durable consumer that reads every event and keeps its share of the users;
    with them (`PARTITIONED`): n replicas sharing the partitions through leases."""
    # Partitioned, `--replicas N --replica I` only sizes a replica's first lease round.
    return [ServiceProcess(cluster, "recommender", str(n), str(i)).start() for i in range(n)]


@contextlib.contextmanager
def running(processes: list[ServiceProcess]) -> Iterator[list[ServiceProcess]]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield processes
    finally:
        for p in processes:
            p.stop()


# -- the child process ------------------------------------------------------------------------
async def _serve(service: str, data_dir: Path, url: str, ready: Path, extra: list[str]) -> None:
    from engine.bus import Bus
    from engine.credstore import for_component
    from engine.runner import SERVICES
    from engine.settings import BrokerSettings, RecommenderOptions, ServiceSettings, Settings

    broker = BrokerSettings(nats_url=url, data_dir=data_dir, embedded=True)
    reco = RecommenderOptions()
    if service == "recommender" and len(extra) == 2:
        reco = RecommenderOptions(replicas=int(extra[0]), replica=int(extra[1]))
    settings = Settings(
        broker=broker, recommender=reco, services=ServiceSettings(ack_wait_s=ACK_WAIT_S)
    )
    # the runner minus its provisioning (the test provisioned R3 streams; see the report)
    bus = await Bus.connect(
        url, f"nerve-{service}", timeout=10, credential=for_component(broker, service)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    built = await SERVICES[service](bus, settings)
    task = asyncio.create_task(built.run(stop))
    waiter = asyncio.create_task(built.ready.wait())
    await asyncio.wait([task, waiter], return_when="FIRST_COMPLETED")
    if task.done():  # it failed while starting: the test reads why in the log
        await bus.close()
        task.result()
        raise RuntimeError(f"{service} stopped before it was ready")
    ready.write_text(str(os.getpid()))
    try:
        await task
    finally:
        await bus.close()


if __name__ == "__main__":
    name, directory, urls, ready_file, *rest = sys.argv[1:]
    asyncio.run(_serve(name, Path(directory), urls, Path(ready_file), rest))

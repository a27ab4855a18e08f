"""On a real 3-node cluster (issue 14 parts 2-3 findings): the runner's provisioning keeps the
replicas `nerve init --replicas 3` set, a service's own credential starts a service without
provisioning, and a data dir's cluster is adopted and reloaded like the embedded broker.

Before: provisioning with the default settings (what `nerve up` / `nerve run` do) scaled every
stream, bucket and object store back to one replica; `nerve run recommender --nats-creds
recommender.json` failed with a permissions violation; the broker's adoption took the
comma-separated URL list for one URL and never found the cluster running; `reload` signalled
only the first node, so the others kept refusing a new credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

from engine import credstore
from engine.broker import EmbeddedBroker, reload, running_url
from engine.bus import Bus, NoAnswer, accepts
from engine.bus.provision import BUCKETS, OBJECT_STORES
from engine.cluster import Cluster
from engine.runner import run
from engine.settings import BrokerSettings, Settings, StreamSettings
from nerve_client.credentials import Credential
from nerve_client.subjects import OPS_REQUEST_SUBJECT
from tests.cluster_fixtures import cluster

__all__ = ["cluster"]  # the fixture, imported for pytest


async def replicas(bus: Bus) -> dict[str, int]:
    """Every stream's replica count, KV and object stores included."""
    names = ["ACTIVITY", "RECOMMENDATIONS", "CRM"]
    names += [f"KV_{b.name}" for b in BUCKETS] + [f"OBJ_{n}" for n, _ in OBJECT_STORES]
    return {n: (await bus._js.stream_info(n)).config.num_replicas or 0 for n in names}


async def admin_bus(c: Cluster) -> Bus:
    return await Bus.connect(c.url, "test-admin", timeout=10, credential=c.credential("admin"))


async def test_provisioning_without_replicas_keeps_the_clusters_three(cluster: Cluster) -> None:
    bus = await admin_bus(cluster)
    try:
        assert set((await replicas(bus)).values()) == {3}
        report = await bus.provision()  # what the runner does before its services start
        assert not any("num_replicas" in fields for fields in report.updated.values())
        assert set((await replicas(bus)).values()) == {3}
        await bus.provision(StreamSettings(lease_s=10))  # another setting: replicas still kept
        assert set((await replicas(bus)).values()) == {3}
    finally:
        await bus.close()


async def test_a_service_credential_runs_its_service_without_provisioning(
    cluster: Cluster,
) -> None:
    """`nerve run ops --nats-url <list> --nats-creds ops.json`: no admin call, the service
    runs (the runner's stop signal ends it), and the servers logged no violation."""
    creds = credstore.path_of(cluster.data_dir, "ops")
    broker = BrokerSettings(nats_url=cluster.url, nats_creds=creds, data_dir=cluster.data_dir)
    logs = [n.log for n in cluster.nodes]
    start = [log.stat().st_size for log in logs]
    task = asyncio.create_task(run(Settings(broker=broker), ("ops",)))
    bus = await admin_bus(cluster)
    try:
        answer = b""
        while not answer and not task.done():  # the ops service answers once it runs
            with contextlib.suppress(NoAnswer):
                answer = await bus.request(OPS_REQUEST_SUBJECT, b"{}", 1.0)
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
    finally:
        await bus.close()
        if not task.done():
            signal.raise_signal(signal.SIGTERM)
    assert await asyncio.wait_for(task, 20) == signal.SIGTERM
    for log, at in zip(logs, start, strict=True):
        text = log.read_bytes()[at:].decode(errors="replace")
        assert "Violation" not in text, [ln for ln in text.splitlines() if "Violation" in ln]


async def test_the_data_dirs_cluster_is_adopted_and_every_node_reloaded(cluster: Cluster) -> None:
    """`nerve --data-dir <the cluster's>` finds the running cluster (its URL list), connects
    as admin to it, and `nerve credentials add` (issue + reload) reaches every node."""
    assert running_url(cluster.data_dir) == cluster.url
    adopted = EmbeddedBroker(BrokerSettings(data_dir=cluster.data_dir))
    assert adopted.start(timeout=5) == cluster.url
    try:
        assert adopted.pid is None  # adopted, not started
        admin_url = adopted.admin_url
        assert admin_url.count("@") == len(cluster.nodes)  # the credential in every URL
        bus = await Bus.connect(admin_url, "test-adopted", timeout=10)
        await bus.close()
    finally:
        adopted.stop()  # leaves the cluster running
    assert running_url(cluster.data_dir) == cluster.url
    cred = Credential.load(credstore.issue(cluster.data_dir, "robust-reader", "reader"))
    assert reload(cluster.data_dir) == cluster.nodes[0].pid
    for node in cluster.nodes:  # each node must accept the new user on its own
        for _ in range(100):
            if await accepts(node.url, cred, timeout=1.0):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"{node.name} never reloaded its authorization")

"""Robustness findings of issue 14 (parts 2-3) on a real nats-server: a delivery lost on the
way is never acknowledged by a later cumulative ack, and a service credential that finds the
broker unprovisioned says what is missing in one line.

Before: `PushConsumer` and `PartitionedPush` acknowledge with `AckPolicy.ALL`; when the client
dropped a delivery (a slow consumer) and a later one arrived, acknowledging the later one
acknowledged the dropped one, which was never processed. And `nerve run <service>
--nats-creds <service>.json` tried to provision with the service's credential: a permissions
violation, then a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from engine import credstore
from engine.broker import EmbeddedBroker
from engine.bus import Bus
from engine.bus.consumer import Delivery, PushConsumer
from engine.bus.partitioned import PartitionedPush
from engine.runner import run
from engine.services.ops import OpsService
from engine.settings import BrokerSettings, Settings
from nerve_client.errors import ConfigError

STREAM = "ROBUSTGAP"
EVENTS = 10


@contextlib.asynccontextmanager
async def ops_running(bus: Bus) -> AsyncIterator[OpsService]:
    """The ops service on `bus` until the block ends: what answers the gateway's `/ops/state`,
    `/metrics` gauges, `/v1/stats` and `/v1/experiments` (for tests that run a gateway)."""
    service = OpsService(bus)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Worker:
    """A service's loop in small: takes deliveries in arrival order, processes each, then
    acknowledges it (cumulatively). Its first delivery blocks the event loop for a moment, as a
    long batch does, so the deliveries behind it pile up in the client."""

    def __init__(self) -> None:
        self.consumer: PushConsumer | None = None
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.processed: list[bytes] = []

    def on_message(self, d: Delivery) -> None:
        if not self.processed and self.queue.empty():
            time.sleep(0.3)  # the loop is busy: what the server pushes waits in the socket
        self.queue.put_nowait(d)

    async def run(self) -> None:
        while True:
            d = await self.queue.get()
            self.processed.append(d.data)
            assert self.consumer is not None
            await self.consumer.ack(d)


@contextlib.asynccontextmanager
async def gap_stream(nc: NATS) -> AsyncIterator[None]:
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(STREAM)
    await js.add_stream(StreamConfig(name=STREAM, subjects=["robustgap.>"]))
    try:
        yield
    finally:
        await js.delete_stream(STREAM)


async def lose_one_then_recover(
    nc: NATS, make: Callable[[Worker], PushConsumer], consumer_name: str
) -> None:
    """Ten events pushed at once into a client that holds one: most are dropped on the way;
    an eleventh arrives after them. Every event must be processed before the ack floor
    passes it."""
    js = nc.jetstream()
    worker = Worker()
    consumer = worker.consumer = make(worker)
    partitioned = isinstance(consumer, PartitionedPush)
    if partitioned:
        await consumer.start()  # the partition's place is kept from here; bound on `add`
    for i in range(EVENTS):
        await js.publish(f"robustgap.e{i}", f"e{i}".encode())
    task = asyncio.create_task(worker.run())
    try:
        await (consumer.add(0) if isinstance(consumer, PartitionedPush) else consumer.start())
        for _ in range(1000):
            if worker.processed:
                break
            await asyncio.sleep(0.02)
        assert worker.processed, "nothing was delivered"
        consumer.pending_msgs = 10_000  # from now on the client keeps up
        last = (await js.publish("robustgap.e10", b"e10")).seq
        for _ in range(1000):  # until the floor passes the last event (or 20 s)
            with contextlib.suppress(Exception):
                info = await js.consumer_info(STREAM, consumer_name)
                if info.ack_floor and info.ack_floor.stream_seq >= last:
                    break
            await asyncio.sleep(0.02)
        assert consumer.restarts >= 1, "no delivery was lost: the test did not test"
        assert set(worker.processed) == {f"e{i}".encode() for i in range(EVENTS + 1)}
    finally:
        task.cancel()
        await consumer.stop()


async def test_a_push_consumer_never_acknowledges_past_a_lost_delivery(nc: NATS) -> None:
    def make(w: Worker) -> PushConsumer:
        return PushConsumer(
            nc.jetstream(), STREAM, "robust-push", w.on_message, deliver_new=False,
            ack_wait=60, pending_msgs=1,
        )  # fmt: skip

    async with gap_stream(nc):
        await lose_one_then_recover(nc, make, "robust-push")


async def test_a_partition_restarts_from_its_floor_after_a_lost_delivery(nc: NATS) -> None:
    def make(w: Worker) -> PushConsumer:
        return PartitionedPush(
            nc.jetstream(), STREAM, "robust", w.on_message, partitions=0, ack_wait=60,
            pending_msgs=1,
        )  # fmt: skip

    async with gap_stream(nc):
        await lose_one_then_recover(nc, make, "robust-p00")


async def test_a_service_credential_on_an_empty_broker_names_what_is_missing(
    tmp_path: Path,
) -> None:
    """Nothing provisioned, `nerve run recommender --nats-creds recommender.json`: one line
    that names the missing streams and `nerve init`, no traceback; nothing was created."""
    with EmbeddedBroker(BrokerSettings(data_dir=tmp_path)) as empty:
        assert empty.url is not None
        creds = credstore.path_of(tmp_path, "recommender")
        broker = BrokerSettings(nats_url=empty.url, nats_creds=creds, data_dir=tmp_path / "x")
        with pytest.raises(ConfigError, match=r"lacks ACTIVITY, .*KV_profiles.*`nerve init`"):
            await run(Settings(broker=broker), ("recommender",))
        cli = [sys.executable, "-m", "engine.cli", "--nats-url", empty.url]
        cli += ["--nats-creds", str(creds), "run", "recommender"]
        done = await asyncio.to_thread(
            subprocess.run, cli, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "nerve init" in lines[0], done.stderr
        assert "Traceback" not in done.stderr

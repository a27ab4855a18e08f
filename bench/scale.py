#!/usr/bin/env python3
"""Scale-out benchmark: the recommender with 1, 2 and 4 replicas on a 3-node JetStream cluster.

Set-up (temporary data dir): `engine.cluster.Cluster` with 3 nats-servers, every stream, bucket
and object store provisioned with 3 replicas; a catalogue of --items items in 50 categories, an
ALS model (16 factors) for `home` and `similar` and popularity for `trending`. Each replica is a
child process (this file, `child`) running `RecommenderService` with the recommender's own
credential; one profiles service runs beside them.

For each replica count N: start N replicas, publish a burst of --events `item_viewed` events by
--users users straight to ACTIVITY (what the gateway stores), and time from the first publish
until every recommender consumer has nothing pending (events/s). Each replica reports how many
deliveries it received (its share of the stream: ~1/N with broker partitions, 1 when every
replica reads everything) and its CPU seconds. Then, with 2 replicas, one is killed with SIGKILL
and events keep coming for its users: the rebalance time is from the kill until the first list
the survivor publishes for one of them (never, with a fixed split: that user waits for the dead
replica's restart; the bench waits --patience seconds).

Measured in the same run: the raw publish rate of the cluster (R3 ACTIVITY), the CPU cost of
one event in the recommender (replica CPU seconds / events delivered to it), and the profiles
bucket's bytes per user: the inputs of the README's paper model for 20,000 events/s and 16
million customers. On a 2-core machine more replicas cannot be faster: the ratio is reported
as measured. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.broker import _die_with_parent  # noqa: E402
from engine.bus import Bus, Outgoing, connect  # noqa: E402
from engine.cluster import Cluster  # noqa: E402
from engine.recommender.catalog import Item, item_subject  # noqa: E402
from engine.settings import StreamSettings  # noqa: E402
from models import Interactions, make  # noqa: E402
from models.base import pack  # noqa: E402
from nerve_client.errors import BrokerDown  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402
from nerve_client.subjects import activity_subject, user_token  # noqa: E402

SLOTS = """
[slots.home]
k = 10
[slots.home.rules]
max_per_category = 3
[slots.similar]
kind = "similar"
k = 10
fallback = "trending"
[slots.trending]
k = 10
min_history = 0
"""


def item_id(i: int) -> str:
    return f"item-{i:05d}"


async def setup(bus: Bus, items: int, tmp: Path) -> None:
    await bus.provision(StreamSettings(replicas=3))
    await bus.publish(
        [
            Outgoing(
                item_subject(item_id(i)),
                Item(item_id=item_id(i), name=f"Item {i}", category=f"c{i % 50}")
                .model_dump_json()
                .encode(),
                uuid7(),
            )
            for i in range(items)
        ]
    )
    rng = np.random.default_rng(7)
    users, cols = [], []
    for u in range(5000):
        cluster = rng.integers(0, max(1, items // 200))
        for j in rng.integers(0, 200, size=8):
            users.append(f"t{u}")
            cols.append(item_id(int(min(items - 1, cluster * 200 + j))))
    data = Interactions.from_triples(users, cols, columns=[item_id(i) for i in range(items)])
    als = make("als", factors=16, iterations=5).fit(data)
    registry = await bus.registry()
    for slot, model in (("home", als), ("similar", als), ("trending", make("popular").fit(data))):
        version = f"{model.name}-{slot}-{uuid7()[-8:]}"
        artifact = pack(model.save(tmp / version))
        card = {"version": version, "model": model.name, "created_at": time.strftime("%FT%TZ")}
        await registry.publish(version, card, artifact, slot)


def view(i: int, users: int, items: int) -> Outgoing:
    user = f"u{i % users:06d}"
    item = item_id((i * 7919) % items)
    event = {
        "id": uuid7(),
        "type": "item_viewed",
        "schema_version": 1,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "user_id": user,
        "item_id": item,
        "properties": {"category": f"c{(i * 7919) % items % 50}"},
    }
    subject = activity_subject(user_token(user, None), "item_viewed")
    return Outgoing(subject, json.dumps(event).encode(), event["id"])


class Replica:
    """A recommender (or profiles) child process; its report is read after it stops."""

    def __init__(self, cluster: Cluster, service: str, n: int, i: int) -> None:
        self.report = cluster.data_dir / f"{service}-{n}-{i}-{uuid7()[-6:]}.json"
        ready = self.report.with_suffix(".ready")
        cmd = [sys.executable, __file__, "child", service, str(cluster.data_dir), cluster.url]
        cmd += [str(self.report), str(n), str(i)]
        log = open(cluster.data_dir / f"{service}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        log.close()
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{service} {i}/{n} did not start; see {log.name}")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        """Its last report (written every 0.25 s), then SIGTERM (SIGKILL after 10 s)."""
        time.sleep(0.5)
        found = dict(json.loads(self.report.read_text())) if self.report.exists() else {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return found


async def drained(bus: Bus, prefix: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = [c for c in await bus.consumer_lags("ACTIVITY") if c.name.startswith(prefix)]
        if lags and all(c.pending == 0 and c.ack_pending == 0 for c in lags):
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{prefix} consumers never caught up")


async def forget_consumers(bus: Bus, js: Any, prefix: str) -> None:
    """Delete a finished run's consumers: the next run's must not wait for their backlog."""
    for stream in ("ACTIVITY", "CRM"):
        for c in await bus.consumer_lags(stream):
            if c.name.startswith(prefix):
                await js.delete_consumer(stream, c.name)


async def burst(bus: Bus, start: int, n: int, users: int, items: int) -> tuple[float, float]:
    """Publish events start..start+n; (publish rate, first publish time)."""
    t0 = time.perf_counter()
    for s in range(start, start + n, 500):
        chunk = [view(i, users, items) for i in range(s, min(start + n, s + 500))]
        for _attempt in range(20):  # a busy machine: send the same ids again (deduplicated)
            try:
                await bus.publish(chunk)
                break
            except BrokerDown:
                await asyncio.sleep(0.5)
    return n / (time.perf_counter() - t0), t0


async def run_n(
    cluster: Cluster, bus: Bus, js: Any, n: int, args: argparse.Namespace, seq: list[int]
) -> dict[str, Any]:
    replicas = [Replica(cluster, "recommender", n, i) for i in range(n)]
    try:
        await asyncio.sleep(args.settle)  # consumers bound (and, partitioned, leases settled)
        publish_rate, t0 = await burst(bus, seq[0], args.events, args.users, args.items)
        seq[0] += args.events
        done = await drained(bus, "recommender")
    finally:
        reports = [r.stop() for r in replicas]
    await forget_consumers(bus, js, "recommender")
    delivered = [int(r.get("events", 0)) for r in reports]
    cpu = sum(float(r.get("cpu_s", 0)) for r in reports)
    return {
        "replicas": n,
        "events_per_s": round(args.events / (done - t0)),
        "publish_per_s": round(publish_rate),
        "shares": [round(d / args.events, 2) for d in delivered],
        "cpu_ms_per_event": round(1000 * cpu / max(1, sum(delivered)), 3),
        "cpu_ms_per_published_event": round(1000 * cpu / args.events, 3),
    }


async def rebalance(
    cluster: Cluster, bus: Bus, args: argparse.Namespace, seq: list[int]
) -> float | None:
    """Kill one of two replicas, publish a burst for every user; seconds from the kill until
    every recommender consumer has nothing pending (the dead one's share served by the
    survivor), or None when that did not happen within --patience."""
    a, b = Replica(cluster, "recommender", 2, 0), Replica(cluster, "recommender", 2, 1)
    await asyncio.sleep(args.settle)
    b.proc.kill()
    b.proc.wait()
    killed = time.perf_counter()
    await burst(bus, seq[0], args.users, args.users, args.items)
    seq[0] += args.users
    try:
        done: float | None = await drained(bus, "recommender", args.patience)
    except RuntimeError:
        done = None
    a.stop()
    return round(done - killed, 2) if done is not None else None


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nerve-scale-"))
    cluster = Cluster(tmp / "data", 3)
    cluster.start()
    try:
        nc = await connect(cluster.url, "bench", timeout=10, credential=cluster.credential("admin"))
        bus = Bus(nc)
        await setup(bus, args.items, tmp)
        (cluster.data_dir / "slots.toml").write_text(SLOTS)
        profiles = Replica(cluster, "profiles", 1, 0)
        seq = [0]
        rows = [await run_n(cluster, bus, nc.jetstream(), n, args, seq) for n in args.replicas]
        await drained(bus, "profiles")
        kv = await bus.stream_state("KV_profiles")
        profiles.stop()
        users_seen = min(args.users, seq[0])
        per_user = (kv.bytes / users_seen) if kv else 0.0
        heal = await rebalance(cluster, bus, args, seq)
        await nc.close()
    finally:
        cluster.stop()
    show(rows, per_user, heal, args)


def show(rows: list[dict[str, Any]], per_user: float, heal: float | None, args: Any) -> None:
    base = rows[0]["events_per_s"]
    print(
        f"\n{'replicas':>8} {'events/s':>9} {'vs 1':>5} {'publish/s':>10} {'cpu ms/ev':>9}  shares"
    )
    for r in rows:
        print(
            f"{r['replicas']:>8} {r['events_per_s']:>9,} {r['events_per_s'] / base:>5.2f} "
            f"{r['publish_per_s']:>10,} {r['cpu_ms_per_published_event']:>9}  {r['shares']}"
        )
    print(f"profiles bucket: {per_user:,.0f} bytes per user (one copy; R3 stores three)")
    print(
        f"rebalance after a replica's SIGKILL: {heal if heal is not None else 'never'} s"
        f" (waited up to {args.patience:g} s)"
    )
    print(
        json.dumps(
            {
                "bench": "scale",
                "rows": rows,
                "profile_bytes_per_user": round(per_user),
                "rebalance_s": heal,
                "events": args.events,
                "users": args.users,
                "items": args.items,
                "cores": os.cpu_count(),
            }
        )
    )


# -- the child ----------------------------------------------------------------------------------
async def child(service: str, data_dir: Path, url: str, report: Path, n: int, i: int) -> None:
    from engine.credstore import for_component
    from engine.runner import SERVICES
    from engine.settings import BrokerSettings, RecommenderOptions, Settings

    broker = BrokerSettings(nats_url=url, data_dir=data_dir, embedded=True)
    reco = RecommenderOptions(replicas=n, replica=i) if service == "recommender" else None
    settings = Settings(broker=broker, recommender=reco or RecommenderOptions())
    bus = await Bus.connect(url, f"nerve-{service}", credential=for_component(broker, service))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    built: Any = await SERVICES[service](bus, settings)
    task = asyncio.create_task(built.run(stop))
    await asyncio.wait(
        [task, asyncio.create_task(built.ready.wait())], return_when="FIRST_COMPLETED"
    )
    if task.done():  # failed while starting: its traceback is in the log, no ready file
        task.result()
        raise RuntimeError(f"{service} stopped before it was ready")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    stats = getattr(built, "stats", None)

    async def reporting() -> None:  # written as it goes: a replica may be killed, not stopped
        while True:
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            tmp = report.with_suffix(".tmp")
            tmp.write_text(json.dumps({"events": getattr(stats, "events", 0), "cpu_s": cpu}))
            tmp.replace(report)
            await asyncio.sleep(0.25)

    reporter = asyncio.create_task(reporting())
    report.with_suffix(".ready").write_text("")
    try:
        await task
    finally:
        reporter.cancel()
        await bus.close()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events per replica count")
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--patience", type=float, default=30.0, help="seconds to wait for failover")
    p.add_argument("--settle", type=float, default=5.0, help="seconds for replicas to settle")
    p.add_argument("--quick", action="store_true", help="small sizes: under two minutes")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.users, args.items, args.patience = 2000, 500, 1000, 20.0
        args.settle = 3.0
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        svc, d, u, r, n, i = sys.argv[2:8]
        asyncio.run(child(svc, Path(d), u, Path(r), int(n), int(i)))
    else:
        asyncio.run(main(parse(sys.argv[1:])))

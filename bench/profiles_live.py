#!/usr/bin/env python3
"""Live projection benchmark: how fast one profiles service drains a backlog of ACTIVITY.

For each round, on a fresh stream holding the same --events events:

  raw        plain nats-py: a durable pull consumer, fetch(500) and ack every message
  realistic  engine.services.profiles.ProfileService on a generated history (time-ordered, so
             a batch holds several events of the same users)
  worst      the same service on events dealt round-robin over --users users (every event of a
             batch touches a different profile: no coalescing)

The service does per batch what the raw loop does, plus: decode, fold, load and seal the touched
profiles, compare-and-set write them, then acknowledge. Prints a table and a JSON line.

The embedded broker refuses anonymous connections: every path, the service included, connects
as its `admin` user (`EmbeddedBroker.admin_url`), which the resets need (they delete and
re-create streams); admin may do everything, as the anonymous user could before.

  python bench/profiles_live.py               # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, connect, provision  # noqa: E402
from engine.profiles.store import ProfileStore  # noqa: E402
from engine.services.profiles import ProfileService  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from engine.synth import generate  # noqa: E402
from nerve_client.events import parse_event  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402


async def reset(nc: Any, events: list[Any]) -> None:
    js = nc.jetstream()
    for name in ("ACTIVITY", "KV_profiles", "KV_userkeys"):
        await js.delete_stream(name)
    await provision(js)
    await Bus(nc).publish_events(events)


async def raw(nc: Any, n: int) -> float:
    from nats.js.api import AckPolicy, ConsumerConfig

    js = nc.jetstream()
    await js.add_consumer(
        "ACTIVITY",
        ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    sub = await js.pull_subscribe_bind("raw", "ACTIVITY")
    started, seen = time.perf_counter(), 0
    while seen < n:
        for m in await sub.fetch(500, timeout=5):
            await m.ack()
            seen += 1
    return n / (time.perf_counter() - started)


async def service(nc: Any, n: int) -> float:
    bus = Bus(nc)
    svc = ProfileService(bus, await ProfileStore.open(bus))
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(svc.run(stop))
    while svc.stats.applied < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    rate = n / (time.perf_counter() - started)
    stop.set()
    await task
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=2_000, help="users of the worst case")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nerve-live-"))
    try:
        gen = work / "gen.jsonl"
        generate(gen, users=max(100, args.events // 17), days=30, seed=5)
        realistic = [
            parse_event(orjson.loads(x)) for x in gen.read_bytes().splitlines()[: args.events]
        ]
        worst = [
            parse_event(
                {
                    "id": uuid7(),
                    "type": "item_viewed",
                    "time": e.time.isoformat(),
                    "user_id": f"w{i % args.users}",
                    "item_id": e.item_id or "x",
                    "properties": {"category": "funds"},
                }
            )
            for i, e in enumerate(realistic)
        ]
        results: dict[str, list[float]] = {}

        async def run_all(url: str) -> None:
            nc = await connect(url, "bench-live")
            await provision(nc.jetstream())
            for r in range(args.rounds):
                for name, events, fn in (
                    ("raw", realistic, raw),
                    ("realistic", realistic, service),
                    ("worst", worst, service),
                ):
                    await reset(nc, events)
                    rate = await fn(nc, len(events))
                    results.setdefault(name, []).append(rate)
                    print(
                        f"  round {r + 1}/{args.rounds} {name:10} {rate:10,.0f} ev/s",
                        file=sys.stderr,
                        flush=True,
                    )
            await nc.close()

        with EmbeddedBroker(BrokerSettings(data_dir=work / "store")) as broker:
            asyncio.run(run_all(broker.admin_url))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(results["raw"])
    print(
        f"\nLive projection of {args.events:,} events, medians of {args.rounds} rounds; "
        "ratio = median / raw median"
    )
    print(f"{'path':10} {'median ev/s':>12} {'min':>10} {'max':>10} {'ratio':>6}")
    summary = {}
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"{name:10} {med:12,.0f} {min(rates):10,.0f} {max(rates):10,.0f} {med / base:6.2f}")
        summary[name] = {"median": round(med), "ratio": round(med / base, 3)}
    print(json.dumps({"events": args.events, "results": summary}))


if __name__ == "__main__":
    main()

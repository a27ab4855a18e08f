#!/usr/bin/env python3
"""Signals benchmark: from the deciding event to the CRM, while the engine ingests 1,000/s.

Set-up (temporary data dir): an embedded nats-server; the demo bank's 41-item catalogue with an
item kNN model (home, similar) and a popularity model (trending); `nerve --nats-url URL up`
in its own process (gateway, profiles, warehouse, recommender, signals) with the default slots
file, whose `loan` topic needs two loan simulations and one loan page view in 7 days.

Load: --rate events/s (1,000) of page and product views by --users users, published from this
process. Probes: every 200 ms a new user with marketing consent views a loan and simulates it
once, then simulates again: that second simulation is the deciding event. A CRM consumer built
on the public client (`nerve_client.NerveClient.interest_signals`, a durable consumer) receives
the signals; latency = its arrival - the deciding event's publish. Goal: p99 < 100 ms.

Who connects as whom: this process publishes the load and the probes straight to ACTIVITY as
the embedded broker's `admin` user (`EmbeddedBroker.admin_url`): what the gateway would have
stored, and the probes' `consent_updated` (marketing consent of record) is a server-side
producer's, which no site key may send. `nerve up` runs on the broker's data dir without
--nats-url, so it adopts the running broker and each service connects with its own credential;
the CRM consumer holds a `crm` credential issued before the broker starts (what `nerve
credentials add bench-crm --role crm` does), as an outside CRM service would.

  python bench/signals.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import credstore  # noqa: E402
from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, Outgoing, Publisher, connect  # noqa: E402
from engine.recommender.catalog import Item, item_subject  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from engine.synth import CATALOGUE  # noqa: E402
from models import Interactions, make  # noqa: E402
from models.base import pack  # noqa: E402
from nerve_client.client import NerveClient  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402
from nerve_client.subjects import activity_subject  # noqa: E402


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ev(etype: str, user: str, item: str | None = None, **props: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": uuid7(),
        "type": etype,
        "time": now_iso(),
        "user_id": user,
        "properties": props,
    }
    if item:
        e["item_id"] = item
    return e


async def setup(nc: Any, tmp: Path) -> None:
    bus = Bus(nc)
    await bus.provision()
    items = [
        Item(item_id=p.item_id, name=p.name, category=p.category, value=p.value) for p in CATALOGUE
    ]
    await bus.publish(
        [Outgoing(item_subject(i.item_id), i.model_dump_json().encode(), uuid7()) for i in items]
    )
    rng = np.random.default_rng(3)
    users, cols = [], []
    for u in range(3000):
        for j in rng.integers(0, len(items), size=5):
            users.append(f"t{u}")
            cols.append(items[int(j)].item_id)
    data = Interactions.from_triples(users, cols)
    registry = await bus.registry()
    for slot, model in (
        ("home", make("itemknn").fit(data)),
        ("similar", make("itemknn").fit(data)),
        ("trending", make("popular").fit(data)),
    ):
        version = f"{model.name}-{slot}-{uuid7()[-8:]}"
        card = {"version": version, "model": model.name, "created_at": now_iso()}
        await registry.publish(version, card, pack(model.save(tmp / version)), slot)


async def load(nc: Any, rate: float, seconds: float, users: int, stop: asyncio.Event) -> int:
    pipeline = Bus(nc).publisher.pipeline
    rng = np.random.default_rng(5)
    started, sent = time.perf_counter(), 0
    futures = []
    while not stop.is_set() and time.perf_counter() - started < seconds:
        due = started + sent / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = f"user-{int(rng.integers(0, users))}"
        p = CATALOGUE[int(rng.integers(0, len(CATALOGUE)))]
        e = (
            ev("item_viewed", user, p.item_id, category=p.category)
            if sent % 2
            else ev("page_viewed", user, page_type="category")
        )
        futures.append(
            await pipeline.publish(
                activity_subject(user, e["type"]), orjson.dumps(e), {"Nats-Msg-Id": e["id"]}
            )
        )
        sent += 1
        if len(futures) > 2000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    return sent


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nerve-signals-"))
    data_dir = tmp / "data"
    crm_credential = credstore.issue(data_dir, "bench-crm", "crm")
    broker = EmbeddedBroker(BrokerSettings(data_dir=data_dir))
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    log_path = tmp / "nerve.log"
    try:
        assert broker.url
        nc = await connect(broker.admin_url, "bench", timeout=10)
        await setup(nc, tmp)
        port = 19000 + os.getpid() % 1000
        nerve = Path(sys.executable).with_name("nerve")
        common = [str(nerve), "--data-dir", str(data_dir)]
        up = [*common, "up", "--site-keys", "bench-site-key", "--port", str(port)]
        if args.split:  # signals in a process of its own
            up += ["--services", "gateway,profiles,warehouse,recommender"]
            procs.append(
                subprocess.Popen(
                    [*common, "run", "signals"],
                    stdout=subprocess.DEVNULL,
                    stderr=log_path.with_suffix(".signals").open("wb"),
                    cwd=ROOT,
                )
            )
        procs.append(
            subprocess.Popen(up, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"), cwd=ROOT)
        )
        await asyncio.sleep(4)  # services start, models load
        if any(proc.poll() is not None for proc in procs):
            raise SystemExit("nerve exited at start (its error lines follow)")
        publisher = Bus(nc).publisher
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        client = await NerveClient.connect(broker.url, "bench-crm", credentials=crm_credential)

        async def crm() -> None:
            async for signal in client.interest_signals(topic="loan", durable="bench-crm"):
                t0 = sent_at.get(signal.user_id)
                if t0 is not None:
                    latencies.append((time.perf_counter() - t0) * 1000)

        consumer = asyncio.create_task(crm())
        stop = asyncio.Event()
        background = asyncio.create_task(load(nc, args.rate, args.seconds, args.users, stop))
        await asyncio.sleep(2)  # the load is flowing
        probes = 0
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds - 4:
            user = f"probe-{probes}"
            probes += 1
            await _raw(publisher, user)
            await asyncio.sleep(0.05)
            deciding = ev(
                "simulator_used",
                user,
                "loan-personal",
                simulator="loan",
                amount=12000,
                term_months=48,
            )
            sent_at[user] = time.perf_counter()
            await _send(publisher, [deciding])
            await asyncio.sleep(0.15)
        sent = await background
        await asyncio.sleep(2)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await client.close()
        await nc.close()
        out = {
            "split": args.split,
            "rate": args.rate,
            "load_events": sent,
            "achieved_rate": round(sent / args.seconds),
            "probes": probes,
            "signals": len(latencies),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
        }
        print(
            f"load {sent:,} events in {args.seconds:g}s ({out['achieved_rate']:,}/s); "
            f"{probes} probes, {len(latencies)} signals received; deciding event -> CRM: "
            f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, max {out['max_ms']} ms"
            " (goal p99 < 100)"
        )
        print(json.dumps(out))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if log_path.exists():
            errors = [x for x in log_path.read_text().splitlines() if "rror" in x]
            if errors:
                print("nerve up logged errors:", *errors[:5], sep="\n")
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _send(publisher: Publisher, events: list[dict[str, Any]]) -> None:
    await publisher.publish(
        [
            Outgoing(activity_subject(e["user_id"], e["type"]), orjson.dumps(e), e["id"])
            for e in events
        ]
    )


async def _raw(publisher: Publisher, user: str) -> None:
    await _send(
        publisher,
        [
            ev("consent_updated", user, analytics=True, personalization=True, marketing=True),
            ev("item_viewed", user, "loan-personal", category="loans"),
            ev(
                "simulator_used",
                user,
                "loan-personal",
                simulator="loan",
                amount=9000,
                term_months=36,
            ),
        ],
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--split", action="store_true", help="Run signals in its own process")
    asyncio.run(main(p.parse_args()))

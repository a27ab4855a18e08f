#!/usr/bin/env python3
"""Ingest benchmark: events per second into ACTIVITY, each path beside the raw nats-py rate.

Paths, measured in the same run, interleaved round by round, each on a freshly created stream:

  raw          plain nats-py `publish_async` of the pre-encoded events, with a unique
               Nats-Msg-Id (what deduplication needs), all acks awaited: the ceiling
  raw-noid     the same without Nats-Msg-Id (what deduplication costs)
  publisher    engine.bus.Publisher from validated Envelope objects (serialisation included),
               batches of 1000 submitted back to back, acks settled one batch behind
  import       engine.importer.import_file on a JSON Lines file (read, parse, validate,
               serialise, publish, checkpoint): what `nerve import` runs
  http         POST /v1/events, batches of --batch events from --clients concurrent clients,
               against a real `nerve run gateway` (uvicorn, one process) in a subprocess, as a
               server-side producer (`Authorization: Bearer` with an internal token): the
               generated history names signed-in users and holds purchases and consent of
               record, which a public site key may not send (a site key sends a visitor's own
               behaviour, a known user's only with an identity token); what posts such a mix
               is a bank's backend forwarding its events. Server-side producers have no rate
               limit, so none is configured. The gateway refuses a live event stamped more
               than 7 days before it arrives (older history goes in with `nerve import`, the
               import path), so the http bodies carry the same events with their times moved
               into the last `LIVE_WINDOW` (order kept): a backend forwards what just happened.

The whole set is repeated for each --sync setting (the embedded server's JetStream
sync_interval), so the table also shows what fsync on every write costs. HTTP runs only for
the first sync setting unless --http-all-sync.

Output: a table (median, min, max over --rounds; ratio = median / median of raw in the same
sync setting) and a last line of JSON. The machine is shared and noisy: read ratios.

Connections: this process is the embedded broker's `admin` user (`EmbeddedBroker.admin_url`;
the paths other than http publish straight to the broker, and the resets delete streams); the
gateway runs on the broker's data dir without --nats-url, so it adopts the running broker and
connects with its own `gateway` credential, as in `nerve up`. The internal token reaches the
gateway in its environment (NERVE_INTERNAL_TOKENS), not on its command line.

  python bench/ingest.py                       # ~2-3 minutes on 2 cores
  python bench/ingest.py --events 50000 --rounds 2 --sync 1s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, Outgoing, connect, provision  # noqa: E402
from engine.importer import import_file  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from engine.synth import generate  # noqa: E402
from nerve_client.events import parse_event_json  # noqa: E402

SITE_KEY = "bench-site-key"
INTERNAL_TOKEN = secrets.token_urlsafe(32)
LIVE_WINDOW = timedelta(days=6)
"""The http bodies' events lie within this much before the run (the gateway allows 7 days)."""


def as_live(lines: list[bytes]) -> list[dict[str, Any]]:
    """The events of `lines` with their times moved into the `LIVE_WINDOW` before now, in
    the same order and at the same relative spacing (the generated history spans 30 days)."""
    events = [orjson.loads(x) for x in lines]
    times = [datetime.fromisoformat(e["time"]) for e in events]
    first, last = min(times), max(times)
    span = (last - first) or timedelta(seconds=1)
    now = datetime.now(UTC)
    for event, t in zip(events, times, strict=True):
        moved = now - LIVE_WINDOW * ((last - t) / span)
        event["time"] = moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def reset(nc: Any) -> None:
    js = nc.jetstream()
    for name in ("ACTIVITY", "DEADLETTER", "KV_imports"):
        await js.delete_stream(name)
    await provision(js)


async def raw(nc: Any, msgs: list[Outgoing], with_id: bool) -> float:
    js = nc.jetstream(publish_async_max_pending=4000)
    start = time.perf_counter()
    futures = []
    for m in msgs:
        headers = {"Nats-Msg-Id": m.msg_id} if with_id else None
        futures.append(await js.publish_async(m.subject, m.payload, headers=headers))
    for f in futures:
        ack = await f
        assert not ack.duplicate
    return len(msgs) / (time.perf_counter() - start)


async def publisher_rate(nc: Any, events: list[Any]) -> float:
    pub = Bus(nc).publisher
    start = time.perf_counter()
    pending = None
    for i in range(0, len(events), 1000):
        msgs = [Outgoing.event(e) for e in events[i : i + 1000]]
        futures = await pub.submit(msgs)
        if pending:
            await pub.settle(*pending)
        pending = (msgs, futures)
    if pending:
        await pub.settle(*pending)
    return len(events) / (time.perf_counter() - start)


async def import_rate(nc: Any, path: Path, n: int) -> float:
    bus = Bus(nc)
    kv = await bus.kv("imports")
    start = time.perf_counter()
    summary = await import_file(path, bus.publisher, kv)
    assert summary.accepted == n, summary
    return n / (time.perf_counter() - start)


async def http_rate(base: str, bodies: list[bytes], clients: int, per_body: int) -> float:
    headers = {"Authorization": f"Bearer {INTERNAL_TOKEN}", "Content-Type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                r = await client.post("/v1/events", content=body, headers=headers)
                assert r.status_code == 202 and r.json()["accepted"] == per_body, r.text

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return len(bodies) * per_body / (time.perf_counter() - start)


def start_gateway(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """`nerve run gateway` on the data dir of the running embedded broker (which it adopts)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--data-dir",
            str(data_dir),
            "run",
            "gateway",
            "--port",
            str(port),
            "--site-keys",
            SITE_KEY,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NERVE_INTERNAL_TOKENS": INTERNAL_TOKEN},
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(
        "gateway did not start: " + (proc.stderr.read().decode() if proc.stderr else "")
    )


async def run_setting(
    sync: str, args: argparse.Namespace, data: dict[str, Any], with_http: bool
) -> dict[str, list[float]]:
    store = Path(tempfile.mkdtemp(prefix="nerve-bench-"))
    results: dict[str, list[float]] = {}
    try:
        with EmbeddedBroker(BrokerSettings(data_dir=store, sync_interval=sync)) as broker:
            nc = await connect(broker.admin_url, "bench")
            await provision(nc.jetstream())
            gateway = None
            if with_http:
                port = free_port()
                gateway = start_gateway(store, port)
            try:
                for r in range(args.rounds):
                    plan: list[tuple[str, Any]] = [
                        ("raw", lambda: raw(nc, data["msgs"], True)),
                        ("raw-noid", lambda: raw(nc, data["msgs"], False)),
                        ("publisher", lambda: publisher_rate(nc, data["events"])),
                        ("import", lambda: import_rate(nc, data["file"], args.events)),
                    ]
                    if gateway:
                        plan.append(
                            (
                                "http",
                                lambda: http_rate(
                                    f"http://127.0.0.1:{port}",
                                    data["bodies"],
                                    args.clients,
                                    args.batch,
                                ),
                            )
                        )
                    for name, fn in plan:
                        await reset(nc)
                        rate = await fn()
                        results.setdefault(name, []).append(rate)
                        print(
                            f"  sync={sync} round {r + 1}/{args.rounds} {name:10} "
                            f"{rate:10,.0f} ev/s",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                if gateway:
                    gateway.terminate()
                    gateway.wait(10)
                await nc.close()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--events", type=int, default=100_000, help="events per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    ap.add_argument("--batch", type=int, default=100, help="events per HTTP request")
    ap.add_argument("--sync", default="1s,always", help="sync_interval settings to compare")
    ap.add_argument("--http-all-sync", action="store_true")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nerve-bench-data-"))
    try:
        print(f"generating {args.events:,} events ...", file=sys.stderr, flush=True)
        gen = work / "gen.jsonl"
        generate(gen, users=max(100, args.events // 5), days=30, seed=1)
        lines = gen.read_bytes().splitlines()[: args.events]
        if len(lines) < args.events:
            raise SystemExit(f"generator produced only {len(lines)} events")
        history = work / "history.jsonl"
        history.write_bytes(b"\n".join(lines) + b"\n")
        events = [parse_event_json(line) for line in lines]
        live = as_live(lines)
        data = {
            "file": history,
            "events": events,
            "msgs": [Outgoing.event(e) for e in events],
            "bodies": [
                orjson.dumps(live[i : i + args.batch]) for i in range(0, len(live), args.batch)
            ],
        }
        syncs = [s.strip() for s in args.sync.split(",") if s.strip()]
        table: dict[str, dict[str, list[float]]] = {}
        for i, sync in enumerate(syncs):
            table[sync] = asyncio.run(
                run_setting(sync, args, data, with_http=(i == 0 or args.http_all_sync))
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nIngest into ACTIVITY, {args.events:,} events of ~200 B, medians of {args.rounds} "
        f"rounds, {os.cpu_count()} cores; ratio = median / raw median (same sync setting)"
    )
    base_sync = syncs[0]
    print(
        f"{'path':12} {'sync':7} {'median ev/s':>12} {'min':>10} {'max':>10} {'ratio':>7} "
        f"{'vs ' + base_sync:>9}"
    )
    summary: dict[str, Any] = {"events": args.events, "rounds": args.rounds, "results": {}}
    for sync, res in table.items():
        raw_med = statistics.median(res["raw"])
        for name, rates in res.items():
            med = statistics.median(rates)
            same_path_base = table[base_sync].get(name)
            vs_base = med / statistics.median(same_path_base) if same_path_base else float("nan")
            print(
                f"{name:12} {sync:7} {med:12,.0f} {min(rates):10,.0f} {max(rates):10,.0f} "
                f"{med / raw_med:7.2f} {vs_base:9.2f}"
            )
            summary["results"][f"{name}@{sync}"] = {
                "median": round(med),
                "min": round(min(rates)),
                "max": round(max(rates)),
                "ratio_to_raw": round(med / raw_med, 3),
            }
    line = json.dumps(summary)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()

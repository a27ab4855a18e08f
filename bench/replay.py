#!/usr/bin/env python3
"""Replay benchmark: rebuilding every profile from the log, beside the raw consume rate.

Imports a generated history into a fresh embedded server in stages (default 1,000,000 events in
4 stages). At the last stage it measures, in separate processes (so peak memory is the job's
own), round by round:

  raw        plain nats-py: an ordered push consumer with a callback that counts messages
  replay     engine.profiles.replay.rebuild: decode and fold every event into in-memory profiles
  replay+kv  the same, then every profile sealed and written to a fresh bucket
             (what `nerve replay profiles` does)

and reports events/s, the ratio to raw, and peak RSS; the replay's peak RSS is also measured at
half the log, to show that memory follows the number of profiles, not the log's length.
After each stage it also times single-user replays (a consumer filtered on one user's subjects)
for --users random users, to show how that time grows with the log.

Every connection is the embedded broker's `admin` user (`EmbeddedBroker.admin_url`), what
`nerve import` and `nerve replay profiles` connect as on the data dir's machine; the worker
processes get that URL in the environment (`BENCH_NATS_URL`), not on their command line, where
`ps` would show its password.

  python bench/replay.py                      # ~6-8 minutes on 2 cores
  python bench/replay.py --events 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, connect  # noqa: E402
from engine.importer import import_file  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from engine.synth import generate  # noqa: E402

URL_VARIABLE = "BENCH_NATS_URL"
"""How `run_worker` hands a worker process the broker URL (it carries the admin password)."""


async def worker(mode: str, url: str) -> dict[str, Any]:
    nc = await connect(url, f"bench-{mode}")
    js = nc.jetstream()
    started = time.perf_counter()
    if mode == "raw":
        info = await js.stream_info("ACTIVITY")
        total, seen = info.state.messages, 0
        done = asyncio.get_running_loop().create_future()

        async def cb(msg: Any) -> None:
            nonlocal seen
            seen += 1
            if seen >= total and not done.done():
                done.set_result(None)

        sub = await js.subscribe(
            "activity.>",
            stream="ACTIVITY",
            cb=cb,
            ordered_consumer=True,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1 << 30,
        )
        await done
        await sub.unsubscribe()
        events, profiles = seen, 0
    else:
        from engine.profiles.replay import rebuild, store
        from engine.profiles.store import ProfileStore

        bus = Bus(nc)
        result = await rebuild(bus)
        events, profiles = result.events, len(result.profiles)
        if mode == "replay+kv":
            bucket = f"bench_{os.getpid()}"
            await store(await ProfileStore.open(bus, bucket, create=True), result.profiles)
            seconds = time.perf_counter() - started
            await js.delete_key_value(bucket)
            await nc.close()
            return {
                "events": events,
                "seconds": seconds,
                "profiles": profiles,
                "rss_mib": peak_rss_mib(),
            }
    seconds = time.perf_counter() - started
    await nc.close()
    return {"events": events, "seconds": seconds, "profiles": profiles, "rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM resets at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(mode: str, url: str) -> dict[str, Any]:
    """Run one measurement in a child process (its own peak RSS is reported)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, URL_VARIABLE: url},
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed ({proc.returncode})")
    result = json.loads(out)
    result["rate"] = result["events"] / result["seconds"]
    return result


async def user_replays(url: str, tokens: list[str]) -> list[float]:
    from engine.profiles.replay import rebuild

    nc = await connect(url, "bench-user")
    times = []
    for t in tokens:
        started = time.perf_counter()
        result = await rebuild(Bus(nc), token=t)
        times.append(time.perf_counter() - started)
        assert t in result.profiles
    await nc.close()
    return times


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def load(url: str, path: Path) -> float:
    bus = await Bus.connect(url, "bench-import")
    await bus.provision()
    summary = await import_file(path, bus.publisher, await bus.kv("imports"))
    await bus.close()
    return summary.rate


def stages_and_rounds(
    url: str, work: Path, lines: list[bytes], picked: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, list[dict[str, Any]]]]:
    """Import the log in stages (timing single-user replays after each), then the rounds of
    full replays: (stages, the replay at half the log, results per mode)."""
    per_stage = len(lines) // args.stages
    stages = []
    half_rss = None
    for s in range(args.stages):
        part = work / f"part{s}.jsonl"
        end = len(lines) if s == args.stages - 1 else (s + 1) * per_stage
        part.write_bytes(b"\n".join(lines[s * per_stage : end]) + b"\n")
        rate = asyncio.run(load(url, part))
        times = asyncio.run(user_replays(url, picked))
        stages.append(
            {
                "events": end,
                "import_rate": rate,
                "user_p50_s": pct(times, 50),
                "user_p99_s": pct(times, 99),
                "user_max_s": max(times),
            }
        )
        print(
            f"  stage {s + 1}: {end:,} events (import {rate:,.0f}/s); one-user replay "
            f"p50 {pct(times, 50) * 1000:.0f} ms, p99 {pct(times, 99) * 1000:.0f} ms",
            file=sys.stderr,
            flush=True,
        )
        if end * 2 >= len(lines) and half_rss is None:
            half_rss = run_worker("replay", url)
    results: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for mode in ("raw", "replay", "replay+kv"):
            res = run_worker(mode, url)
            results.setdefault(mode, []).append(res)
            print(
                f"  round {r + 1}/{args.rounds} {mode:10} {res['rate']:10,.0f} ev/s "
                f"{res['rss_mib']:7.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    return stages, half_rss, results


def report(
    args: argparse.Namespace,
    events: int,
    users: int,
    stages: list[dict[str, Any]],
    half_rss: dict[str, Any] | None,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    """Print the tables and the JSON line (also to --json-out)."""
    raw = statistics.median(x["rate"] for x in results["raw"])
    print(
        f"\nFull replay of {events:,} events ({results['replay'][0]['profiles']:,} "
        f"profiles), medians of {args.rounds} rounds; ratio = median / raw median"
    )
    print(f"{'path':10} {'median ev/s':>12} {'min':>10} {'max':>10} {'ratio':>6} {'peak RSS':>9}")
    summary: dict[str, Any] = {"events": events, "results": {}, "stages": stages}
    for mode, rs in results.items():
        rates = [x["rate"] for x in rs]
        med = statistics.median(rates)
        rss = statistics.median(x["rss_mib"] for x in rs)
        print(
            f"{mode:10} {med:12,.0f} {min(rates):10,.0f} {max(rates):10,.0f} "
            f"{med / raw:6.2f} {rss:7.0f} MiB"
        )
        summary["results"][mode] = {
            "median": round(med),
            "ratio": round(med / raw, 3),
            "rss_mib": round(rss),
        }
    if half_rss:
        print(
            f"replay at {half_rss['events']:,} events: {half_rss['profiles']:,} profiles, "
            f"peak RSS {half_rss['rss_mib']:.0f} MiB"
        )
        summary["half"] = {k: half_rss[k] for k in ("events", "profiles", "rss_mib")}
    print(f"\nSingle-user replay ({users} users) as the log grows")
    print(f"{'log events':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for st in stages:
        print(
            f"{st['events']:11,} {st['user_p50_s'] * 1000:8.0f} {st['user_p99_s'] * 1000:8.0f} "
            f"{st['user_max_s'] * 1000:8.0f}"
        )
    line = json.dumps(summary)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(asyncio.run(worker(sys.argv[2], os.environ[URL_VARIABLE]))))
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=30, help="single-user replays per stage")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nerve-replay-"))
    try:
        print(f"generating {args.events:,} events ...", file=sys.stderr, flush=True)
        gen = work / "gen.jsonl"
        generate(gen, users=max(100, args.events // 17), days=90, seed=7)
        lines = gen.read_bytes().splitlines()[: args.events]
        gen.unlink()
        user_ids = sorted({json.loads(x).get("user_id") for x in lines[:5000]} - {None})
        rnd = random.Random(1)
        picked = rnd.sample(user_ids, min(args.users, len(user_ids)))
        with EmbeddedBroker(BrokerSettings(data_dir=work / "store")) as broker:
            url = broker.admin_url
            stages, half_rss, results = stages_and_rounds(url, work, lines, picked, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, len(lines), len(picked), stages, half_rss, results)


if __name__ == "__main__":
    main()

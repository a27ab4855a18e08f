#!/usr/bin/env python3
"""Model replay benchmark: `nerve replay models` (two models side by side through the serving
pipeline) beside the profile rebuild of the same log, in the same run.

Generates a history (`engine.synth`, the first --events events), imports it with its catalogue
into a fresh embedded server, fits a popularity model (published as the active model of the
slot) and an item kNN (published, not active) on its interactions, then measures, in separate
processes (so peak memory is the job's own), round by round:

  rebuild   engine.profiles.replay.rebuild: decode and fold every event into profiles
            (what bench/replay.py calls "replay")
  replay    training.replay.run: the same fold, plus at every decision point both lists
            through the serving pipeline with the shipped slots file (`--batch` decision
            points of many users at a time, `Serving.recommend_many`), and their scores

and reports events/s, the ratio replay / rebuild (the goal: >= 0.5), peak RSS and the number of
decision points. `--profile` adds a cProfile of one replay: where its time goes.

  python bench/replay_models.py --quick            # 50,000 events, 1 round (~1 minute)
  python bench/replay_models.py                    # 1,000,000 events, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, connect  # noqa: E402
from engine.importer import import_file  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from engine.synth import generate  # noqa: E402

URL_VARIABLE = "BENCH_NATS_URL"
"""How a worker process gets the broker URL (it carries the admin password: not on argv)."""


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def worker(
    mode: str,
    url: str,
    slot: str,
    candidate: str,
    profile: bool,
    sample: float = 1.0,
    batch: int = 256,
) -> dict[str, Any]:
    nc = await connect(url, f"bench-{mode}")
    bus = Bus(nc)
    out: dict[str, Any] = {}
    if mode == "rebuild":
        from engine.profiles.replay import rebuild

        started = time.perf_counter()
        rebuilt = await rebuild(bus)
        out = {"events": rebuilt.events, "profiles": len(rebuilt.profiles)}
    else:
        from engine.recommender.slots import load_slots
        from training.replay import run
        from training.replay_cli import plan, summary

        config, path = load_slots(None)  # the shipped slots file
        made = await plan(
            bus,
            (config, str(path)),
            None,
            candidate=candidate,
            slot=slot,
            sample=sample,
            batch=batch,
        )
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        started = time.perf_counter()
        result = summary(await run(bus, made))
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ["BENCH_PROFILE"])
        out = {
            "events": result["events"]["read"],
            "profiles": result["events"]["users"],
            "decisions": result["events"]["decisions"],
            "verdict": result["comparison"]["verdict"],
            "ndcg": [result["active"]["ndcg"], result["candidate"]["ndcg"]],
        }
    out["seconds"] = time.perf_counter() - started
    out["rss_mib"] = peak_rss_mib()
    await nc.close()
    return out


def run_worker(
    mode: str,
    url: str,
    args: argparse.Namespace,
    versions: dict[str, str],
    profile: Path | None = None,
) -> dict[str, Any]:
    env = {**os.environ, URL_VARIABLE: url}
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile)
    cmd = [sys.executable, __file__, "--worker", mode, args.slot, versions["candidate"]]
    cmd += [str(args.sample), str(args.batch)]
    proc = subprocess.run(
        cmd + (["--profile"] if profile else []),
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed ({proc.returncode})")
    result = dict(json.loads(proc.stdout))
    result["rate"] = result["events"] / result["seconds"]
    return result


async def load(url: str, history: Path, catalog: Path, slot: str) -> dict[str, str]:
    """Import the history and catalogue; fit and publish the two models."""
    from engine.recommender.catalog import load_lines
    from models import Interactions, make

    bus = await Bus.connect(url, "bench-load")
    await bus.provision()
    summary = await import_file(history, bus.publisher, await bus.kv("imports"))
    print(f"  imported {summary.rate:,.0f} events/s", file=sys.stderr, flush=True)
    await load_lines(catalog, bus)
    users, items = [], []
    for line in history.read_bytes().splitlines():
        e = orjson.loads(line)
        if e.get("item_id") and e["type"] in ("item_viewed", "item_purchased", "simulator_used"):
            users.append(e.get("user_id") or e.get("anonymous_id"))
            items.append(e["item_id"])
    data = Interactions.from_triples(users, items, [1.0] * len(users))
    nc = await connect(url, "bench-models")
    versions = {
        "active": await publish_model(nc, make("popular").fit(data), slot),
        "trending": await publish_model(nc, make("popular").fit(data), "trending"),
        "candidate": await publish_model(nc, make("itemknn").fit(data), ""),
    }
    await nc.close()
    await bus.close()
    return versions


async def publish_model(nc: Any, model: Any, slot: str) -> str:
    """Save, pack and publish `model` (active in `slot` unless it is empty); its version."""
    from datetime import UTC, datetime

    from models.base import pack
    from nerve_client.ids import uuid7

    version = f"{model.name}-{uuid7()[-12:]}"
    with tempfile.TemporaryDirectory() as tmp:
        artifact = pack(model.save(Path(tmp) / "m"))
    card = {"version": version, "model": model.name, "created_at": datetime.now(UTC).isoformat()}
    await (await Bus(nc).registry()).publish(version, card, artifact, slot)
    return version


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = statistics.median(x["rate"] for x in results["rebuild"])
    print(
        f"\n{args.events:,} generated events, slot {args.slot}, sample {args.sample}, "
        f"batch {args.batch}; "
        f"medians of {args.rounds} round(s); ratio = median / rebuild median "
        "(provisional: 2 shared cores)"
    )
    print(f"{'path':8} {'median ev/s':>12} {'min':>9} {'max':>9} {'ratio':>6} {'peak RSS':>9}")
    summary: dict[str, Any] = {
        "events": args.events,
        "slot": args.slot,
        "sample": args.sample,
        "batch": args.batch,
        "results": {},
    }
    for mode, rs in results.items():
        rates = [x["rate"] for x in rs]
        med, rss = statistics.median(rates), statistics.median(x["rss_mib"] for x in rs)
        print(
            f"{mode:8} {med:12,.0f} {min(rates):9,.0f} {max(rates):9,.0f} "
            f"{med / base:6.2f} {rss:7.0f} MiB"
        )
        summary["results"][mode] = {
            "median": round(med),
            "ratio": round(med / base, 3),
            "rss_mib": round(rss),
            "profiles": rs[0]["profiles"],
        }
    last = results["replay"][-1]
    print(
        f"replay: {last['decisions']:,} decision points x 2 lists, {last['verdict']}, "
        f"nDCG active {last['ndcg'][0]:.4f} / candidate {last['ndcg'][1]:.4f}"
    )
    summary["results"]["replay"]["decisions"] = last["decisions"]
    # each round times the rebuild just before the replay: the ratio least moved by the load
    rounds = zip(results["replay"], results["rebuild"], strict=True)
    paired = [r["rate"] / b["rate"] for r, b in rounds]
    summary["round_ratios"] = [round(x, 3) for x in paired]
    print(f"per-round ratios replay / rebuild: {', '.join(f'{x:.2f}' for x in paired)}")
    summary["goal_met"] = summary["results"]["replay"]["ratio"] >= 0.5
    return summary


def profile_table(path: Path, top: int = 18) -> None:
    import pstats

    print(f"\nWhere a replay's time goes (cProfile, top {top} by own time, then cumulative):")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)
    pstats.Stats(str(path)).sort_stats("cumtime").print_stats(r"training|recommender", top)


def main() -> None:
    if len(sys.argv) >= 7 and sys.argv[1] == "--worker":
        mode, slot, candidate, sample, batch = sys.argv[2:7]
        profile = "--profile" in sys.argv
        url = os.environ[URL_VARIABLE]
        result = asyncio.run(worker(mode, url, slot, candidate, profile, float(sample), int(batch)))
        print(json.dumps(result))
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="50,000 events, 1 round")
    ap.add_argument("--slot", default="home", help="Slot of the shipped slots file to replay")
    ap.add_argument("--profile", action="store_true", help="cProfile one more replay")
    ap.add_argument(
        "--sample", type=float, default=1.0, help="Share of users decided on (`--sample`)"
    )
    ap.add_argument(
        "--batch", type=int, default=256, help="Decision points computed together (`--batch`)"
    )
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.events, args.rounds = 50_000, 1
    work = Path(tempfile.mkdtemp(prefix="nerve-replay-models-"))
    try:
        print(f"generating {args.events:,} events ...", file=sys.stderr, flush=True)
        gen = work / "gen.jsonl"
        made = generate(gen, users=max(100, args.events // 17), days=90, seed=7)
        lines = gen.read_bytes().splitlines()[: args.events]
        gen.write_bytes(b"\n".join(lines) + b"\n")
        args.events = len(lines)
        results: dict[str, list[dict[str, Any]]] = {"rebuild": [], "replay": []}
        with EmbeddedBroker(BrokerSettings(data_dir=work / "store")) as broker:
            url = broker.admin_url
            versions = asyncio.run(load(url, gen, made.catalog_path, args.slot))
            for r in range(args.rounds):
                for mode in results:
                    res = run_worker(mode, url, args, versions)
                    results[mode].append(res)
                    print(
                        f"  round {r + 1}/{args.rounds} {mode:8} {res['rate']:10,.0f} ev/s "
                        f"{res['rss_mib']:7.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
            if args.profile:
                run_worker("replay", url, args, versions, profile=work / "replay.prof")
                profile_table(work / "replay.prof")
        summary = report(args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(summary)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()

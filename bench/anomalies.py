#!/usr/bin/env python3
"""Anomalies benchmark: precision and recall per detector on planted anomalies, the time from
the deciding event to `anomaly_detected` at 1,000 events/s, and the detectors' CPU per event
beside the profiles projection's.

Set-up (temporary directory, 127.0.0.1 only): `nerve generate --anomalies RATE` writes a
history (default 50,000 users over 7 days, 0.4 % of the users per per-user kind, 4 site-wide
shifts) and its truth file `<stem>.anomalies.jsonl` (`engine.synth.anomalies`). The rig's
nats-server (`bench/rig.py`: a child of this process, JetStream, unauthenticated) is
provisioned with `nerve init`; the anomaly service (default slots file) and the profiles
service run in two processes of their own, started before the import, so the whole history
reaches them live.

1. **History.** The history is imported (`engine.importer`, as `nerve import` does); once
   both services have read it all, every `anomaly_detected` whose evidence lies in the history
   is matched against the truth file: a finding is a true positive when a planted case of its
   kind and subject (the user, or the site) shares an evidence event id with it or was under
   way when it was decided (the case's first event - 1 min to its last + the detector's
   window). Precision = true findings / findings; recall = cases found / cases planted.
2. **Live.** --rate events/s (1,000) of page and item views by 50,000 load users for
   --seconds, published from this process at a fixed rate; every 0.5 s a probe of one
   per-user kind in turn: a burst of 12 item views at once (the 10th decides: the detector's
   `min_events`), a loan simulation for 500 M EUR, or 3 page views from a home context then a
   login from a new locale and browser and a 20,000 EUR simulation. Latency = arrival of its
   `anomaly_detected` at a follower of ANOMALIES here - the deciding event's publish.
3. **CPU.** Each service process's user + system time (`/proc/<pid>/stat`) over the history
   and over the live phase, per ACTIVITY event it read.

Goals: recall >= 0.9, precision >= 0.8 on the planted kinds, p99 < 1 s.

  python bench/anomalies.py            # ~3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rig import Broker, Service, provision  # noqa: E402  (bench/, the script's directory)

from engine.bus import Bus, Outgoing, connect  # noqa: E402
from engine.importer import import_file  # noqa: E402
from engine.synth import CATALOGUE, generate  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402
from nerve_client.subjects import activity_subject, user_token  # noqa: E402

WINDOW_SLACK = {"rate_burst": 60_000, "new_context": 30 * 60_000, "site_rate_shift": 5 * 60_000}
HOME = {"locale": "nl-NL", "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0"}
AWAY = {"locale": "vi-VN", "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4) Safari/604.1"}


class Child(Service):
    """A service in a process of its own: `nerve run NAME` once the runner knows NAME, else
    this file's `--serve NAME` (the same runner, with the service registered here)."""

    def command(self) -> list[str]:
        me = str(Path(__file__).resolve())
        return [sys.executable, me, "--serve", self.name, "--nats-url", self.url,
                "--data-dir", str(self.data_dir)]  # fmt: skip

    def cpu(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(name: str, url: str, data_dir: Path) -> None:
    from engine import runner
    from engine.services.anomalies import AnomalyService
    from engine.settings import BrokerSettings

    runner.SERVICES.setdefault("anomalies", AnomalyService.build)  # until the runner lists it
    broker = BrokerSettings(nats_url=url, data_dir=data_dir, connect_timeout=60)
    asyncio.run(runner.run_services(url, (name,), broker))


def ev(etype: str, user: str, item: str | None = None, ctx: Any = None, **props: Any) -> Any:
    e: dict[str, Any] = {"id": uuid7(), "type": etype, "time": datetime.now(UTC).isoformat(),
                         "user_id": user, "properties": props}  # fmt: skip
    if item:
        e["item_id"] = item
    if ctx:
        e["context"] = ctx
    return e


def out(e: dict[str, Any]) -> Outgoing:
    token = user_token(e.get("user_id"), e.get("anonymous_id"))
    return Outgoing(activity_subject(token, e["type"]), orjson.dumps(e), e["id"])


def probe(n: int) -> tuple[str, list[list[dict[str, Any]]]]:
    """(kind, batches: all but the last prepare, the last holds the deciding event)."""
    kind = ("rate_burst", "unusual_value", "new_context")[n % 3]
    user = f"probe-{n}"
    if kind == "rate_burst":
        views = [ev("item_viewed", user, "fund-esg", category="funds") for _ in range(12)]
        return kind, [views]
    if kind == "unusual_value":
        return kind, [[ev("simulator_used", user, "loan-personal", simulator="loan",
                          amount=5e8, term_months=48)]]  # fmt: skip
    home = [ev("page_viewed", user, None, HOME, page_type="home") for _ in range(3)]
    login = ev("user_identified", user, None, AWAY, method="login")
    login["anonymous_id"] = f"anon-{n}"
    sim = ev("simulator_used", user, "loan-personal", AWAY, simulator="loan", amount=20000,
             term_months=48)  # fmt: skip
    return kind, [home, [login, sim]]


async def live(bus: Bus, args: argparse.Namespace, sent_at: dict[str, tuple[str, float]]) -> int:
    """The load at a fixed rate, with a probe every 0.5 s; returns the events published."""
    pipeline = bus.publisher.pipeline
    rng = np.random.default_rng(5)
    started, sent, probes, futures = time.perf_counter(), 0, 0, []
    while (now := time.perf_counter()) - started < args.seconds:
        if now - started >= probes * 0.5 + 1:
            kind, batches = probe(probes)
            for b in batches[:-1]:
                await bus.publisher.publish([out(e) for e in b])
            await bus.publisher.publish([out(e) for e in batches[-1]])
            sent_at[f"probe-{probes}"] = (kind, time.perf_counter())
            probes, sent = probes + 1, sent + sum(map(len, batches))
        delay = started + sent / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = f"load-{int(rng.integers(0, 50_000))}"
        p = CATALOGUE[int(rng.integers(0, len(CATALOGUE)))]
        e = ev("item_viewed", user, p.item_id, category=p.category) if sent % 2 else ev(
            "page_viewed", user, page_type="category")  # fmt: skip
        o = out(e)
        futures.append(await pipeline.publish(o.subject, o.payload, {"Nats-Msg-Id": o.msg_id}))
        sent += 1
        if len(futures) > 2000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    return sent


def score(cases: list[dict[str, Any]], found: list[dict[str, Any]]) -> dict[str, Any]:
    """Per detector: findings, true ones, cases planted of its kind and found, P and R."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cases:
        token = "site" if c["user"] == "site" else user_token(c["user"], None)
        c["ids"] = set(c["event_ids"])
        c["t0"] = datetime.fromisoformat(c["start"]).timestamp() * 1000
        c["t1"] = datetime.fromisoformat(c["end"]).timestamp() * 1000
        by_key.setdefault((c["kind"], token), []).append(c)
    rows: dict[str, Any] = {}
    for a in found:
        p = a["properties"]
        row = rows.setdefault(p["detector"], {"kind": p["kind"], "findings": 0, "true": 0,
                                              "hit": set()})  # fmt: skip
        row["findings"] += 1
        token = "site" if p["subject"] == "site" else user_token(a.get("user_id"),
                                                                 a.get("anonymous_id"))  # fmt: skip
        ids = {e["event_id"] for e in p["evidence"]}
        t = datetime.fromisoformat(p["decided_at"]).timestamp() * 1000
        slack = WINDOW_SLACK.get(p["kind"], 60_000)
        match = [
            c for c in by_key.get((p["kind"], token), [])
            if ids & c["ids"] or c["t0"] - 60_000 <= t <= c["t1"] + slack
        ]  # fmt: skip
        if match:
            row["true"] += 1
            row["hit"].update(id(c) for c in match)
    for kind in {c["kind"] for c in cases}:
        if not any(r["kind"] == kind for r in rows.values()):
            rows[f"({kind})"] = {"kind": kind, "findings": 0, "true": 0, "hit": set()}
    for r in rows.values():
        r["planted"] = sum(1 for c in cases if c["kind"] == r["kind"])
        r["recalled"] = len(r.pop("hit"))
        r["precision"] = round(r["true"] / r["findings"], 3) if r["findings"] else None
        r["recall"] = round(r["recalled"] / r["planted"], 3) if r["planted"] else None
    return rows


async def settle(bus: Bus, names: tuple[str, ...], total: int, timeout: float) -> float:
    """Until each service's heartbeat says it read `total` ACTIVITY messages and nothing waits
    (then two beats without news); returns the monotonic time it first got there."""
    kv = await bus.kv("health")
    deadline, first = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        beats = {}
        for k in await kv.keys():
            with contextlib.suppress(Exception):
                beats[k.split(".")[0]] = orjson.loads(await kv.get(k) or b"")
        ok = all(n in beats and beats[n]["behind"] == 0 and beats[n]["done"] >= total
                 for n in names)  # fmt: skip
        if ok:
            first = first or time.monotonic()
            if time.monotonic() - first > 11:
                return first
        await asyncio.sleep(1)
    raise RuntimeError(f"services did not catch up within {timeout:.0f} s: {beats}")


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="nerve-anomalies-"))
    broker = Broker(work)
    services = [Child("anomalies", broker.url, work), Child("profiles", broker.url, work)]
    try:
        t = time.perf_counter()
        history = work / "history.jsonl"
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        g = generate(history, users=args.users, days=args.days, seed=args.seed, end=end,
                     anomalies=args.anomalies, site_shifts=args.site_shifts)  # fmt: skip
        assert g.anomalies_path is not None
        cases = [orjson.loads(x) for x in g.anomalies_path.read_bytes().splitlines()]
        print(
            f"generated {g.events:,} events, planted {g.planted} in {time.perf_counter() - t:.1f}s"
        )
        broker.start()
        provision(broker.url, work)
        for s in services:
            s.start()
        for s in services:
            s.wait_ready(120)
        nc = await connect(broker.url, "bench-anomalies", timeout=10)
        bus = Bus(nc)
        found: list[dict[str, Any]] = []
        arrived: dict[str, float] = {}

        def on_anomaly(batch: Any) -> None:
            now = time.perf_counter()
            for _seq, _subject, data in batch:
                a = orjson.loads(data)
                found.append(a)
                arrived.setdefault(a.get("user_id") or a["id"], now)

        async with bus.tail("ANOMALIES", 1, on_anomaly):
            cpu0 = [s.cpu() for s in services]
            t = time.perf_counter()
            summary = await import_file(history, bus.publisher, await bus.kv("imports"))
            imported_s = time.perf_counter() - t
            done_at = await settle(bus, ("anomalies", "profiles"), summary.accepted, 600)
            cpu1 = [s.cpu() for s in services]
            history_found = list(found)
            sent_at: dict[str, tuple[str, float]] = {}
            sent = await live(bus, args, sent_at)
            await asyncio.sleep(3)
            cpu2 = [s.cpu() for s in services]
        await nc.close()
        in_history = {orjson.loads(x)["id"] for x in history.read_bytes().splitlines()}
        hist = [a for a in history_found
                if {e["event_id"] for e in a["properties"]["evidence"]} & in_history]  # fmt: skip
        rows = score(cases, hist)
        (work / "found.jsonl").write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in found))
        lat: dict[str, list[float]] = {}
        for user, (kind, t0) in sent_at.items():
            if user in arrived:
                lat.setdefault(kind, []).append((arrived[user] - t0) * 1000)
        all_lat = [x for v in lat.values() for x in v]
        live_site = [a for a in found[len(history_found) :] if a["properties"]["subject"] == "site"]
        live_users = [a for a in found[len(history_found):] if a["properties"]["subject"] == "user"
                      and not str(a.get("user_id", "")).startswith("probe-")]  # fmt: skip
        n_hist, n_live = summary.accepted, sent
        cpu = {
            s.name: {
                "history_us_per_event": round((b - a) / n_hist * 1e6, 1),
                "live_us_per_event": round((c - b) / n_live * 1e6, 1),
            }
            for s, a, b, c in zip(services, cpu0, cpu1, cpu2, strict=True)
        }

        def pct(v: list[float], q: float) -> float | None:
            return round(float(np.percentile(v, q)), 1) if v else None

        print(f"history: {n_hist:,} events imported in {imported_s:.1f}s, read by both services "
              f"{done_at - t - imported_s:.1f}s after the import ended; "
              f"{len(hist)} anomalies on it")  # fmt: skip
        print(f"{'detector':<14}{'kind':<17}{'planted':>8}{'found':>7}{'findings':>10}"
              f"{'true':>6}{'precision':>11}{'recall':>8}")  # fmt: skip
        for name, r in sorted(rows.items()):
            print(f"{name:<14}{r['kind']:<17}{r['planted']:>8}{r['recalled']:>7}{r['findings']:>10}"
                  f"{r['true']:>6}{r['precision']!s:>11}{r['recall']!s:>8}")  # fmt: skip
        print(f"live: {n_live:,} events in {args.seconds:g}s ({n_live / args.seconds:,.0f}/s), "
              f"{len(sent_at)} probes, {len(all_lat)} detected; deciding event -> "
              f"anomaly_detected p50 {pct(all_lat, 50)} ms, p99 {pct(all_lat, 99)} ms, max "
              f"{pct(all_lat, 100)} ms (goal p99 < 1000); other live findings: "
              f"{len(live_site)} site, {len(live_users)} user")  # fmt: skip
        for kind, v in sorted(lat.items()):
            print(
                f"  {kind:<14} {len(v):>4} probes found  p50 {pct(v, 50)} ms  p99 {pct(v, 99)} ms"
            )
        print("CPU per ACTIVITY event (user + system):", "; ".join(
            f"{k} {v['history_us_per_event']} us (history), {v['live_us_per_event']} us (live)"
            for k, v in cpu.items()))  # fmt: skip
        result = {
            "users": args.users, "days": args.days, "rate_of_anomalies": args.anomalies,
            "history_events": n_hist, "planted": g.planted,
            "detectors": rows,
            "live": {"rate": args.rate, "events": n_live, "probes": len(sent_at),
                     "detected": len(all_lat), "p50_ms": pct(all_lat, 50),
                     "p99_ms": pct(all_lat, 99), "max_ms": pct(all_lat, 100),
                     "by_kind": {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                                 for k, v in lat.items()},
                     "other_site_findings": len(live_site),
                     "other_user_findings": len(live_users)},
            "cpu": cpu,
        }  # fmt: skip
        print(json.dumps(result))
    finally:
        for s in services:
            s.stop()
        broker.stop()
        for s in services:
            if s.log_path.exists():
                errors = [x for x in s.log_path.read_text().splitlines() if "rror" in x]
                if errors:
                    print(f"{s.name} logged errors:", *errors[:5], sep="\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--anomalies", type=float, default=0.004)
    p.add_argument("--site-shifts", type=int, default=4)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--keep", action="store_true", help="Keep the work directory")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--nats-url", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a.serve, a.nats_url, a.data_dir)
    else:
        asyncio.run(main(a))

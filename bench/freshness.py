#!/usr/bin/env python3
"""Recommender benchmark: freshness, throughput and request latency of a running `nerve up`.

Set-up (in a temporary data dir): an embedded nats-server; a catalogue of --items items (10,000)
in 50 categories; an ALS model (16 factors) trained on synthetic co-views of those items and
published for the `home` and `similar` slots, and a popularity model for `trending`; then
`nerve --nats-url URL up` in its own process (gateway, profiles, warehouse, recommender), with a
slots file that gives home 10 items (frequency cap, at most 3 per category), similar 10 and
trending 10. This process is the load generator and the clock.

  (a) freshness   events published at a fixed rate (200, 1,000, then higher until the service
                  falls behind); each is an `item_viewed` of a new item by one of --users users,
                  so each changes that user's `similar` list. Freshness = time from the publish
                  to the arrival (core subscription on reco.>) of the first
                  recommendations_updated that reflects the event (activity_seq >= its
                  sequence). Every rate step reports p50 / p99 / max and how many events got
                  their update.
  (b) throughput  a burst of --burst events published at once: events/s from the first publish
                  to the last update, beside raw nats-py (an ordered push consumer with a
                  callback that only counts) reading the same events in this run.
  (c) requests    reco.request with 32 requests in flight (closed loop), and
                  GET /v1/recommendations at a fixed 500 requests/s (open loop, 64 clients):
                  p50 / p99 latency.

Who connects as whom: this process (set-up, the load, reco.> and reco.request) is the embedded
broker's `admin` user (`EmbeddedBroker.admin_url`), publishing straight to ACTIVITY what the
gateway would have stored; `nerve up` runs on the broker's data dir without --nats-url, so it
adopts the running broker and each service connects with its own credential, as in a
deployment. The HTTP requests of (c) are a browser's: the site key and, since each names a
signed-in user, an identity token for that user (`X-Nerve-Identity`), minted by this process
for every user just before (c), as the site's backend would (15-minute tokens), and verified
by the gateway on every request (the site key's identity secret reaches `nerve up` in its
environment, NERVE_SITE_SECRETS, not on its command line).

Goals (2 cores): freshness p99 < 50 ms at 1,000 events/s; reco.request p99 < 5 ms; HTTP p99 <
20 ms at 500 requests/s. The load generator shares the two cores with the server and `nerve up`.

Every step starts once the recommender's consumers have nothing pending (the warm-up and the
previous step processed), and beside each figure is the rate of a raw consume-compute-publish
skeleton (ordered consumer, orjson decode, one publish per event, ack) measured in the same run,
so runs on different machines compare by ratio. A `reco.request` that times out is an error in
the table, not the end of the run.

  python bench/freshness.py               # ~4 minutes
  python bench/freshness.py --quick       # < 2 minutes
  python bench/freshness.py --profile 5000   # cProfile of the recommender's worker, in-process
  python bench/freshness.py --profile 5000 --dump prof.pstats   # ... and keep the pstats
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
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

from engine.broker import EmbeddedBroker  # noqa: E402
from engine.bus import Bus, Outgoing, connect  # noqa: E402
from engine.recommender.catalog import Item, item_subject  # noqa: E402
from engine.settings import BrokerSettings  # noqa: E402
from models import Interactions, make  # noqa: E402
from models.base import pack  # noqa: E402
from nerve_client.identity import mint_identity_token  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402
from nerve_client.subjects import REQUEST_SUBJECT, activity_subject  # noqa: E402

SLOTS = """
[slots.home]
model = "home"
k = 10
fallback = "trending"
[slots.home.rules]
cap = { impressions = 5, days = 7 }
max_per_category = 3

[slots.similar]
kind = "similar"
model = "home"
k = 10
fallback = "trending"

[slots.trending]
k = 10
min_history = 0
"""
SITE_KEY = "bench-site-key"
SITE_SECRET = secrets.token_urlsafe(32)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def item_id(i: int) -> str:
    return f"item-{i:05d}"


async def setup(nc: Any, items: int, tmp: Path) -> None:
    bus = Bus(nc)
    await bus.provision()
    rng = np.random.default_rng(7)
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
    users, cols = [], []
    for u in range(20_000):
        cluster = rng.integers(0, items // 200)
        for j in rng.integers(0, 200, size=8):
            users.append(f"t{u}")
            cols.append(item_id(int(cluster * 200 + j)))
    data = Interactions.from_triples(users, cols, columns=[item_id(i) for i in range(items)])
    started = time.perf_counter()
    als = make("als", factors=16, iterations=5).fit(data)
    print(
        f"ALS fitted on {data.matrix.nnz:,} interactions x {items:,} items"
        f" in {time.perf_counter() - started:.1f}s"
    )
    registry = await bus.registry()
    for slot, model in (("home", als), ("trending", make("popular").fit(data))):
        version = f"{model.name}-bench-{uuid7()[-8:]}"
        artifact = pack(model.save(tmp / version))
        card = {"version": version, "model": model.name, "created_at": time.strftime("%FT%TZ")}
        await registry.publish(version, card, artifact, slot)


class Watcher:
    """Follows reco.> and records when each user's lists reflect which ACTIVITY sequence."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[tuple[int, float]]] = {}  # user -> [(seq, t0)]
        self.seen: dict[str, list[tuple[int, float]]] = {}  # user -> [(activity_seq, when)]
        self.latencies: list[float] = []
        self.updates = 0
        self.last_at = 0.0

    def expect(self, user: str, seq: int, t0: float) -> None:
        """The event at `seq` was published at `t0` (its update may have come already)."""
        for s, when in self.seen.get(user, ()):
            if s >= seq:
                self.latencies.append(when - t0)
                return
        self.waiting.setdefault(user, []).append((seq, t0))

    async def on_msg(self, msg: Any) -> None:
        now = time.perf_counter()
        self.updates += 1
        self.last_at = now
        event = orjson.loads(msg.data)
        user = event.get("user_id")
        seq = event["properties"]["activity_seq"]
        self.seen.setdefault(user, []).append((seq, now))
        pending = self.waiting.get(user)
        if not pending:
            return
        keep = []
        for s, t0 in pending:
            if s <= seq:
                self.latencies.append(now - t0)
            else:
                keep.append((s, t0))
        self.waiting[user] = keep

    def outstanding(self) -> int:
        return sum(len(v) for v in self.waiting.values())


async def paced(
    nc: Any,
    watcher: Watcher | None,
    rate: float,
    seconds: float,
    users: int,
    items: int,
    counter: list[int],
) -> tuple[int, float]:
    """Publish item_viewed events at `rate` for `seconds`; returns (sent, achieved rate)."""
    pipeline = Bus(nc).publisher.pipeline
    rng = np.random.default_rng(int(rate))
    n = int(rate * seconds)
    started = time.perf_counter()
    futures = []
    for i in range(n):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = f"user-{int(rng.integers(0, users))}"
        counter[0] += 1
        event: dict[str, Any] = {
            "id": uuid7(),
            "type": "item_viewed",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user_id": user,
            "item_id": item_id(counter[0] % items),
            "properties": {},
        }
        t0 = time.perf_counter()
        fut = await pipeline.publish(
            activity_subject(user, "item_viewed"), orjson.dumps(event), {"Nats-Msg-Id": event["id"]}
        )
        futures.append((fut, user, t0))
    elapsed = time.perf_counter() - started
    for fut, user, t0 in futures:
        ack = await fut
        if watcher is not None:
            watcher.expect(user, ack.seq, t0)
    return n, n / elapsed


async def drained(nc: Any, timeout: float = 120.0) -> float:
    """Wait until every recommender consumer of ACTIVITY has nothing pending (not delivered,
    or delivered and not acknowledged); returns the seconds waited. Each step must start from
    the steady state, not behind the previous step's backlog."""
    js = nc.jetstream()
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        infos = [c for c in await js.consumers_info("ACTIVITY") if "recommender" in c.name]
        pending = sum(int(c.num_pending or 0) + int(c.num_ack_pending or 0) for c in infos)
        if infos and not pending:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    print(f"  (the recommender still had work pending after {timeout:.0f}s)")
    return time.perf_counter() - started


async def skeleton(nc: Any, first_seq: int, n: int) -> float:
    """The raw consume-compute-publish skeleton on the same `n` events from `first_seq`: a push
    consumer delivering in order (durable, with cumulative acks like the service's: nats-py's
    ordered consumer cannot acknowledge), orjson decode, one publish per event (a core subject
    nobody reads, flushed per batch of 100, as the service publishes a batch), and an ack per
    batch. Returns events/s."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    seen = 0
    done = asyncio.Event()
    queue: list[Any] = []

    async def on_msg(msg: Any) -> None:
        nonlocal seen
        event = orjson.loads(msg.data)
        await nc.publish(f"bench.skeleton.{event['user_id']}", msg.data)
        queue.append(msg)
        seen += 1
        if len(queue) >= 100 or seen >= n:
            await nc.flush()
            await queue[-1].ack()
            queue.clear()
        if seen >= n:
            done.set()

    t0 = time.perf_counter()
    sub = await js.subscribe(
        "activity.>",
        stream="ACTIVITY",
        cb=on_msg,
        durable=f"skeleton-{first_seq}",
        manual_ack=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first_seq,
            ack_policy=AckPolicy.ALL,
            max_ack_pending=20_000,
        ),
        pending_msgs_limit=200_000,
    )
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        rate = seen / (time.perf_counter() - t0)
        await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer("ACTIVITY", f"skeleton-{first_seq}")
    return rate


async def settle(watcher: Watcher, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while watcher.outstanding() and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)


async def freshness(
    nc: Any, args: argparse.Namespace, counter: list[int], skeleton_rate: int
) -> list[dict[str, Any]]:
    rows = []
    rates = [r for r in (200, 500, 750, 1000, 1500, 2000, 3000) if r <= args.max_rate]
    for rate in rates:
        waited = await drained(nc)
        watcher = Watcher()
        sub = await nc.subscribe("reco.*.similar", cb=watcher.on_msg)
        sent, achieved = await paced(
            nc, watcher, rate, args.seconds, args.users, args.items, counter
        )
        await settle(watcher, 10)
        await sub.unsubscribe()
        lat = [x * 1000 for x in watcher.latencies]
        row: dict[str, Any] = {
            "rate": rate,
            "achieved": round(achieved),
            "sent": sent,
            "updated": len(lat),
            "p50_ms": round(pct(lat, 50), 2),
            "p99_ms": round(pct(lat, 99), 2),
            "max_ms": round(max(lat), 1) if lat else None,
            "drained_after_s": round(waited, 1),
            "skeleton_per_s": skeleton_rate,
        }
        rows.append(row)
        print(
            f"  {rate:>6,}/s  sent {sent:,} (at {achieved:,.0f}/s)  updated {len(lat):,}"
            f"  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  max {row['max_ms']} ms"
            f"  (skeleton {skeleton_rate:,}/s; started {waited:.1f}s after the last step)",
            flush=True,
        )
        if len(lat) < sent * 0.99 or row["p99_ms"] > 1000:
            break  # fell behind: this rate is not sustainable
        await asyncio.sleep(1)
    return rows


async def throughput(nc: Any, args: argparse.Namespace, counter: list[int]) -> dict[str, Any]:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    await drained(nc)
    first_seq = (await js.stream_info("ACTIVITY")).state.last_seq + 1
    watcher = Watcher()
    sub = await nc.subscribe("reco.*.similar", cb=watcher.on_msg)
    started = time.perf_counter()
    await paced(nc, watcher, 1e9, args.burst / 1e9, args.users, args.items, counter)
    await settle(watcher, 120)
    await sub.unsubscribe()
    service_rate = args.burst / (watcher.last_at - started)
    # raw: read the same events with a callback that only counts
    seen = 0
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= args.burst:
            done.set()

    t0 = time.perf_counter()
    raw_sub = await js.subscribe(
        "activity.>",
        stream="ACTIVITY",
        cb=on_msg,
        ordered_consumer=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first_seq,
            ack_policy=AckPolicy.NONE,
        ),
    )
    await asyncio.wait_for(done.wait(), 60)
    raw_rate = args.burst / (time.perf_counter() - t0)
    await raw_sub.unsubscribe()
    skel = await skeleton(nc, first_seq, args.burst)
    out = {
        "events": args.burst,
        "service_per_s": round(service_rate),
        "raw_per_s": round(raw_rate),
        "skeleton_per_s": round(skel),
        "ratio": round(service_rate / raw_rate, 3),
        "ratio_to_skeleton": round(service_rate / skel, 3),
        "missing": watcher.outstanding(),
    }
    print(
        f"  burst of {args.burst:,}: service {service_rate:,.0f}/s,"
        f" raw consume {raw_rate:,.0f}/s (ratio {out['ratio']}),"
        f" skeleton {skel:,.0f}/s (ratio {out['ratio_to_skeleton']})"
    )
    return out


async def requests(
    nc: Any, args: argparse.Namespace, port: int, tokens: list[str], skeleton_rate: int
) -> dict[str, Any]:

    rng = np.random.default_rng(1)
    rr: dict[str, Any] = {}
    for inflight in (1, 4, 32):
        lat: list[float] = []
        stop = time.perf_counter() + args.seconds / 2
        errors = timeouts = 0

        async def loop(lat: list[float] = lat, stop: float = stop) -> None:
            nonlocal errors, timeouts
            while time.perf_counter() < stop:
                user = f"user-{int(rng.integers(0, args.users))}"
                body = orjson.dumps({"user_id": user, "slot": "home"})
                t0 = time.perf_counter()
                try:
                    reply = await nc.request(REQUEST_SUBJECT, body, timeout=5)
                except Exception:  # a timeout (or no responder) is an error of the table
                    timeouts += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
                if b'"error"' in reply.data[:20]:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(inflight)))
        row = {
            "per_s": round(len(lat) / (args.seconds / 2)),
            "p50_ms": round(pct(lat, 50), 2),
            "p99_ms": round(pct(lat, 99), 2),
            "errors": errors + timeouts,
            "timeouts": timeouts,
        }
        rr[str(inflight)] = row
        print(
            f"  reco.request, {inflight} in flight: {row['per_s']:,}/s  p50 {row['p50_ms']} ms"
            f"  p99 {row['p99_ms']} ms  errors {errors + timeouts} ({timeouts} timed out)"
            f"  (skeleton {skeleton_rate:,}/s)"
        )

    http_lat: list[float] = []
    statuses: dict[int, int] = {}
    sources: dict[str, int] = {}
    rate = args.http_rate
    n = int(rate * args.seconds)
    # A minimal keep-alive HTTP/1.1 client: httpx costs milliseconds of CPU per request at this
    # concurrency, and the load generator shares the two cores with what it measures.
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    started = time.perf_counter()

    async def one(i: int) -> None:
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        reader, writer = await pool.get()
        writer.write(
            f"GET /v1/recommendations/user-{i % args.users}?slot=home HTTP/1.1\r\n"
            f"Host: bench\r\nX-Nerve-Site-Key: {SITE_KEY}\r\n"
            f"X-Nerve-Identity: {tokens[i % args.users]}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        await reader.readexactly(int(fields.get("content-length", "0")))
        pool.put_nowait((reader, writer))
        http_lat.append((time.perf_counter() - t0) * 1000)
        code = int(lines[0].split()[1])
        statuses[code] = statuses.get(code, 0) + 1
        src = fields.get("x-nerve-source", "?")
        sources[src] = sources.get(src, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    achieved = n / (time.perf_counter() - started)
    while not pool.empty():
        pool.get_nowait()[1].close()
    hr = {
        "rate": rate,
        "achieved": round(achieved),
        "p50_ms": round(pct(http_lat, 50), 2),
        "p99_ms": round(pct(http_lat, 99), 2),
        "statuses": statuses,
        "sources": sources,
    }
    print(
        f"  HTTP at {rate}/s (achieved {achieved:,.0f}/s): p50 {hr['p50_ms']} ms"
        f"  p99 {hr['p99_ms']} ms  {statuses} {sources}  (skeleton {skeleton_rate:,}/s)"
    )
    return {"reco_request": rr, "http": hr}


async def profile(args: argparse.Namespace) -> None:
    """cProfile of `RecommenderService.process` on real deliveries from a real broker: the
    service is built in this process (no `nerve up`), its durable push consumer fills a list,
    and the batches of 100 are processed as the service's worker does (`InFlight`: two in
    flight, acknowledged in order). The profiler runs over the whole loop, so the time the
    loop waits for the broker shows as `select`/`poll`."""
    import cProfile
    import pstats
    import tomllib

    from engine.profiles.store import ProfileStore
    from engine.recommender.core import Serving
    from engine.recommender.inflight import InFlight
    from engine.recommender.slots import SlotsConfig
    from engine.services.recommender import RecommenderService
    from nerve_client.subjects import CATALOG

    tmp = Path(tempfile.mkdtemp(prefix="nerve-prof-"))
    broker = EmbeddedBroker(BrokerSettings(data_dir=tmp / "data"))
    broker.start()
    try:
        nc = await connect(broker.admin_url, "bench", timeout=10)
        await setup(nc, args.items, tmp)
        bus = Bus(nc)
        config = SlotsConfig.model_validate(tomllib.loads(SLOTS))
        service = RecommenderService(bus, Serving(config), await ProfileStore.open(bus))
        await service.reload(await bus.registry())
        await bus.scan(CATALOG, service.serving.catalog.update)
        got: list[Any] = []
        consumer = bus.push("ACTIVITY", "profile", got.append)
        await consumer.start()
        counter = [0]
        stop = asyncio.Event()

        async def run(n: int, prof: cProfile.Profile | None) -> float:
            got.clear()
            await paced(nc, None, 1e9, n / 1e9, args.users, args.items, counter)
            while len(got) < n:
                await asyncio.sleep(0.05)
            started = time.perf_counter()

            async def ack(batch: list[Any]) -> None:
                await consumer.ack(batch[-1])

            # as the service's worker: two batches in flight, acknowledged in order
            flight = InFlight(lambda ds: service._process_until_done(ds, stop), ack)
            if prof is not None:
                prof.enable()
            for i in range(0, n, 100):
                await flight.submit(got[i : i + 100])
            await flight.flush()
            if prof is not None:
                prof.disable()
            return n / (time.perf_counter() - started)

        if os.environ.get("NERVE_GC_TUNING", "1") != "0":  # as `nerve up` does (engine.runner)
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        warm = await run(args.users, None)
        print(f"warm-up: {args.users:,} users at {warm:,.0f} events/s (not profiled)")
        first = (await nc.jetstream().stream_info("ACTIVITY")).state.last_seq + 1
        plain = await run(args.profile, None)
        skel = await skeleton(nc, first, args.profile)
        print(
            f"steady: {args.profile:,} events at {plain:,.0f} events/s through process();"
            f" raw skeleton {skel:,.0f}/s on the same events (ratio {plain / skel:.3f})"
        )
        prof = cProfile.Profile()
        rate = await run(args.profile, prof)
        print(f"profiled: {args.profile:,} events at {rate:,.0f} events/s (under cProfile)")
        if args.dump:
            prof.dump_stats(args.dump)
        stats = pstats.Stats(prof)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        await consumer.stop()
        await nc.close()
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nerve-fresh-"))
    broker = EmbeddedBroker(BrokerSettings(data_dir=tmp / "data"))
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    log_path = tmp / "nerve.log"
    try:
        nc = await connect(broker.admin_url, "bench", timeout=10)
        await setup(nc, args.items, tmp)
        slots = tmp / "slots.toml"
        slots.write_text(SLOTS)
        port = 18000 + os.getpid() % 1000
        nerve = [
            sys.executable,
            "-m",
            "engine.cli",
            "--data-dir",
            str(tmp / "data"),
            "up",
            "--site-keys",
            SITE_KEY,
            "--config",
            str(slots),
            "--port",
            str(port),
        ]
        env = {**os.environ, "NERVE_SITE_SECRETS": f"{SITE_KEY}={SITE_SECRET}"}
        if Path(sys.executable).with_name("nerve").exists():
            nerve = [str(Path(sys.executable).with_name("nerve")), *nerve[3:]]
        if args.services:
            nerve += ["--services", args.services]
        if args.split:  # the recommender in a process of its own
            reco = [*nerve[: nerve.index("up")], "run", "recommender", "--config", str(slots)]
            nerve += ["--services", "gateway,profiles,warehouse"]
            procs.append(
                subprocess.Popen(
                    reco,
                    stdout=subprocess.DEVNULL,
                    stderr=log_path.with_suffix(".reco").open("wb"),
                    cwd=ROOT,
                    env=env,
                )
            )
        procs.append(
            subprocess.Popen(
                nerve, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"), cwd=ROOT, env=env
            )
        )
        for _ in range(200):  # until the recommender answers with the model
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("nerve exited at start (its error lines follow)")
            try:
                r = await nc.request(
                    REQUEST_SUBJECT, b'{"user_id":"probe","slot":"trending"}', timeout=0.5
                )
                if b"model_version" in r.data:
                    break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise SystemExit("the recommender never answered")
        counter = [0]
        print(f"warm-up: {args.users:,} users, each seen once")
        js = nc.jetstream()
        warm_first = (await js.stream_info("ACTIVITY")).state.last_seq + 1
        await paced(nc, None, 1000, args.users / 1000, args.users, args.items, counter)
        waited = await drained(nc)
        print(f"  processed {waited:.1f}s after the last warm-up publish")
        skel = round(await skeleton(nc, warm_first, args.users))
        print(f"  raw skeleton (consume, decode, publish, ack) on those events: {skel:,}/s")
        print("(a) freshness")
        fresh = await freshness(nc, args, counter, skel)
        print("(b) throughput")
        tput = await throughput(nc, args, counter)
        skel = tput["skeleton_per_s"]
        print("(c) request latency")
        tokens = [
            mint_identity_token(SITE_SECRET, f"user-{u}", site_key=SITE_KEY)
            for u in range(args.users)
        ]
        req = await requests(nc, args, port, tokens, skel)
        print(json.dumps({"freshness": fresh, "throughput": tput, **req, "quick": args.quick}))
        await nc.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in (log_path, log_path.with_suffix(".reco")):
            if not log.exists():
                continue
            errors = [x for x in log.read_text().splitlines() if "rror" in x or "failed" in x]
            if errors:
                print(f"{log.name}: {len(errors)} error lines; the first ones:")
                print("\n".join(errors[:10]))
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seconds", type=float, default=10.0, help="Per rate step and request test")
    p.add_argument("--max-rate", type=int, default=6000)
    p.add_argument("--burst", type=int, default=20_000)
    p.add_argument("--http-rate", type=int, default=500)
    p.add_argument("--services", help="Pass --services to nerve up (which run in its process)")
    p.add_argument(
        "--split",
        action="store_true",
        help="Run the recommender in its own process (nerve run recommender) beside nerve up",
    )
    p.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="Instead: cProfile RecommenderService.process on N real deliveries, in-process",
    )
    p.add_argument("--top", type=int, default=30, help="Functions shown by --profile")
    p.add_argument("--dump", metavar="FILE", help="--profile: also write the pstats to FILE")
    p.add_argument(
        "--quick",
        action="store_true",
        help="A short run (< 2 minutes): 1,000 users, 3 s steps up to 3,000/s, a 5,000 burst",
    )
    parsed = p.parse_args()
    if parsed.quick:
        parsed.users, parsed.seconds = min(parsed.users, 1000), min(parsed.seconds, 3.0)
        parsed.max_rate, parsed.burst = min(parsed.max_rate, 3000), min(parsed.burst, 5000)
        parsed.profile = parsed.profile and min(parsed.profile, 2000)
    asyncio.run(profile(parsed) if parsed.profile else main(parsed))

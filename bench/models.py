#!/usr/bin/env python3
"""Model benchmark: our models beside the `implicit` library's ALS and BPR, same split, same run.

Data: a generated history (--users, default 100,000 over 90 days) or any interactions CSV
(--csv FILE: user_id,item_id,timestamp[,rating], MovieLens files included). Split: global time
cut at 80 %. Relevant items: what a user used after the cut and had not used before.

For every model: fit time, nDCG@10 / Recall@10 / HR@10 / coverage, recommend latency for one
user (p50/p99 over --latency-users users), artifact size, and peak memory of the fit as traced by
tracemalloc (numpy included; implicit allocates in C++, so its figure is not comparable). Our
ALS and implicit's ALS use the same factors and iterations; implicit fits with BLAS limited to
one thread, as it asks (it runs its own threads).

A second table measures recommend latency with --latency-items items (default 10,000), on
random interactions, for the models whose serving cost grows with the catalogue.

  pip install implicit          # bench-only dependency
  python bench/models.py                       # ~5-10 minutes on 2 cores
  python bench/models.py --users 20000 --csv ratings.csv
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.synth import generate  # noqa: E402
from engine.warehouse import row, table  # noqa: E402
from models import Interactions, make  # noqa: E402
from nerve_client.subjects import activity_subject, user_token  # noqa: E402
from training import metrics  # noqa: E402
from training.evaluate import recommend_for, relevant_items  # noqa: E402
from training.splits import global_cut  # noqa: E402


def generated_frame(users: int, days: int) -> pd.DataFrame:
    work = Path(tempfile.mkdtemp(prefix="nerve-models-"))
    try:
        path = work / "h.jsonl"
        generate(path, users=users, days=days, seed=3, end=datetime(2026, 6, 1, tzinfo=UTC))
        rows = []
        for seq, line in enumerate(path.read_bytes().splitlines(), 1):
            e = orjson.loads(line)
            subject = activity_subject(
                user_token(e.get("user_id"), e.get("anonymous_id")), e["type"]
            )
            r = row(seq, subject, line)
            if r:
                rows.append(r)
        return table(rows).to_pandas()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def csv_frame(path: Path) -> pd.DataFrame:
    from engine.importer import InteractionReader

    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
        reader = InteractionReader(first, None, None)
        lines = ([] if reader.has_header else [first]) + [x.rstrip("\r\n") for x in f]
    out = []
    for seq, line in enumerate(lines, 1):
        try:
            e = reader.event(line)
        except Exception:
            continue
        out.append(
            {
                "seq": seq,
                "time": pd.Timestamp(e["time"]),
                "type": e["type"],
                "user": e["user_id"],
                "item_id": e["item_id"],
                "value": e["properties"].get("rating"),
            }
        )
    return pd.DataFrame(out)


def evaluate_ours(
    name: str,
    params: dict[str, Any],
    train: Interactions,
    truth: dict[str, set[str]],
    k: int,
    lat_users: int,
) -> dict[str, Any]:
    model = make(name, **params)
    tracemalloc.start()
    started = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    recs = recommend_for(model, train, sorted(truth), k)
    index = train.user_index()
    latencies = []
    for u in sorted(truth)[:lat_users]:
        h = train.history(index[u]) if u in index else {}
        t = time.perf_counter()
        model.recommend(h, k)
        latencies.append(time.perf_counter() - t)
    folder = Path(tempfile.mkdtemp(prefix="nerve-artifact-"))
    size = sum(f.stat().st_size for f in model.save(folder / name).iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    return {"fit_s": fit, "recs": recs, "lat": latencies, "bytes": size, "peak_mib": peak / 2**20}


def evaluate_implicit(
    kind: str,
    params: dict[str, Any],
    train: Interactions,
    truth: dict[str, set[str]],
    k: int,
    lat_users: int,
    alpha: float,
) -> dict[str, Any]:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    cls = AlternatingLeastSquares if kind == "als" else BayesianPersonalizedRanking
    model = cls(**params, random_state=0)
    matrix = sp.csr_matrix(train.matrix * (alpha if kind == "als" else 1.0))
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(1, "blas"):  # what implicit asks for; it runs its own threads
        model.fit(matrix, show_progress=False)
    fit = time.perf_counter() - started
    index = train.user_index()
    users = [u for u in sorted(truth) if u in index]
    ids = np.asarray([index[u] for u in users])
    recs: dict[str, list[str]] = {u: [] for u in truth}
    if len(ids):
        got, _ = model.recommend(ids, matrix[ids], N=k, filter_already_liked_items=True)
        for u, items in zip(users, got, strict=True):
            recs[u] = [str(train.items[i]) for i in items if i >= 0]
    latencies = []
    for u in ids[:lat_users]:
        t = time.perf_counter()
        model.recommend(int(u), matrix[int(u)], N=k, filter_already_liked_items=True)
        latencies.append(time.perf_counter() - t)
    folder = Path(tempfile.mkdtemp(prefix="nerve-implicit-"))
    model.save(str(folder / "m"))
    size = sum(f.stat().st_size for f in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    return {"fit_s": fit, "recs": recs, "lat": latencies, "bytes": size, "peak_mib": None}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def latency_at_scale(n_items: int, k: int, samples: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(5)
    n_users, per_user = 20_000, 20
    users = np.repeat(np.arange(n_users), per_user).astype(str)
    pop = rng.zipf(1.3, size=n_users * per_user) % n_items
    data = Interactions.from_triples(users, pop.astype(str))
    out = []
    for name, params in (
        ("popular", {}),
        ("itemknn", {"neighbors": 100}),
        ("als", {"factors": 64, "iterations": 3}),
    ):
        model = make(name, **params).fit(data)
        lat = []
        for u in range(samples):
            h = data.history(u)
            t = time.perf_counter()
            model.recommend(h, k)
            lat.append(time.perf_counter() - t)
        out.append((name, pct(lat, 50) * 1000, pct(lat, 99) * 1000))
    return out


def run_models(
    args: argparse.Namespace, train: Interactions, truth: dict[str, set[str]]
) -> dict[str, dict[str, Any]]:
    """Fit and time ours, then implicit's when it is installed (the baseline)."""
    f, it = args.factors, args.iterations
    ours = {
        "popular": {},
        "itemknn": {},
        "ease": {"l2": 200.0},
        "als": {"factors": f, "iterations": it},
        "als (8 factors)": {"factors": 8, "iterations": it},
    }
    results: dict[str, dict[str, Any]] = {}
    for label, params in ours.items():
        print(f"  {label} ...", file=sys.stderr, flush=True)
        results[label] = evaluate_ours(
            label.split(" ")[0], params, train, truth, args.k, args.latency_users
        )
    try:
        import implicit  # noqa: F401

        for kind, params in (
            ("als", {"factors": f, "iterations": it, "regularization": 0.05}),
            ("bpr", {"factors": f, "iterations": 100}),
        ):
            print(f"  implicit {kind} ...", file=sys.stderr, flush=True)
            results[f"implicit {kind}"] = evaluate_implicit(
                kind, params, train, truth, args.k, args.latency_users, alpha=10.0
            )
    except ImportError:
        print("implicit is not installed: pip install implicit", file=sys.stderr)

    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--csv", type=Path, help="an interactions CSV instead of generated data")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--latency-users", type=int, default=1000)
    ap.add_argument("--latency-items", type=int, default=10_000)
    args = ap.parse_args()

    print("preparing data ...", file=sys.stderr, flush=True)
    frame = csv_frame(args.csv) if args.csv else generated_frame(args.users, args.days)
    train_frame, test_frame = global_cut(frame, 0.8)
    train = Interactions.from_frame(train_frame)
    truth = relevant_items(train, test_frame)
    results = run_models(args, train, truth)
    f, it = args.factors, args.iterations
    k = args.k
    print(
        f"\n{len(frame):,} events, {train.shape[0]:,} users x {train.shape[1]:,} items in "
        f"training, {len(truth):,} test users; global time cut at 80 %; k = {k}"
    )
    print(
        f"{'model':18} {'fit s':>7} {'ndcg':>7} {'recall':>7} {'hr':>6} {'cover':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'artifact':>9} {'fit MiB':>8}"
    )
    summary = {}
    for label, r in results.items():
        recs = r["recs"]
        row_ = {
            "fit_s": r["fit_s"],
            "ndcg": metrics.ndcg_at_k(recs, truth, k),
            "recall": metrics.recall_at_k(recs, truth, k),
            "hr": metrics.hit_rate_at_k(recs, truth, k),
            "coverage": metrics.coverage(recs, [str(i) for i in train.items], k),
            "p50_ms": pct(r["lat"], 50) * 1000,
            "p99_ms": pct(r["lat"], 99) * 1000,
            "artifact_kib": r["bytes"] / 1024,
            "fit_peak_mib": r["peak_mib"],
        }
        summary[label] = row_
        peak = f"{row_['fit_peak_mib']:8.0f}" if row_["fit_peak_mib"] is not None else "     n/a"
        print(
            f"{label:18} {row_['fit_s']:7.2f} {row_['ndcg']:7.4f} {row_['recall']:7.4f} "
            f"{row_['hr']:6.3f} {row_['coverage']:6.2f} {row_['p50_ms']:7.2f} "
            f"{row_['p99_ms']:7.2f} {row_['artifact_kib']:8.0f}K {peak}"
        )
    if "implicit als" in summary:
        print(
            f"our ALS fit / implicit ALS fit: "
            f"{summary['als']['fit_s'] / summary['implicit als']['fit_s']:.2f}x "
            f"({f} factors, {it} iterations)"
        )
    lat = latency_at_scale(args.latency_items, k, 300)
    print(f"\nrecommend latency with {args.latency_items:,} items (20,000 random users)")
    for name, p50, p99 in lat:
        print(f"{name:18} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
    print(json.dumps({"models": summary, "latency_at_scale": lat}, default=float))


if __name__ == "__main__":
    main()

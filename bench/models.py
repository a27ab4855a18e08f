#!/usr/bin/env python3
"""Model benchmark: our models beside the `implicit` library's ALS and BPR, same split, same run.

Data: a generated history (--users, default 100,000 over 90 days) or any interactions CSV
(--csv FILE: user_id,item_id,timestamp[,rating], MovieLens files included). Split: global time
cut at 80 %. Relevant items: what a user used after the cut and had not used before.

For every model: fit time, nDCG@10 / Recall@10 / HR@10 / coverage, recommend latency for one
user (p50/p99 over --latency-users users), artifact size, and peak memory of the fit as traced by
tracemalloc (numpy included; implicit allocates in C++, so its figure is not comparable). Our
ALS and implicit's ALS use the same settings (factors, regularization, iterations, and the same
confidences: implicit is given 1 + alpha * w, which is what ours computes from w); both fit with
BLAS limited to one thread, as implicit asks (it runs its own threads).

First, every run compares the two ALS fits on a generated catalogue of the first --items size
(15 iterations, implicit's defaults otherwise: CG with 3 steps per row, warm-started):
--als-repeats fits of each in alternating order in one process, fit CPU and wall time, their
ratios and medians, and nDCG@10 of both on the same leave-one-out split.

A second table serves generated catalogues of --items sizes (default 10,000 and 50,000 items):
for every model, in its own process, fit wall and CPU time, peak RSS, one-user p50/p99 through
the calls the recommender makes (`score`, `score_like`, `recommend`; with the default BLAS
threads and with one), and batch users/s through `training.batch`, implicit's ALS beside it.
EASE is not run above 20,000 items (its dense items x items matrix: 10 GB at 50,000).

  pip install implicit          # bench-only dependency
  python bench/models.py                       # ~15-25 minutes on 2 cores
  python bench/models.py --quick               # < 2 minutes: 5,000 users, 10,000 items
  python bench/models.py --scale-only --items 10000,50000
  python bench/models.py --als-only --items 10000   # ~30 s: the ALS comparison alone
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
    """An interactions CSV as the history frame (pyarrow's reader, the CLI's own path)."""
    from training.history import read_interactions

    return read_interactions(path).frame


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
    matrix = implicit_confidence(train.matrix, alpha) if kind == "als" else train.matrix
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


def implicit_confidence(matrix: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """The matrix to give implicit's ALS so that its objective is ours: implicit takes an
    observed value as the confidence c_ui itself (preference 1), ours is c_ui = 1 + alpha * w."""
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.data = 1.0 + np.float32(alpha) * m.data
    return m


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


SCALE_MODELS = ("popular", "popular-segment", "itemknn", "ease", "als", "implicit-als", "nbo")
EASE_LIMIT = 20_000  # items: beyond, EASE's dense items x items matrix is >= 1.6 GB (10 GB at 50k)


def catalogue(n_items: int, n_users: int, per_user: int = 15, seed: int = 5) -> Interactions:
    """A generated catalogue: a power-law popularity over every item, and users whose histories
    mix that with one cluster of 100 related items (so neighbours exist)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    n = n_users * per_user
    user = np.repeat(np.arange(n_users), per_user)
    popular = rng.permutation(n_items)[rng.choice(n_items, size=n, p=p / p.sum())]
    taste = rng.integers(0, max(1, n_items // 100), size=n_users)[user]
    local = (taste * 100 + rng.zipf(1.5, size=n) % 100) % n_items
    item = np.where(rng.random(n) < 0.6, local, popular)
    w = rng.choice(np.asarray([1.0, 1.0, 1.0, 2.0, 4.0, 8.0], dtype=np.float32), size=n)
    m = sp.csr_matrix((w, (user, item)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    ids = np.asarray([f"i{i}" for i in range(n_items)], dtype=object)
    return Interactions(m, np.asarray([f"u{u}" for u in range(n_users)], dtype=object), ids)


def _timed(call: Any, samples: int) -> tuple[float, float]:
    lat = []
    for i in range(samples):
        t = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - t)
    return pct(lat, 50) * 1000, pct(lat, 99) * 1000


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_worker(name: str, n_items: int, n_users: int, iterations: int, samples: int) -> None:
    """One model in its own process (so its peak RSS is its own): fit, then one-user latency
    through the serving calls (`score`, `score_like`, `recommend`), with the default BLAS threads
    and with one, then a batch of users through `training.batch`. Prints one JSON line."""
    from threadpoolctl import threadpool_limits

    data = catalogue(n_items, n_users)
    base = _rss_mib()
    hist = [data.history(u) for u in range(samples)]
    out: dict[str, Any] = {"model": name, "items": n_items, "users": n_users, "base_mib": base}
    cpu, started = time.process_time(), time.perf_counter()
    if name == "implicit-als":
        from implicit.cpu.als import AlternatingLeastSquares

        model: Any = AlternatingLeastSquares(
            factors=64, iterations=iterations, regularization=0.05, random_state=0
        )
        matrix = implicit_confidence(data.matrix, 10.0)
        with threadpool_limits(1, "blas"):  # what implicit asks for; it runs its own threads
            model.fit(matrix, show_progress=False)
        out.update(fit_s=time.perf_counter() - started, fit_cpu_s=time.process_time() - cpu)
        out["fit_peak_mib"] = _rss_mib()

        def rec(i: int) -> Any:
            return model.recommend(i, matrix[i], N=10, filter_already_liked_items=True)

        out["recommend"] = _timed(rec, samples)
        print(json.dumps(out))
        return
    if name == "nbo":
        scale_nbo(out, samples)
        print(json.dumps(out))
        return
    params = {"als": {"factors": 64, "iterations": iterations}}.get(name, {})
    with threadpool_limits(1 if name == "als" else None, "blas"):  # ALS: as implicit's
        fitted = make(name, **params).fit(data)
    out.update(fit_s=time.perf_counter() - started, fit_cpu_s=time.process_time() - cpu)
    out["fit_peak_mib"] = _rss_mib()
    out["own_mib"] = sum(a.nbytes for a in fitted._arrays().values()) / 2**20
    anchors = [str(data.items[i]) for i in range(samples)]
    for threads in (None, 1):
        with threadpool_limits(threads, "blas"):
            tag = "" if threads is None else "_1t"
            out["score" + tag] = _timed(lambda i: fitted.score({}, hist[i], 0), samples)
            out["like" + tag] = _timed(lambda i: fitted.score_like(anchors[i]), samples)
            out["recommend" + tag] = _timed(lambda i: fitted.recommend(hist[i], 10), samples)
    from training.batch import recommend_many

    users = [str(u) for u in data.users[: min(n_users, 20_000)]]
    t = time.perf_counter()
    for _ in recommend_many(fitted, data, users, 10):
        pass
    out["batch_users_per_s"] = len(users) / (time.perf_counter() - t)
    out["peak_mib"] = _rss_mib()
    print(json.dumps(out))


def scale_nbo(out: dict[str, Any], samples: int) -> None:
    """The next-best-offer model's serving call: its candidates are offers (tens), not the
    catalogue, so it is timed with 40 offers on profiles shaped like the projection's."""
    from models import NextBestOffer
    from models.nbo import feature_names, features

    rng = np.random.default_rng(1)
    offers = [f"offer{j}" for j in range(40)]
    profiles = [
        {
            "counts": {"item_viewed": int(rng.integers(1, 50)), "item_purchased": 1},
            "categories": {f"c{int(c)}": 2 for c in rng.integers(0, 30, 5)},
            "held": {offers[int(rng.integers(0, 40))]: {}},
            "recent_items": [{"item_id": offers[int(j)]} for j in rng.integers(0, 40, 10)],
            "last_seen": 0,
        }
        for _ in range(2_000)
    ]
    names = feature_names(profiles, offers)
    x = np.vstack([features(p, names, 86_400_000) for p in profiles])
    y = (rng.random((len(profiles), len(offers))) < 0.05).astype(float)
    cpu, started = time.process_time(), time.perf_counter()
    model = NextBestOffer().fit(x, y, names, offers, {o: 1.0 for o in offers})
    out.update(fit_s=time.perf_counter() - started, fit_cpu_s=time.process_time() - cpu)
    out.update(items=len(offers), fit_peak_mib=_rss_mib(), features=len(names))
    out["score"] = _timed(lambda i: model.score(profiles[i], {}, 86_400_000), samples)
    out["peak_mib"] = _rss_mib()


def run_scale(sizes: list[int], iterations: int, samples: int) -> list[dict[str, Any]]:
    """Every model at every size, each in a fresh process, implicit's ALS in the same run."""
    import subprocess

    rows = []
    for n in sizes:
        users = max(20_000, 2 * n)
        for name in SCALE_MODELS:
            if name == "ease" and n > EASE_LIMIT:
                rows.append({"model": name, "items": n, "skipped": "dense items x items"})
                continue
            if name == "nbo" and n != sizes[0]:
                continue
            print(f"  {name} at {n:,} items ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", name, "--items", str(n)]
            cmd += ["--users", str(users), "--iterations", str(iterations)]
            cmd += ["--latency-users", str(samples)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                rows.append({"model": name, "items": n, "skipped": done.stderr[-300:]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def print_scale(rows: list[dict[str, Any]]) -> None:
    def ms(r: dict[str, Any], key: str) -> str:
        v = r.get(key)
        return f"{v[0]:6.2f}/{v[1]:6.2f}" if v else f"{'-':>13}"

    print(
        f"\n{'model':16} {'items':>6} {'fit s':>6} {'cpu s':>6} {'peak MiB':>8} {'own MiB':>7} "
        f"{'score p50/p99':>13} {'1 thread':>13} {'like p50/p99':>13} {'recommend':>13} "
        f"{'batch u/s':>9}"
    )
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:16} {r['items']:6} not run: {r['skipped'][:90]}")
            continue
        peak = r.get("peak_mib", r.get("fit_peak_mib", 0)) - r["base_mib"]
        print(
            f"{r['model']:16} {r['items']:6} {r['fit_s']:6.1f} {r['fit_cpu_s']:6.1f} "
            f"{peak:8.0f} {r.get('own_mib', 0):7.1f} {ms(r, 'score')} {ms(r, 'score_1t')} "
            f"{ms(r, 'like')} {ms(r, 'recommend')} {r.get('batch_users_per_s', 0):9.0f}"
        )
    by = {(r["model"], r["items"]): r for r in rows if "skipped" not in r}
    for (name, n), r in by.items():
        ref = by.get(("implicit-als", n))
        if name == "als" and ref:
            cpu_x, wall_x = r["fit_cpu_s"] / ref["fit_cpu_s"], r["fit_s"] / ref["fit_s"]
            print(f"our ALS / implicit ALS at {n:,} items: CPU {cpu_x:.2f}x, wall {wall_x:.2f}x")


ALS_SETTINGS = {"factors": 64, "regularization": 0.05, "alpha": 10.0, "cg_steps": 3}
"""Both ALS fits of the comparison: implicit's CG defaults (3 steps per user, warm-started)."""


def leave_one_out(data: Interactions, seed: int = 7) -> tuple[Interactions, dict[str, set[str]]]:
    """One random observed item of every user with two or more held out: the training data and
    what each such user should find."""
    m = sp.csr_matrix(data.matrix, copy=True)
    rng = np.random.default_rng(seed)
    counts = np.diff(m.indptr)
    users = np.flatnonzero(counts >= 2)
    held = m.indptr[users] + (rng.random(len(users)) * counts[users]).astype(np.int64)
    truth = {
        str(data.users[u]): {str(data.items[m.indices[h]])}
        for u, h in zip(users, held, strict=True)
    }
    m.data[held] = 0
    m.eliminate_zeros()
    return Interactions(m, data.users, data.items), truth


def compare_als(n_items: int, n_users: int, iterations: int, repeats: int) -> dict[str, Any]:
    """Our ALS and implicit's on the same leave-one-out split of a generated catalogue, same
    settings (`ALS_SETTINGS`, `iterations`), BLAS at one thread for both, `repeats` fits each in
    alternating order in this process: fit CPU and wall time, and nDCG@10 of the first fit."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    train, truth = leave_one_out(catalogue(n_items, n_users))
    settings = dict(ALS_SETTINGS)
    alpha = settings.pop("alpha")
    matrix = implicit_confidence(train.matrix, alpha)
    users = sorted(truth)

    def ours() -> Any:
        return make("als", iterations=iterations, alpha=alpha, **settings).fit(train)

    def theirs() -> Any:
        model = AlternatingLeastSquares(
            factors=settings["factors"],
            regularization=settings["regularization"],
            iterations=iterations,
            random_state=0,
        )
        assert model.cg_steps == settings["cg_steps"] and model.alpha == 1.0
        model.fit(matrix, show_progress=False)
        return model

    runs: list[dict[str, float]] = []
    fitted: dict[str, Any] = {}
    for r in range(repeats):
        run: dict[str, float] = {}
        for name, fit in sorted((("als", ours), ("implicit", theirs)), reverse=r % 2 == 1):
            cpu, wall = time.process_time(), time.perf_counter()
            with threadpool_limits(1, "blas"):
                fitted.setdefault(name, fit())
            run[f"{name}_cpu_s"] = time.process_time() - cpu
            run[f"{name}_s"] = time.perf_counter() - wall
        run["cpu_ratio"] = run["als_cpu_s"] / run["implicit_cpu_s"]
        run["wall_ratio"] = run["als_s"] / run["implicit_s"]
        runs.append(run)
    index = train.user_index()
    ids = np.asarray([index[u] for u in users])
    got, _ = fitted["implicit"].recommend(ids, matrix[ids], N=10, filter_already_liked_items=True)
    theirs_recs = {
        u: [str(train.items[i]) for i in g if i >= 0] for u, g in zip(users, got, strict=True)
    }
    ours_recs = recommend_for(fitted["als"], train, users, 10)
    kept = {u: truth[u] for u in users}
    return {
        "items": n_items,
        "users": n_users,
        "iterations": iterations,
        "test_users": len(users),
        "runs": runs,
        "cpu_ratio_median": float(np.median([r["cpu_ratio"] for r in runs])),
        "wall_ratio_median": float(np.median([r["wall_ratio"] for r in runs])),
        "ndcg_als": metrics.ndcg_at_k(ours_recs, kept, 10),
        "ndcg_implicit": metrics.ndcg_at_k(theirs_recs, kept, 10),
    }


def print_als(c: dict[str, Any]) -> None:
    print(
        f"\nALS beside implicit: {c['items']:,} items, {c['users']:,} users, {c['iterations']} "
        f"iterations, {ALS_SETTINGS}, BLAS 1 thread, leave-one-out nDCG@10 on {c['test_users']:,}"
        " users"
    )
    print(
        f"{'run':>4} {'ours cpu s':>10} {'impl cpu s':>10} {'cpu x':>6} {'ours s':>7} "
        f"{'impl s':>7} {'wall x':>6}"
    )
    for i, r in enumerate(c["runs"], 1):
        print(
            f"{i:4} {r['als_cpu_s']:10.2f} {r['implicit_cpu_s']:10.2f} {r['cpu_ratio']:6.2f} "
            f"{r['als_s']:7.2f} {r['implicit_s']:7.2f} {r['wall_ratio']:6.2f}"
        )
    print(
        f"our ALS fit / implicit's: CPU {c['cpu_ratio_median']:.2f}x, wall "
        f"{c['wall_ratio_median']:.2f}x (medians); nDCG@10 ours {c['ndcg_als']:.4f}, "
        f"implicit {c['ndcg_implicit']:.4f}"
    )


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
    ap.add_argument("--items", default="10000,50000", help="catalogue sizes of the scale table")
    ap.add_argument("--quick", action="store_true", help="small run (< 2 minutes)")
    ap.add_argument("--scale-only", action="store_true", help="only the scale table")
    ap.add_argument("--als-repeats", type=int, default=5, help="fits of each ALS to compare")
    ap.add_argument("--als-only", action="store_true", help="only the ALS comparison")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        scale_worker(args.worker, int(args.items), args.users, args.iterations, args.latency_users)
        return
    if args.quick:
        args.users, args.iterations, args.latency_users, args.items = 5_000, 5, 200, "10000"
        args.als_repeats = min(args.als_repeats, 3)
    sizes = [int(x) for x in args.items.split(",")]
    print(f"ALS comparison at {sizes[0]:,} items ...", file=sys.stderr, flush=True)
    # 15 iterations even with --quick: the goal is stated at implicit's default
    als = compare_als(sizes[0], max(20_000, 2 * sizes[0]), 15, args.als_repeats)
    print_als(als)
    if args.als_only:
        print(json.dumps({"als": als}, default=float))
        return
    summary = {} if args.scale_only else quality(args)
    print(
        f"\nserving-scale catalogues ({args.iterations} ALS iterations; latencies in ms; "
        "peak MiB above the process with the data loaded)",
        file=sys.stderr,
    )
    scale = run_scale(sizes, args.iterations, min(args.latency_users, 500))
    print_scale(scale)
    print_als(als)  # again at the end, beside the scale table
    print(json.dumps({"models": summary, "scale": scale, "als": als}, default=float))


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """The quality table on a time split, beside implicit's ALS and BPR."""
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
    return summary


if __name__ == "__main__":
    main()

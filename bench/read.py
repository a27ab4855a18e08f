"""Reading an interactions file: rows/s, CPU and peak memory, column-wise against row by row.

Generates a MovieLens-shaped CSV (`userId,movieId,rating,timestamp`, `--rows` rows, ~25 rows per
user, a long-tailed catalogue of `--items` items) and reads it two ways into the user x item
matrix `nerve recommend-batch` fits on, each in its own process (so peak RSS is its own):

  rows     the previous path: one `InteractionReader.event` per line (split, time parse, id),
           Python lists of ids, then `Interactions.from_triples`
  columns  `training.read_interactions(path).interactions()`: pyarrow's CSV reader, typed
           columns, dictionary codes, the sparse matrix built from the codes

Both must give the same matrix; the table shows rows/s, CPU s, peak RSS and tracemalloc's peak
(Python allocations, from a second, untimed run), and the ratio rows/columns measured in this
run. `rows` builds the matrix with today's `from_triples`: only its reading is row by row.

  python bench/read.py                 # 1,000,000 rows
  python bench/read.py --rows 200000   # quick (< 1 minute)
  python bench/read.py --profile       # plus each path's cProfile top 12
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import Interactions


def write_csv(path: Path, rows: int, items: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, max(2, rows // 25), rows)
    item = np.minimum(rng.zipf(1.3, rows), items)
    rating = rng.integers(1, 11, rows) / 2
    ts = 1_500_000_000 + rng.integers(0, 90 * 86_400, rows)
    with path.open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for start in range(0, rows, 100_000):
            s = slice(start, start + 100_000)
            f.writelines(
                f"{u},{i},{r:g},{t}\n"
                for u, i, r, t in zip(users[s], item[s], rating[s], ts[s], strict=True)
            )


def by_rows(path: Path) -> Interactions:
    """What `nerve recommend-batch` did before: the importer's reader, one line at a time."""
    from engine.importer import InteractionReader
    from nerve_client.errors import EventRejected

    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
        reader = InteractionReader(first, None, None)
        lines = ([] if reader.has_header else [first]) + [x.rstrip("\r\n") for x in f]
    users, items, weights = [], [], []
    for line in lines:
        if not line.strip():
            continue
        try:
            event = reader.event(line)
        except EventRejected:
            continue
        users.append(str(event["user_id"]))
        items.append(str(event["item_id"]))
        weights.append(float(event["properties"].get("rating", 1.0)))
    return Interactions.from_triples(users, items, weights)


def by_columns(path: Path) -> Interactions:
    from training.history import read_interactions

    return read_interactions(path).interactions()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(how: str, path: Path, profile: bool) -> dict[str, object]:
    """One path, in this process: wall and CPU time and peak RSS of a plain run, then the
    tracemalloc peak of a second run (tracemalloc slows Python code, so not timed), and with
    `profile` a cProfile run."""
    read = by_rows if how == "rows" else by_columns
    import training.history  # noqa: F401  (imports are not what is measured)

    base = _rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    data = read(path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _rss_mib()
    del data
    tracemalloc.start()
    data = read(path)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out: dict[str, object] = {
        "how": how,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_after_imports_mib": base,
        "peak_rss_mib": peak,
        "traced_peak_mib": traced / 2**20,
        "shape": list(data.shape),
        "nnz": int(data.matrix.nnz),
        "sum": float(data.matrix.sum()),
    }
    if profile:
        prof = cProfile.Profile()
        prof.runcall(read, path)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(12)
        out["profile"] = text.getvalue()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--profile", action="store_true", help="print each path's cProfile top 12")
    ap.add_argument("--only", choices=("rows", "columns"), help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:  # the child: one path, one JSON line
        print(json.dumps(measure(args.only, args.file, args.profile)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.csv"
        write_csv(path, args.rows, args.items)
        size = path.stat().st_size / 2**20
        print(f"{args.rows:,} rows, {size:.1f} MiB CSV", file=sys.stderr)
        results = {}
        for how in ("rows", "columns"):
            cmd = [sys.executable, __file__, "--only", how, "--file", str(path)]
            cmd += ["--profile"] if args.profile else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[how] = json.loads(done.stdout.strip().splitlines()[-1])
    rows, cols = results["rows"], results["columns"]
    assert (rows["shape"], rows["nnz"]) == (cols["shape"], cols["nnz"]), (rows, cols)
    assert abs(float(rows["sum"]) - float(cols["sum"])) <= 1e-6 * abs(float(rows["sum"]))
    print(
        f"{'path':8} {'rows/s':>11} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>13} "
        f"{'(imports)':>10} {'traced MiB':>11}"
    )
    for r in (rows, cols):
        print(
            f"{r['how']:8} {args.rows / float(r['wall_s']):>11,.0f} {float(r['wall_s']):>7.2f} "
            f"{float(r['cpu_s']):>7.2f} {float(r['peak_rss_mib']):>13.0f} "
            f"{float(r['rss_after_imports_mib']):>10.0f} {float(r['traced_peak_mib']):>11.0f}"
        )
    ratio = float(rows["cpu_s"]) / float(cols["cpu_s"])
    print(f"columns/rows: {ratio:.1f}x less CPU; matrix {cols['shape']} nnz {cols['nnz']:,}")
    if args.profile:
        for r in (rows, cols):
            print(f"\n--- cProfile, {r['how']} ---\n{r['profile']}")
    summary = {k: {x: v for x, v in r.items() if x != "profile"} for k, r in results.items()}
    print(json.dumps({"rows": args.rows, "csv_mib": size, **summary, "cpu_ratio": ratio}))


if __name__ == "__main__":
    main()

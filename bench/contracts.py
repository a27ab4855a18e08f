#!/usr/bin/env python3
"""Contract checks benchmark: what the one decoder and the output-event validation cost.

  decode      engine.bus.decode on a stored `item_viewed` (subject split, JSON parse, model
              validation, subject check) beside the raw baseline, orjson.loads of the same bytes
  output      the check build_event adds to every list it publishes: nerve_client.events.parse_event
              of a 10-item recommendations_updated, beside the raw baseline, orjson.dumps of it

Medians of --rounds rounds of --n calls each, in microseconds per call, and the ratio to the
raw baseline measured in the same run. No broker needed.

  python bench/contracts.py        # a few seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/, whose models.py would shadow the package

from engine.bus.decode import decode  # noqa: E402
from engine.recommender.core import Outcome, Ranked  # noqa: E402
from engine.recommender.lists import build_event  # noqa: E402
from nerve_client.events import parse_event  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402
from nerve_client.subjects import activity_subject  # noqa: E402


def per_call_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Median over `rounds` of the mean time of one call, in microseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--n", type=int, default=20_000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    stored = {
        "id": uuid7(),
        "type": "item_viewed",
        "schema_version": 1,
        "time": "2026-11-01T10:00:00.000Z",
        "received_at": "2026-11-01T10:00:00.050Z",
        "user_id": "u-1",
        "source": "web",
        "item_id": "loan-personal",
        "properties": {"category": "loans"},
    }
    raw = orjson.dumps(stored)
    subject = activity_subject("u-1", "item_viewed")
    items = [Ranked(f"item-{i}", 1.0 - i / 10, "because you viewed Gold card") for i in range(10)]
    outcome = Outcome("home", items, "als-1", "als")
    profile = {"positions": {"activity": {"max": 5}}}

    rows = [
        (
            "decode",
            per_call_us(lambda: decode("ACTIVITY", 1, subject, raw), args.n, args.rounds),
            per_call_us(lambda: orjson.loads(raw), args.n, args.rounds),
        ),
    ]
    event = build_event("u-1", outcome, profile, 1_764_000_000_000)
    rows.append(
        (
            "output",
            per_call_us(lambda: parse_event(event), args.n // 4, args.rounds),
            per_call_us(lambda: orjson.dumps(event), args.n, args.rounds),
        )
    )
    print(f"{'check':<8} {'us/call':>9} {'raw us/call':>12} {'ratio':>7}")
    for name, checked, base in rows:
        print(f"{name:<8} {checked:>9.2f} {base:>12.2f} {checked / base:>6.1f}x")
    print(json.dumps({name: {"us": round(c, 2), "raw_us": round(b, 2)} for name, c, b in rows}))


if __name__ == "__main__":
    main()

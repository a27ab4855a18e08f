"""Planted anomalies in the generator (`nerve generate --anomalies RATE`, `engine.synth`)."""

import asyncio
import hashlib
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.synth import ANOMALY_KINDS, CATALOGUE, generate, visitors
from engine.synth.anomalies import AGENTS, HIGH_VALUE
from nerve_client.events import Envelope, parse_event

END = datetime(2026, 6, 1, tzinfo=UTC)
USERS, DAYS, RATE = 2000, 14, 0.01
CATEGORY = {p.item_id: p.category for p in CATALOGUE}


def _events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("planted") / "h.jsonl"
    generate(path, users=USERS, days=DAYS, seed=4, end=END, anomalies=RATE)
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "h.jsonl"
    generate(path, users=USERS, days=DAYS, seed=4, end=END)
    return path


def test_rate_zero_writes_the_same_bytes_as_before_and_no_truth_file(tmp_path: Path) -> None:
    stale = tmp_path / "g.anomalies.jsonl"
    stale.write_text("from an earlier run\n")
    s = generate(
        tmp_path / "g.jsonl", users=300, days=20, seed=5, end=datetime(2025, 1, 1, tzinfo=UTC)
    )
    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in (s.path, s.catalog_path, s.truth_path)
    }
    # The clean generator's output (same seed, same arguments): before anomalies existed, and
    # since the history is cut at `end` instead of late sessions being moved to `end` - 2 h.
    assert digests == {
        "g.jsonl": "72d7a55affd2ba42",
        "g.catalog.jsonl": "7c9bf8f20bfa8231",
        "g.truth.csv": "9b1e1309741dc31f",
    }
    assert s.anomalies_path is None and s.planted == {} and not stale.exists()


def test_each_kind_is_planted_at_the_rate_asked_on_disjoint_users(planted: Path) -> None:
    cases = _truth(planted.with_name("h.anomalies.jsonl"))
    by_kind = Counter(c["kind"] for c in cases)
    assert by_kind == {
        "rate_burst": round(RATE * USERS),
        "unusual_value": round(RATE * USERS),
        "new_context": round(RATE * USERS),
        "site_rate_shift": DAYS // 7,  # the default: one a week
    }
    assert set(by_kind) == set(ANOMALY_KINDS)
    users = [c["user"] for c in cases if c["kind"] != "site_rate_shift"]
    assert len(set(users)) == len(users) == 3 * round(RATE * USERS)
    assert all(c["user"] == "site" for c in cases if c["kind"] == "site_rate_shift")


def test_site_shifts_can_be_asked_for_and_fall_on_distinct_days(tmp_path: Path) -> None:
    s = generate(
        tmp_path / "s.jsonl", users=300, days=10, seed=1, end=END, anomalies=0.01, site_shifts=5
    )
    assert s.planted == {
        "rate_burst": 3,
        "unusual_value": 3,
        "new_context": 3,
        "site_rate_shift": 5,
    }
    assert s.anomalies_path is not None
    days = [c["start"][:10] for c in _truth(s.anomalies_path) if c["user"] == "site"]
    assert len(set(days)) == 5


def test_truth_ids_are_in_the_history_and_every_event_is_a_valid_envelope(planted: Path) -> None:
    lines = planted.read_bytes().splitlines()
    envelopes: list[Envelope] = [parse_event(orjson.loads(line), now=END) for line in lines]
    by_id = {e.id: e for e in envelopes}
    assert len(by_id) == len(lines)
    assert [e.time for e in envelopes] == sorted(e.time for e in envelopes)
    for case in _truth(planted.with_name("h.anomalies.jsonl")):
        ids = case["event_ids"]
        assert ids and all(i in by_id for i in ids), case["kind"]
        start, end = (datetime.fromisoformat(case[k]) for k in ("start", "end"))
        assert all(start <= by_id[i].time <= end for i in ids)
        assert {by_id[i].time for i in ids} >= {start, end}
        if case["deciding"] is not None:
            assert case["deciding"] in ids
        for i in ids:
            e = by_id[i]
            if case["user"] == "site":
                assert e.user_id is None and e.anonymous_id is not None
            elif e.user_id is not None:
                assert e.user_id == case["user"]


def test_each_kind_looks_like_what_its_docs_say(planted: Path, clean: Path) -> None:
    events = {e["id"]: e for e in _events(planted)}
    logs: dict[str, list[float]] = {}
    for e in _events(clean):
        p = e["properties"]
        if e["type"] == "simulator_used":
            logs.setdefault(f"simulator:{p['simulator']}", []).append(math.log1p(p["amount"]))
        elif e["type"] == "item_purchased":
            logs.setdefault(f"category:{CATEGORY[e['item_id']]}", []).append(math.log1p(p["value"]))
    family = {a[2]: (a[0], a[1]) for a in AGENTS}
    for case in _truth(planted.with_name("h.anomalies.jsonl")):
        mine = [events[i] for i in case["event_ids"]]
        span = datetime.fromisoformat(case["end"]) - datetime.fromisoformat(case["start"])
        if case["kind"] == "rate_burst":
            assert len(mine) >= 40 and len({e["type"] for e in mine}) == 1
            assert span.total_seconds() <= 90
        elif case["kind"] == "unusual_value":
            deciding = events[case["deciding"]]
            amount = deciding["properties"].get("amount", deciding["properties"].get("value"))
            seg = np.array(logs[case["detail"]["segment"]])
            med = np.median(seg)
            z = (math.log1p(amount) - med) / max(1.4826 * np.median(np.abs(seg - med)), 0.1)
            assert z >= 5.9, case
        elif case["kind"] == "new_context":
            login = next(e for e in mine if e["type"] == "user_identified")
            before = [
                e
                for e in events.values()
                if e.get("user_id") == case["user"] and e["id"] not in case["event_ids"]
            ]
            assert before and all("context" in e for e in before)
            seen_locales = {e["context"]["locale"] for e in before}
            seen_families = {family[e["context"]["user_agent"]] for e in before}
            new = family[login["context"]["user_agent"]]
            assert login["context"]["locale"] not in seen_locales
            assert all(new[0] != b and new[1] != o for b, o in seen_families)
            deciding = events[case["deciding"]]
            assert deciding["type"] == "simulator_used"
            assert deciding["properties"]["amount"] >= HIGH_VALUE
            assert span.total_seconds() <= 11 * 60
        else:
            per_minute = len(mine) / (span.total_seconds() / 60)
            assert per_minute >= 25 and per_minute >= 8 * case["detail"]["baseline_per_minute"]


def test_the_clean_events_are_the_same_with_anomalies_but_for_the_home_context(
    planted: Path, clean: Path
) -> None:
    planted_ids = {
        i for c in _truth(planted.with_name("h.anomalies.jsonl")) for i in c["event_ids"]
    }
    rest = [e for e in _events(planted) if e["id"] not in planted_ids]
    assert all("context" in e for e in rest)
    assert [{k: v for k, v in e.items() if k != "context"} for e in rest] == _events(clean)
    assert not any("context" in e for e in _events(clean))


def test_same_seed_same_history_and_truth_other_seed_other(planted: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "h.jsonl", users=USERS, days=DAYS, seed=4, end=END, anomalies=RATE)
    assert again.path.read_bytes() == planted.read_bytes()
    assert again.anomalies_path is not None
    assert again.anomalies_path.read_bytes() == planted.with_name("h.anomalies.jsonl").read_bytes()
    other = generate(tmp_path / "o.jsonl", users=USERS, days=DAYS, seed=5, end=END, anomalies=RATE)
    assert other.anomalies_path is not None
    assert other.anomalies_path.read_bytes() != again.anomalies_path.read_bytes()


def test_cli_plants_and_refuses_a_rate_it_cannot_honour(tmp_path: Path) -> None:
    def nerve(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "engine.cli", "generate", "--days", "7", *args]
        env = {**os.environ, "COLUMNS": "200"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)

    ok = nerve("--users", "400", "--anomalies", "0.01", "-o", str(tmp_path / "h.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert (
        "planted anomalies: 4 rate_burst, 4 unusual_value, 4 new_context, 1 site_rate_shift"
        in ok.stdout
    )
    assert len(_truth(tmp_path / "h.anomalies.jsonl")) == 13
    bad = nerve("--users", "5", "--anomalies", "0.3", "-o", str(tmp_path / "b.jsonl"))
    assert bad.returncode == 2 and "anomalous users asked for" in bad.stderr
    # before: --site-shifts without --anomalies exited 0 and planted nothing
    alone = nerve("--users", "50", "--site-shifts", "2", "-o", str(tmp_path / "s.jsonl"))
    assert alone.returncode == 2 and "--site-shifts plants with --anomalies" in alone.stderr
    assert not (tmp_path / "s.jsonl").exists()


class _Sink:
    """Collects what the trickle publishes; stops it once `enough` events came."""

    def __init__(self, stop: asyncio.Event, enough: int) -> None:
        self.events: list[Envelope] = []
        self.stop, self.enough = stop, enough

    async def publish_events(self, events: Sequence[Envelope]) -> None:
        self.events.extend(events)
        if len(self.events) >= self.enough:
            self.stop.set()


async def test_demo_visitors_plant_bursts_and_unusual_amounts_only_when_asked() -> None:
    stop = asyncio.Event()
    sink = _Sink(stop, 400)
    await asyncio.wait_for(visitors(sink, 50, stop, rate=2000, anomaly_every=0.02), 60)
    views = Counter((e.user_id, e.time) for e in sink.events if e.type == "item_viewed")
    assert max(views.values()) >= 30  # a burst: one user's views, all at once
    amounts = [e.properties.amount for e in sink.events if e.type == "simulator_used"]  # type: ignore[attr-defined]
    assert max(amounts) >= 1_000_000

    stop = asyncio.Event()
    quiet = _Sink(stop, 400)
    await asyncio.wait_for(visitors(quiet, 50, stop, rate=2000), 60)
    views = Counter((e.user_id, e.time) for e in quiet.events if e.type == "item_viewed")
    assert max(views.values()) < 30
    amounts = [e.properties.amount for e in quiet.events if e.type == "simulator_used"]  # type: ignore[attr-defined]
    assert max(amounts, default=0) < 1_000_000

import csv
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from engine.synth import CATALOGUE, generate
from nerve_client.events import parse_event_json

END = datetime(2026, 6, 1, tzinfo=UTC)
CATEGORY = {p.item_id: p.category for p in CATALOGUE}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "h.jsonl"
    generate(path, users=3000, days=60, seed=11, end=END)
    return path


def test_same_seed_same_bytes_other_seed_other_history(history: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "a.jsonl", users=3000, days=60, seed=11, end=END)
    assert again.path.read_bytes() == history.read_bytes()
    other = generate(tmp_path / "b.jsonl", users=3000, days=60, seed=12, end=END)
    assert other.path.read_bytes() != history.read_bytes()


def test_every_line_is_a_valid_event_in_time_order_inside_the_window(history: Path) -> None:
    events = [parse_event_json(line) for line in history.read_bytes().splitlines()]
    times = [e.time for e in events]
    assert times == sorted(times)
    assert times[0] >= datetime(2026, 4, 2, tzinfo=UTC) and times[-1] < END
    assert len({e.id for e in events}) == len(events)
    assert {e.type for e in events} >= {"item_viewed", "simulator_used", "item_purchased"}


def test_the_last_hours_are_a_snapshot_not_a_pile_up(history: Path) -> None:
    """Before: a session that would start in the last two hours started at exactly `end` - 2 h
    instead, so every such session piled up in one minute and the site then fell silent (the
    anomaly detectors rightly saw a flood and a drop). Now the log is cut at `end`."""
    times = [parse_event_json(line).time for line in history.read_bytes().splitlines()]
    clamp = END - timedelta(hours=2)
    assert sum(1 for t in times if t == clamp) <= 1
    last_hour = sum(1 for t in times if t >= END - timedelta(hours=1))
    day_before = END - timedelta(days=1)
    hour_before = sum(1 for t in times if day_before - timedelta(hours=1) <= t < day_before)
    assert last_hour > 0.5 * hour_before > 0
    assert max(times) < END


def test_credit_is_only_bought_after_simulating_it(history: Path) -> None:
    simulated: set[tuple[str, str]] = set()
    credit_purchases = 0
    for line in history.read_bytes().splitlines():
        e = orjson.loads(line)
        key = (e.get("user_id"), e.get("item_id"))
        if e["type"] == "simulator_used":
            simulated.add(key)
        elif e["type"] == "item_purchased" and CATEGORY[e["item_id"]] in ("loans", "mortgages"):
            credit_purchases += 1
            assert key in simulated, f"{key} bought credit without a simulation"
    assert credit_purchases > 20


def test_planted_preferences_are_visible_in_the_behaviour(history: Path) -> None:
    with (history.parent / "h.truth.csv").open() as f:
        truth = {r["user_id"]: r for r in csv.DictReader(f)}
    views: dict[str, Counter[str]] = defaultdict(Counter)
    credit_buyers: set[str] = set()
    for line in history.read_bytes().splitlines():
        e = orjson.loads(line)
        if e["type"] == "item_viewed":
            views[truth[e["user_id"]]["segment"]][CATEGORY[e["item_id"]]] += 1
        if e["type"] == "item_purchased" and CATEGORY[e["item_id"]] in ("loans", "mortgages"):
            credit_buyers.add(e["user_id"])

    def share(segment: str, category: str) -> float:
        return views[segment][category] / sum(views[segment].values())

    assert share("investor", "funds") > 2 * share("student", "funds")
    assert share("family", "mortgages") > 3 * share("retiree", "mortgages")
    intent = {u for u, r in truth.items() if r["credit_intent"] == "1"}
    rate_intent = len(credit_buyers & intent) / len(intent)
    rate_other = len(credit_buyers - intent) / (len(truth) - len(intent))
    assert rate_intent > 5 * rate_other
    # The first category of the planted top three is the most viewed for most users.
    hits = total = 0
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    for line in history.read_bytes().splitlines():
        e = orjson.loads(line)
        if e["type"] == "item_viewed":
            per_user[e["user_id"]][CATEGORY[e["item_id"]]] += 1
    for user, counts in per_user.items():
        if sum(counts.values()) >= 8:
            total += 1
            hits += counts.most_common(1)[0][0] in truth[user]["top_categories"].split("|")
    assert total > 50 and hits / total > 0.6


def test_catalogue_file_lists_every_product(history: Path) -> None:
    items = [
        orjson.loads(x) for x in (history.parent / "h.catalog.jsonl").read_bytes().splitlines()
    ]
    assert [i["item_id"] for i in items] == [p.item_id for p in CATALOGUE]

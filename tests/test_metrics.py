"""Metrics on cases small enough to compute by hand: the offline evaluation's
(`training.metrics`), then the gateway's Prometheus exposition (`engine.metrics`)."""

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.bus import Ack
from engine.gateway import SITE_KEY_HEADER, ops
from engine.metrics import Metrics
from nerve_client.events import parse_event
from tests.conftest import event
from tests.test_console import KEY as SITE_KEY
from tests.test_console import client, gateway, until
from training import metrics

__all__ = ["client", "gateway"]  # fixtures, used by name

RECS = {"a": ["x", "y", "z"], "b": ["y", "x", "w"], "c": ["q", "r", "s"]}
TRUTH = {"a": {"y"}, "b": {"y", "w"}, "c": set()}  # c has nothing relevant: left out


def test_recall_hit_rate_on_a_hand_computed_case() -> None:
    assert metrics.recall_at_k(RECS, TRUTH, 3) == pytest.approx((1 / 1 + 2 / 2) / 2)
    assert metrics.recall_at_k(RECS, TRUTH, 1) == pytest.approx((0 + 1 / 1) / 2)
    assert metrics.hit_rate_at_k(RECS, TRUTH, 1) == pytest.approx(0.5)


def test_ndcg_on_a_hand_computed_case() -> None:
    a = (1 / math.log2(3)) / 1.0  # hit at rank 2, ideal: one hit at rank 1
    b = (1 / math.log2(2) + 1 / math.log2(4)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert metrics.ndcg_at_k(RECS, TRUTH, 3) == pytest.approx((a + b) / 2)


def test_map_on_a_hand_computed_case() -> None:
    a = (1 / 2) / 1
    b = (1 / 1 + 2 / 3) / 2
    assert metrics.map_at_k(RECS, TRUTH, 3) == pytest.approx((a + b) / 2)


def test_coverage_and_novelty() -> None:
    assert metrics.coverage(RECS, ["x", "y", "z", "w", "q", "r", "s", "t"], 1) == pytest.approx(
        3 / 8
    )
    assert metrics.novelty({"a": ["x"]}, {"x": 0.25}, 1) == pytest.approx(2.0)


def test_perfect_and_empty_lists() -> None:
    perfect = {"a": ["y"], "b": ["y", "w"]}
    assert metrics.ndcg_at_k(perfect, TRUTH, 2) == pytest.approx(1.0)
    assert metrics.recall_at_k({}, TRUTH, 10) == 0.0
    assert metrics.ndcg_at_k(RECS, {}, 10) == 0.0


# -- the gateway's Prometheus metrics (engine.metrics) -------------------------------------------


def families(text: str) -> dict[str, Any]:
    """The exposition parsed by prometheus_client's own parser, by family name."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_a_counter_over_a_million_is_exact_in_the_exposition() -> None:
    """Before: `{value:g}` printed 1234567 as `1.23457e+06`."""
    m = Metrics()
    m.describe("events_total", "counter", "Events by outcome")
    m.inc("events_total", 1_234_567, outcome="accepted")
    (sample,) = [
        s for s in families(m.render())["nerve_events"].samples if s.name.endswith("total")
    ]
    assert sample.value == 1_234_567
    assert sample.labels == {"outcome": "accepted"}


def test_a_label_with_a_quote_backslash_and_newline_parses_back_whole() -> None:
    """Before: the label was written unescaped and the parser refused the whole exposition."""
    m = Metrics()
    odd = 'say "hi"\\ then\nleave'
    m.inc("http_errors_total", status="503", cause=odd)
    (sample,) = [
        s for s in families(m.render())["nerve_http_errors"].samples if s.name.endswith("total")
    ]
    assert sample.labels == {"status": "503", "cause": odd}
    assert m.get("http_errors_total", status="503", cause=odd) == 1


def test_histograms_and_sampled_gauges_are_exposed() -> None:
    m = Metrics()
    m.describe("ingest_seconds", "histogram", "Handling time", buckets=(0.01, 0.1, 1.0))
    for seconds in (0.005, 0.05, 0.5, 5.0):
        m.observe("ingest_seconds", seconds, route="/v1/events")
    m.replace("consumer_pending", {(("consumer", "a"), ("stream", "S")): 3.0})
    m.replace("consumer_pending", {(("consumer", "b"), ("stream", "S")): 7.0})  # a is gone
    found = families(m.render())
    hist = found["nerve_ingest_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.01": 1, "0.1": 2, "1.0": 3, "+Inf": 4}
    gauge = found["nerve_consumer_pending"]
    assert [(s.labels["consumer"], s.value) for s in gauge.samples] == [("b", 7.0)]


async def test_freshness_is_measured_for_the_events_this_gateway_stored_only() -> None:
    """The gateway reads no ACTIVITY: `store` notes sequence -> received_at from its acks
    (ACTIVITY, not duplicates, the newest `SIZE`), and a list is looked up there."""
    m = Metrics()
    ops.describe(m)
    received = ops.Received()
    received.SIZE = 3
    now = datetime.now(UTC)
    stamped = [
        parse_event(event(received_at=(now - timedelta(seconds=0.5)).isoformat())) for _ in range(6)
    ]
    acks = [Ack("ACTIVITY", 7), Ack("ACTIVITY", 8, duplicate=True), Ack("CRM", 9)]
    received.note(stamped[:3], acks)
    assert list(received.at) == [7]
    received.note(stamped[3:], [Ack("ACTIVITY", seq) for seq in (10, 11, 12)])
    assert list(received.at) == [10, 11, 12]  # the oldest (7) dropped
    fresh = ops.Freshness(m, received)
    await fresh.on_list("reco.u.home", b'{"activity_seq": 10, "items": []}')
    await fresh.on_list("reco.u.home", b'{"activity_seq": 10, "items": []}')  # again: once
    await fresh.on_list("reco.u.similar", b'{"activity_seq":11,"items":[]}')
    await fresh.on_list("reco.u.home", b'{"activity_seq": 7, "items": []}')  # forgotten
    await fresh.on_list("reco.u.home", b'{"activity_seq": 99, "items": []}')  # not ours
    family = families(m.render())["nerve_recommendation_freshness_seconds"]
    assert series(family, "_count", slot="home") == 1
    assert series(family, "_count", slot="similar") == 1
    assert 0.5 <= (series(family, "_sum", slot="home") or 0) < 60


async def scrape(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return families(r.text)


def series(family: Any, suffix: str, **labels: str) -> float | None:
    """The value of the sample `<family><suffix>` whose labels include `labels`."""
    for s in family.samples:
        if s.name == family.name + suffix and labels.items() <= s.labels.items():
            return float(s.value)
    return None


async def test_a_live_gateway_exposes_latency_freshness_lag_and_per_service_metrics(
    client: httpx.AsyncClient,
) -> None:
    """Before: no histograms at all, no lag, no service figures (and the hand-written text
    broke the parser on odd labels); then, under the gateway's own credential, no lag and no
    freshness (it may not read stream info or ACTIVITY): both come without those reads now."""
    site = {SITE_KEY_HEADER: SITE_KEY}
    visit = event("item_viewed", user_id=None, anonymous_id="fresh-1", item_id="loan-personal")
    assert (await client.post("/v1/events", json=[visit], headers=site)).status_code == 202
    url = "/v1/recommendations/fresh-1?anonymous=true"
    assert (await client.get(url, headers=site)).status_code == 200

    async def freshness_seen() -> dict[str, Any] | None:
        found = await scrape(client)
        fresh = found.get("nerve_recommendation_freshness_seconds")
        return found if fresh and (series(fresh, "_count") or 0) > 0 else None

    found = await until(freshness_seen, "a list reflecting the posted event observed")
    duration = found["nerve_http_request_duration_seconds"]
    assert duration.type == "histogram"
    ingest = series(duration, "_count", method="POST", route="/v1/events")
    serve = series(duration, "_count", method="GET", route="/v1/recommendations/{user_id}")
    assert ingest == 1 and serve == 1
    assert series(duration, "_bucket", route="/v1/events", le="+Inf") == 1
    fresh = found["nerve_recommendation_freshness_seconds"]
    assert fresh.type == "histogram"
    assert 0 <= (series(fresh, "_sum") or 0) < 60

    async def caught_up() -> dict[str, Any] | None:  # the gauges are sampled every 2 s
        found = await scrape(client)
        lag = series(found["nerve_consumer_pending"], "", stream="ACTIVITY", consumer="profiles")
        return found if lag == 0 else None

    found = await until(caught_up, "the profiles consumer's lag sampled at 0")
    assert series(found["nerve_consumer_ack_pending"], "", stream="ACTIVITY") is not None
    assert (series(found["nerve_stream_last_seq"], "", stream="ACTIVITY") or 0) >= 1
    handled = found["nerve_service_handled"]
    assert {s.labels["service"].split(".")[0] for s in handled.samples} >= {"profiles"}
    assert series(found["nerve_events"], "_total", outcome="accepted") == 1  # name kept
    assert series(found["nerve_broker_sample_ok"], "") == 1

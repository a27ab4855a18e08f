"""Anomaly detection (issue 15, item 1): each detector on a planted case and on a clean history
of the same size, then the service against a real nats-server, restarts and replicas included,
and the client's `anomalies()` iterator."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.anomalies import AnomalyDef, Detectors, Finding
from engine.anomalies.base import ua_family
from engine.bus import Bus, Publisher
from engine.bus.reader import read_all
from engine.recommender.slots import SlotsConfig, load_slots
from engine.services.anomalies import AnomalyService
from nerve_client.client import Anomaly, NerveClient
from nerve_client.errors import ConfigError, EventRejected
from nerve_client.events import DeadLetter, json_schema, parse_event
from nerve_client.events.producers import admit
from nerve_client.subjects import SITE_TOKEN, user_token
from tests.conftest import EXAMPLE_PROPERTIES, event

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
BASE = NOW.replace(minute=NOW.minute - NOW.minute % 5) - timedelta(hours=3)
"""Three hours ago, on a 5-minute boundary (windows are aligned on event time)."""
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def defs(**sections: dict[str, Any]) -> dict[str, AnomalyDef]:
    """Detector definitions as the slots file gives them (`[anomalies.<name>]`)."""
    return SlotsConfig.model_validate({"slots": {}, "anomalies": sections}).anomalies


def at(minutes: float) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat()


def act(user: str, etype: str, minutes: float, **fields: Any) -> dict[str, Any]:
    return event(etype, user_id=user, time=at(minutes), **fields)


def feed(detectors: Detectors, events: list[dict[str, Any]]) -> list[Finding]:
    found = []
    for seq, e in enumerate(events, 1):
        token = user_token(e.get("user_id"), e.get("anonymous_id"))
        found += detectors.observe(token, e, "ACTIVITY", seq)
    return found


def ids(found: Finding) -> list[str]:
    return [e.event_id for e in found.evidence]


# --- the detectors, broker-free --------------------------------------------------------------


def burst_script(user: str, planted: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two hours of 1-3 item views in every fourth minute, then 15 more views: within 20 s
    (planted) or one a minute (clean). Returns (history, the last 15)."""
    history = [
        act(user, "item_viewed", m + i / 12)
        for m in range(0, 120, 4)
        for i in range(1 + m // 4 % 3)
    ]
    last = [act(user, "item_viewed", 125 + (i / 45 if planted else i)) for i in range(15)]
    return history, last


def test_rate_burst_fires_on_the_burst_with_its_events_and_not_on_a_steady_user() -> None:
    history, burst = burst_script("ann", planted=True)
    [found] = feed(Detectors(defs(bursts={"kind": "rate_burst"})), history + burst)
    n = int(found.value)
    assert found.kind == "rate_burst" and found.token == "ann" and n >= 10
    assert ids(found) == [e["id"] for e in burst[:n]]  # the window's events, deciding one last
    assert found.deciding.event_id == burst[n - 1]["id"] and found.score >= 6
    [baseline] = found.baselines
    assert baseline.median == 2 and baseline.samples == 30
    clean_history, steady = burst_script("ann", planted=False)
    assert len(clean_history + steady) == len(history + burst)
    assert feed(Detectors(defs(bursts={"kind": "rate_burst"})), clean_history + steady) == []


def amounts_script(planted: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """40 customers buying cards (viewed first: the log names the category) for about 900,
    `bob` five times; then bob buys for 90,000 (planted) or 1,000 (clean)."""
    rng = random.Random(7)
    events = [
        act("viewer", "item_viewed", 0, item_id="card-gold", properties={"category": "cards"})
    ]
    for i in range(40):
        value = round(900 * rng.lognormvariate(0, 0.2), 2)
        events.append(
            act(f"c{i}", "item_purchased", 1 + i, item_id="card-gold", properties={"value": value})
        )
    for i in range(5):
        value = round(900 * rng.lognormvariate(0, 0.2), 2)
        events.append(
            act("bob", "item_purchased", 50 + i, item_id="card-gold", properties={"value": value})
        )
    last = act(
        "bob",
        "item_purchased",
        60,
        item_id="card-gold",
        properties={"value": 90_000 if planted else 1000},
    )
    return events, last


def test_unusual_value_fires_on_an_amount_far_from_the_user_and_the_segment() -> None:
    events, planted = amounts_script(planted=True)
    [found] = feed(Detectors(defs(amounts={"kind": "unusual_value"})), [*events, planted])
    assert found.kind == "unusual_value" and found.token == "bob" and found.value == 90_000
    assert ids(found) == [planted["id"]] and found.score >= 5
    user, segment = found.baselines
    assert (user.of, user.samples, user.segment) == ("user", 5, "category:cards")
    assert (segment.of, segment.samples) == ("segment", 45)
    events, clean = amounts_script(planted=False)
    assert feed(Detectors(defs(amounts={"kind": "unusual_value"})), [*events, clean]) == []


def context_script(user: str, planted: bool) -> list[dict[str, Any]]:
    """Five visits from Madrid in Chrome, then a sign-in and a 20,000 simulation two minutes
    later: the sign-in from a Russian locale in Firefox (planted) or as usual (clean)."""
    usual = {"locale": "es-ES", "user_agent": CHROME}
    new = {"locale": "ru-RU", "user_agent": FIREFOX} if planted else usual
    visits = [act(user, "page_viewed", m, context=usual) for m in range(5)]
    sign_in = act(user, "user_identified", 30, context=new)
    simulation = act(
        user,
        "simulator_used",
        32,
        properties={"simulator": "loan", "amount": 20_000, "term_months": 24},
    )
    return [*visits, sign_in, simulation]


def test_new_context_fires_on_a_sign_in_from_elsewhere_then_a_high_amount() -> None:
    events = context_script("cat", planted=True)
    [found] = feed(Detectors(defs(ctx={"kind": "new_context"})), events)
    assert found.kind == "new_context" and found.token == "cat"
    assert ids(found) == [events[-2]["id"], events[-1]["id"]]  # the sign-in, the simulation
    assert found.baselines[0].seen == ("es-es",) and found.score == 2.0
    assert feed(Detectors(defs(ctx={"kind": "new_context"})), context_script("cat", False)) == []
    late = context_script("cat", planted=True)
    late[-1] = dict(late[-1], time=at(90))  # an hour after the sign-in: not "followed by"
    assert feed(Detectors(defs(ctx={"kind": "new_context"})), late) == []
    assert ua_family(CHROME) == "Chrome/Windows" and ua_family(FIREFOX) == "Firefox/Linux"


def site_script(planted: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Twelve 5-minute windows of 28-32 page views from many visitors, then a 13th window of
    200 (planted "up"), one of none and a 14th of 30 ("down"), or 200 more spread as usual."""
    rng = random.Random(3)
    steady = []
    for w in range(12):
        n = 28 + rng.randrange(5)
        steady += [act(f"v{w}-{i}", "page_viewed", 5 * w + 5 * i / n) for i in range(n)]
    if planted == "up":
        tail = [act(f"f{i}", "page_viewed", 60 + 4 * i / 200) for i in range(200)]
    elif planted == "down":
        tail = [act(f"f{i}", "page_viewed", 70 + i / 10) for i in range(30)]
    else:
        tail = [act(f"f{i}", "page_viewed", 60 + 35 * i / 200) for i in range(200)]
    return steady, tail


def test_site_rate_shift_fires_when_the_rate_leaves_its_band_either_way() -> None:
    config = {"kind": "site_rate_shift", "direction": "both", "seasonal_days": 0}
    steady, flood = site_script("up")
    [found] = feed(Detectors(defs(traffic=config)), steady + flood)
    n = int(found.value)
    assert found.token == SITE_TOKEN and found.kind == "site_rate_shift" and n < 100
    assert ids(found) == [e["id"] for e in flood[:n]]  # this window's events up to the decider
    assert found.baselines[0].of == "site" and found.baselines[0].samples == 12
    steady, after_silence = site_script("down")
    [drop] = feed(Detectors(defs(traffic=config)), steady + after_silence)
    assert drop.value == 0 and drop.score < 0
    assert ids(drop) == [steady[-1]["id"], after_silence[0]["id"]]  # the last before, first after
    steady, usual = site_script("clean")
    assert feed(Detectors(defs(traffic=config)), steady + usual) == []


def test_the_cooldown_holds_back_a_second_finding_on_the_same_subject() -> None:
    history, burst = burst_script("ann", planted=True)
    again = [act("ann", "item_viewed", 130 + i / 45) for i in range(15)]  # 5 minutes later
    found = feed(Detectors(defs(bursts={"kind": "rate_burst"})), history + burst + again)
    assert len(found) == 1
    found = feed(
        Detectors(defs(bursts={"kind": "rate_burst", "cooldown_minutes": 2})),
        history + burst + again,
    )
    assert len(found) == 2


def test_the_default_slots_file_defines_every_kind_and_a_bad_section_is_named() -> None:
    config, _ = load_slots()
    assert {d.kind for d in config.anomalies.values()} == {
        "rate_burst",
        "unusual_value",
        "new_context",
        "site_rate_shift",
    }


def test_a_bad_detector_section_is_refused_naming_the_field(tmp_path: Any) -> None:
    path = tmp_path / "slots.toml"
    path.write_text('[slots.home]\n[anomalies.x]\nkind = "rate_burst"\nthreshhold = 3\n')
    with pytest.raises(ConfigError, match=r"anomalies\.x\.rate_burst\.threshhold"):
        load_slots(path)
    path.write_text('[slots.home]\n[anomalies.x]\nkind = "psychic"\n')
    with pytest.raises(ConfigError, match=r"anomalies\.x"):
        load_slots(path)


# --- the service, against a real nats-server --------------------------------------------------

SERVICE_DEFS: dict[str, dict[str, Any]] = {
    "bursts": {"kind": "rate_burst"},
    "deadletters": {
        "kind": "site_rate_shift",
        "stream": "DEADLETTER",
        "window_minutes": 1,
        "history": 5,
        "min_count": 10,
        "min_spread": 1.0,
        "seasonal_days": 0,
    },
}


async def send(nc: NATS, events: list[dict[str, Any]]) -> None:
    await Publisher(nc).publish_events([parse_event(e) for e in events])


def dead(n: int, minutes_ago: float) -> list[DeadLetter]:
    """`n` dead letters of the gateway, received `minutes_ago`."""
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return [
        DeadLetter.build("gateway", f"bad {minutes_ago} {i}".encode(), [], when) for i in range(n)
    ]


async def dead_letter_flood(nc: NATS) -> list[DeadLetter]:
    """Two dead letters a minute for six minutes (the band), then 12 at once; the flood."""
    bus = Bus(nc)
    for m in range(6, 0, -1):
        await bus.deadletter(dead(2, m + 0.5))
    flood = dead(12, 0)
    await bus.deadletter(flood)
    return flood


@contextlib.asynccontextmanager
async def anomalies(nc: NATS, **kw: Any) -> AsyncIterator[AnomalyService]:
    service = AnomalyService(Bus(nc), defs(**SERVICE_DEFS), **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def stored(nc: NATS) -> list[tuple[str, dict[str, Any]]]:
    return [(s, orjson.loads(d)) for _, s, d in await read_all(nc.jetstream(), "ANOMALIES")]


async def wait_for(check: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def recent(user: str, planted: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`burst_script` moved to end a minute ago (the service reads the last day)."""
    shift = NOW - timedelta(minutes=1) - (BASE + timedelta(minutes=126))
    history, last = burst_script(user, planted)
    moved = [
        dict(e, time=(datetime.fromisoformat(e["time"]) + shift).isoformat())
        for e in history + last
    ]
    return moved[: len(history)], moved[len(history) :]


async def test_a_burst_is_published_once_with_its_evidence_and_not_again_on_restart(
    fresh: NATS,
) -> None:
    nc = fresh
    history, burst = recent("dan", planted=True)
    calm_history, calm = recent("eli", planted=False)
    async with anomalies(nc) as svc:
        await send(nc, history + calm_history + calm)
        await send(nc, burst)
        await wait_for(lambda: _count(nc, 1))
        await asyncio.sleep(0.3)
        [(subject, anomaly)] = await stored(nc)
        assert svc.stats.published == 1
    assert subject == "anomalies.bursts.dan"
    parsed = parse_event(anomaly)
    assert parsed.type == "anomaly_detected" and parsed.user_id == "dan"
    props = anomaly["properties"]
    n = int(props["value"])
    assert props["kind"] == "rate_burst" and props["subject"] == "user" and n >= 10
    assert [e["event_id"] for e in props["evidence"]] == [e["id"] for e in burst[:n]]
    assert props["decided_at"] == parse_event(burst[n - 1]).time.isoformat(timespec="milliseconds")
    assert props["baseline"][0]["method"] == "median_mad"
    async with anomalies(nc) as again:  # a restart replays the day: the same finding, held back
        await wait_for(lambda: _true(again.stats.findings >= 1))
        await asyncio.sleep(0.3)
        assert again.stats.published == 0 and again.stats.cooled >= 1
    assert len(await stored(nc)) == 1


async def _count(nc: NATS, n: int) -> bool:
    return len(await stored(nc)) >= n


async def _true(value: bool) -> bool:
    return value


async def test_two_replicas_publish_one_anomaly_per_case_site_wide_ones_too(fresh: NATS) -> None:
    nc = fresh
    history, burst = recent("fay", planted=True)
    async with anomalies(nc) as a, anomalies(nc) as b:  # both think they own every user
        await send(nc, history + burst)
        flood = await dead_letter_flood(nc)
        await wait_for(lambda: _count(nc, 2))
        await wait_for(lambda: _true(a.stats.findings >= 2 and b.stats.findings >= 2))
        await asyncio.sleep(0.3)
    found = dict(await stored(nc))
    assert sorted(found) == ["anomalies.bursts.fay", f"anomalies.deadletters.{SITE_TOKEN}"]
    site = found[f"anomalies.deadletters.{SITE_TOKEN}"]
    assert "user_id" not in site and "anonymous_id" not in site
    assert site["properties"]["subject"] == "site" and parse_event(site).user_id is None
    flood_ids = {d.id for d in flood}
    evidence = site["properties"]["evidence"]
    assert {e["stream"] for e in evidence} == {"DEADLETTER"}
    assert {e["event_id"] for e in evidence} <= flood_ids and len(evidence) >= 10


async def test_the_client_receives_anomalies_from_a_durable_consumer(
    fresh: NATS, nats_url: str
) -> None:
    nc = fresh
    history, burst = recent("gus", planted=True)
    async with anomalies(nc):
        await send(nc, history + burst)
        await wait_for(lambda: _count(nc, 1))
    async with await NerveClient.connect(nats_url) as client:
        got: list[Anomaly] = []
        async for anomaly in client.anomalies(detector="bursts", durable="ops-test"):
            got.append(anomaly)
            break
    [anomaly] = got
    assert anomaly.user_id == "gus" and anomaly.detector == "bursts"
    assert anomaly.kind == "rate_burst" and anomaly.subject == "user"
    assert anomaly.evidence[0].event_id == burst[0]["id"]


def test_anomaly_detected_is_produced_by_nerve_only_and_has_a_schema() -> None:
    schema = json_schema("anomaly_detected")
    assert schema["properties"]["type"]["const"] == "anomaly_detected"
    example = event("anomaly_detected", properties=EXAMPLE)
    assert parse_event(example).type == "anomaly_detected"
    site = {k: v for k, v in example.items() if k != "user_id"}
    assert parse_event(site).user_token == SITE_TOKEN
    for producer in ("server", "site", "import"):
        with pytest.raises(EventRejected, match="type"):
            admit(producer, example)
    assert admit("anomalies", example).type == "anomaly_detected"


EXAMPLE = EXAMPLE_PROPERTIES["anomaly_detected"]


async def test_the_service_runs_with_its_own_least_privilege_credential(
    fresh: NATS, broker: Any
) -> None:
    """The `anomalies` credential (generated with the broker) reads the log and the dead
    letters and publishes anomalies, and may not publish interest signals or activity."""
    from engine import credstore

    nc = fresh
    cred = credstore.component(broker.data_dir, "anomalies")
    assert cred is not None
    own = await Bus.connect(broker.url, "nerve-anomalies", credential=cred)
    history, burst = recent("hal", planted=True)
    service = AnomalyService(own, defs(**SERVICE_DEFS))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        await send(nc, history + burst)
        await dead_letter_flood(nc)
        await wait_for(lambda: _count(nc, 2))
        with pytest.raises(Exception):  # noqa: B017 - any refusal: permissions violation
            await own.publish_if_last("signals.loan.hal", b"{}", None, 0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await own.close()
    assert service.stats.published == 2


def day_cycle(days: int, flood_at_hour: int | None = None) -> list[dict[str, Any]]:
    """`days` days of 5-minute windows whose page-view count follows the hour of day (10 at
    night, 30 in office hours, 20 in the evening: hourly steps of 2-3x), with one window of 150
    at `flood_at_hour` of the last day."""
    rng = random.Random(5)
    out = []
    midnight = -(BASE.hour * 60 + BASE.minute)  # minutes from BASE: the cycle's hours are UTC's
    for w in range(days * 24 * 12):
        hour = (w // 12) % 24
        n = (10 if hour < 8 else 30 if hour < 18 else 20) + rng.randrange(-2, 3)
        if flood_at_hour is not None and w == (days - 1) * 288 + flood_at_hour * 12 + 6:
            n = 150
        out += [act(f"v{w}-{i}", "page_viewed", midnight + 5 * w + 5 * i / n) for i in range(n)]
    return out


def test_site_rate_shift_bands_by_hour_of_day_so_daily_steps_are_not_shifts() -> None:
    """Before (one band over the last hour): every morning's step from 10 to 30 page views per
    window fired. With the band of the same hour on earlier days, none does, and a real flood
    still does; on the first day (no such day yet) nothing is judged, unless
    `seasonal_fallback` asks for the last hour's band meanwhile (which fires at the ramps)."""
    flat = {"kind": "site_rate_shift", "direction": "both", "seasonal_days": 0}
    steps = feed(Detectors(defs(traffic=flat)), day_cycle(3))
    assert len(steps) >= 3  # the old behaviour: a finding at least at each morning step
    seasonal = {"kind": "site_rate_shift", "direction": "both", "seasonal_days": 7}
    found = feed(Detectors(defs(traffic=seasonal)), day_cycle(3))
    day_one = BASE.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    first_day = int(day_one.timestamp() * 1000)  # ms: the end of the cycle's first day
    assert found == [], [f.description for f in found]
    fallback = {**seasonal, "seasonal_fallback": True}
    early = feed(Detectors(defs(traffic=fallback)), day_cycle(3))
    assert early and all(f.decided_at < first_day for f in early)
    [flood] = [
        f
        for f in feed(Detectors(defs(traffic=seasonal)), day_cycle(3, flood_at_hour=11))
        if f.decided_at >= first_day
    ]
    assert flood.score >= 6 and "at 11h on earlier days" in flood.baselines[0].window


def test_one_users_burst_is_not_a_site_shift_but_as_many_users_are() -> None:
    """Before: 200 events of one user in a window made the site's rate 'shift' (a per-user
    burst, which rate_burst reports); each user now counts at most `max_per_user`."""
    config = {"kind": "site_rate_shift", "direction": "up", "seasonal_days": 0}
    steady, _ = site_script("clean")
    one_user = [act("bot", "page_viewed", 60 + 4 * i / 200) for i in range(200)]
    assert feed(Detectors(defs(traffic=config)), steady + one_user) == []
    uncapped = {**config, "max_per_user": 0}
    assert len(feed(Detectors(defs(traffic=uncapped)), steady + one_user)) == 1
    steady, flood = site_script("up")  # 200 events of 200 visitors
    assert len(feed(Detectors(defs(traffic=config)), steady + flood)) == 1


def test_a_new_users_burst_names_its_prior_not_zero_windows() -> None:
    """Before: a user with no earlier window read "the user's last 0 active 60 s windows"."""
    burst = [act("neo", "item_viewed", 10 + i / 60, item_id="fund-esg") for i in range(15)]
    [found] = feed(Detectors(defs(bursts={"kind": "rate_burst"})), burst)
    window = found.baselines[0].window
    assert "last 0" not in window and window.startswith("no earlier active 60 s window"), window

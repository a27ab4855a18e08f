"""Shadow and A/B experiments: stable assignment, attribution, intervals, and on a real broker
a 50/50 experiment served, clicked, reported, restarted and promoted."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from typer.testing import CliRunner

from engine.bus import Bus, Conditional, Publisher
from engine.experiments import spec
from engine.experiments.reading import experiment_report
from engine.experiments.report import (
    Action,
    ListSeen,
    tally,
    two_proportions,
    wilson,
)
from engine.experiments.spec import CHALLENGER, CONTROL, SHADOW_VARIANT, Experiment, variant_of
from engine.gateway import experiments as experiments_route
from engine.gateway.app import create_app
from engine.profiles.profile import new_profile
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Serving
from engine.recommender.experiments import Experiments, compute, shadow_messages, tagged_event
from engine.recommender.lists import Last, UserState
from engine.settings import GatewaySettings, SiteKey
from models import Interactions, make
from nerve_client.events import parse_event
from nerve_client.subjects import SHADOW, reco_subject, shadow_filter, user_token
from tests.conftest import event, serving
from tests.reco_world import NOW, publish_world, slots_config
from tests.test_robust import ops_running

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MS = int(T0.timestamp() * 1000)


def experiment(mode: str = "split", share: float = 50.0, **kw: Any) -> Experiment:
    fields: dict[str, Any] = {
        "id": "home-test-1",
        "slot": "home",
        "mode": mode,
        "control": "m-1",
        "challenger": "m-2",
        "share": share,
        "started_at": T0,
    }
    return Experiment(**{**fields, **kw})


# -- pure: assignment --------------------------------------------------------------------------
def test_assignment_is_stable_near_the_share_and_one_variant_per_user() -> None:
    e = experiment(share=10)
    tokens = [user_token(f"user-{i}") for i in range(20_000)]
    first = [variant_of(e, t) for t in tokens]
    again = [variant_of(experiment(share=10), t) for t in tokens]  # a "new process"
    assert first == again
    n, k = len(tokens), first.count(CHALLENGER)
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(k - 0.1 * n) < 5 * sd, k  # binomial bound, 5 sigma
    assert set(first) == {CONTROL, CHALLENGER}
    other = [variant_of(experiment(id="home-test-2", share=10), t) for t in tokens]
    assert other != first  # a new experiment reshuffles


def test_a_shadow_experiment_leaves_users_outside_its_share_alone() -> None:
    e = experiment("shadow", share=25)
    found = [variant_of(e, user_token(f"u{i}")) for i in range(4000)]
    assert set(found) == {CONTROL, None}
    assert abs(found.count(CONTROL) - 1000) < 5 * math.sqrt(4000 * 0.25 * 0.75)


# -- pure: statistics --------------------------------------------------------------------------
def test_wilson_and_the_z_test_match_a_hand_computation() -> None:
    r = wilson(10, 100)
    # by hand: p = .1, z = 1.96: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert r.low == pytest.approx(0.05522, abs=1e-4)
    assert r.high == pytest.approx(0.17437, abs=1e-4)
    a, b = wilson(200, 1000), wilson(100, 1000)
    c = two_proportions("ctr", CHALLENGER, a, CONTROL, b)
    pooled_se = math.sqrt(0.15 * 0.85 * (2 / 1000))
    assert c.z == pytest.approx(0.1 / pooled_se)
    wald = 1.959964 * math.sqrt(0.2 * 0.8 / 1000 + 0.1 * 0.9 / 1000)
    assert c.low == pytest.approx(0.1 - wald, abs=1e-6)
    assert c.high == pytest.approx(0.1 + wald, abs=1e-6)
    assert c.significant and c.p_value is not None and c.p_value < 1e-8
    assert not two_proportions("ctr", CHALLENGER, wilson(0, 10), CONTROL, wilson(0, 10)).significant


def scripted(
    e: Experiment, ctr: dict[str, float], users: int = 3000, seed: int = 7
) -> tuple[list[ListSeen], list[Action]]:
    """One list per user, shown once, clicked with the variant's probability."""
    rng = random.Random(seed)
    lists, actions = [], []
    for u in range(users):
        token = user_token(f"user-{u}")
        variant = variant_of(e, token)
        assert variant is not None
        rid = f"r-{u}"
        lists.append(ListSeen(rid, token, "home", variant, MS, ("a", "b")))
        actions.append(Action("recommendation_shown", token, MS + 1000, rid))
        if rng.random() < ctr[variant]:
            actions.append(Action("recommendation_clicked", token, MS + 2000, rid, "a"))
    return lists, actions


def test_a_planted_doubled_ctr_is_significant_and_equal_ctrs_are_not() -> None:
    e = experiment()
    doubled = tally(e, *scripted(e, {CONTROL: 0.05, CHALLENGER: 0.10}))
    ctr = next(c for c in doubled.comparisons if c.metric == "ctr")
    assert ctr.significant and ctr.difference is not None and ctr.difference > 0.02
    same = tally(e, *scripted(e, {CONTROL: 0.05, CHALLENGER: 0.05}))
    ctr = next(c for c in same.comparisons if c.metric == "ctr")
    assert not ctr.significant and ctr.low is not None and ctr.high is not None
    assert ctr.low < 0 < ctr.high


def test_clicks_and_purchases_are_attributed_to_the_variant_of_their_list() -> None:
    e = experiment(attribution_days=7)
    day = 86_400_000
    lists = [
        ListSeen("c1", "alice", "home", CONTROL, MS, ("loan", "card")),
        ListSeen("h1", "bob", "home", CHALLENGER, MS, ("fund", "card")),
        ListSeen("h2", "bob", "home", CHALLENGER, MS + 10, ("fund",)),
    ]
    actions = [
        Action("recommendation_shown", "alice", MS + 1, "c1"),
        Action("recommendation_shown", "alice", MS + 2, "c1"),
        Action("recommendation_clicked", "alice", MS + 3, "c1", "loan"),
        Action("item_purchased", "alice", MS + 2 * day, None, "loan", 900.0),  # converts
        Action("recommendation_shown", "bob", MS + 20, "h1"),
        Action("recommendation_shown", "bob", MS + 30, "h2"),
        Action("recommendation_clicked", "bob", MS + 40, "h2", "fund"),
        Action("item_purchased", "bob", MS + 8 * day, None, "fund", 400.0),  # too late
        Action("item_purchased", "bob", MS + 50, None, "card", 50.0),  # never clicked
        Action("recommendation_clicked", "bob", MS + 60, "elsewhere", "fund"),  # not ours
        Action("recommendation_shown", "carol", MS + 70, "other"),
    ]
    by = {v.variant: v for v in tally(e, lists, actions).variants}
    assert (by[CONTROL].impressions, by[CONTROL].clicks, by[CONTROL].conversions) == (2, 1, 1)
    assert by[CONTROL].value == 900.0 and by[CONTROL].ctr.rate == 1.0
    assert (by[CHALLENGER].impressions, by[CHALLENGER].clicks) == (2, 1)
    assert (by[CHALLENGER].conversions, by[CHALLENGER].value) == (0, 0.0)
    assert by[CHALLENGER].ctr.successes == 1 and by[CHALLENGER].ctr.trials == 2
    assert by[CHALLENGER].users == 1 and by[CHALLENGER].lists == 2


def test_a_shadow_list_is_a_hit_when_the_user_then_takes_one_of_its_items() -> None:
    e = experiment("shadow", share=100)
    lists = [
        ListSeen("s1", "alice", "home", SHADOW_VARIANT, MS, ("fund",)),
        ListSeen("c1", "alice", "home", CONTROL, MS, ("loan",)),
        ListSeen("s2", "bob", "home", SHADOW_VARIANT, MS, ("card",)),
        ListSeen("c2", "bob", "home", CONTROL, MS, ("card",)),
    ]
    actions = [
        Action("item_viewed", "alice", MS + 5, None, "fund"),
        Action("item_viewed", "bob", MS - 5, None, "card"),  # before the lists: no hit
    ]
    report = tally(e, lists, actions)
    by = {v.variant: v for v in report.variants}
    assert by[SHADOW_VARIANT].hit_rate.successes == 1 and by[CONTROL].hit_rate.successes == 0
    assert [c.metric for c in report.comparisons] == ["hit_rate"]


# -- with a real broker ------------------------------------------------------------------------
KEY = "experiments-site-key"
TOKEN = "experiments-internal-token"
USERS = [f"user-{i}" for i in range(40)]


async def shadow_stream(nc: NATS) -> None:
    """The SHADOW stream as provisioning should create it (until `engine.bus.provision` does)."""
    js = nc.jetstream()
    names = {i.config.name for i in await js.streams_info()}
    if SHADOW not in names:
        await js.add_stream(StreamConfig(name=SHADOW, subjects=[shadow_filter("*")]))


def fund_first() -> Interactions:
    """Co-views where the world fund is the most popular item (a different `popular`)."""
    rows = [(f"f{u}", "fund-world", "item_viewed") for u in range(300)]
    rows += [(f"b{u}", "fund-bonds", "item_viewed") for u in range(100)]
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["user", "item_id", "type"])
    frame["time"] = pd.Timestamp(NOW)
    return Interactions.from_frame(frame)


async def publish_challenger(nc: NATS) -> str:
    """A `popular` that ranks funds first, published but not activated; its version."""
    import tempfile
    from pathlib import Path

    from models.base import pack

    model = make("popular").fit(fund_first())
    version = "popular-funds-1"
    with tempfile.TemporaryDirectory() as tmp:
        artifact = pack(model.save(Path(tmp) / "m"))
    card = {"version": version, "model": model.name, "created_at": datetime.now(UTC).isoformat()}
    await (await Bus(nc).registry()).publish(version, card, artifact, None)
    return version


async def live_serving(bus: Bus) -> Serving:
    from engine.recommender.loading import load_active

    registry = await bus.registry()
    s = Serving(slots_config(), ItemCatalog())
    for slot in sorted(s.config.registry_slots()):
        loaded = await load_active(registry, slot, None)
        assert loaded is not None
        s.with_model(loaded)
    return s


def states(users: list[str]) -> list[UserState]:
    out = []
    for u in users:
        token = user_token(u)
        out.append(UserState(token, new_profile(token, u, None), {"trending": Last()}))
    return out


async def serve_as_the_service(
    bus: Bus, serving_: Serving, experiments: Experiments, users: list[UserState]
) -> dict[str, dict[str, Any]]:
    """Compute and store each user's `trending` list as the recommender does; token -> list."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    done = compute(serving_, experiments, [(s, "trending") for s in users], now_ms)
    writes, out, published = [], {}, []
    for s, slot, outcome, assigned in done:
        ev = tagged_event(s.token, outcome, s.profile, now_ms, assigned)
        writes.append(Conditional(reco_subject(s.token, slot), orjson.dumps(ev), ev["id"], 0))
        out[s.token] = ev
        published.append((s, slot, assigned))
    assert all(a is not None for a in await bus.publish_if_last_many(writes))
    shadows = shadow_messages(serving_, published, now_ms)
    if shadows:
        await bus.publish(shadows)
    return out


def activity(user: str, etype: str, at: datetime, item: str | None = None, **props: Any) -> Any:
    fields: dict[str, Any] = {"user_id": user, "time": at.isoformat(), "properties": props}
    if item is not None:
        fields["item_id"] = item
    return parse_event(event(etype, **fields))


@pytest.fixture
async def world(fresh: NATS) -> dict[str, str]:
    await shadow_stream(fresh)
    return await publish_world(fresh)


async def test_a_50_50_experiment_attributes_clicks_and_keeps_users_in_one_variant(
    fresh: NATS, world: dict[str, str]
) -> None:
    bus = Bus(fresh)
    registry = await bus.registry()
    challenger = await publish_challenger(fresh)
    e = await spec.start(registry, "trending", challenger, 50)
    served = await serve_as_the_service(
        bus, await live_serving(bus), await Experiments.load(registry), states(USERS)
    )
    variants = {t: ev["properties"]["variant"] for t, ev in served.items()}
    assert set(variants.values()) == {CONTROL, CHALLENGER}
    for token, ev in served.items():
        props = ev["properties"]
        assert props["experiment"] == e.id and props["variant"] == variant_of(e, token)
        want = challenger if props["variant"] == CHALLENGER else world["trending"]
        assert props["model_version"] == want
    # every user sees their list; only the challenger's users click, one of them buys
    now = datetime.now(UTC)
    events, buyer = [], None
    for u in USERS:
        props = served[user_token(u)]["properties"]
        rid, first = props["recommendation_id"], props["items"][0]["item_id"]
        shown = [{"item_id": first, "position": 0}]
        events.append(
            activity(
                u, "recommendation_shown", now, recommendation_id=rid, slot="trending", items=shown
            )
        )
        if props["variant"] == CHALLENGER:
            events.append(
                activity(
                    u,
                    "recommendation_clicked",
                    now + timedelta(seconds=1),
                    first,
                    recommendation_id=rid,
                    slot="trending",
                    position=0,
                )
            )
            if buyer is None:
                buyer = u
                events.append(
                    activity(
                        u,
                        "item_purchased",
                        now + timedelta(hours=1),
                        first,
                        value=400.0,
                        currency="EUR",
                    )
                )
    await Publisher(fresh).publish_events(events)
    report = await experiment_report(bus, e)
    by = {v.variant: v for v in report.variants}
    n_challenger = list(variants.values()).count(CHALLENGER)
    assert by[CHALLENGER].impressions == by[CHALLENGER].clicks == n_challenger
    assert by[CONTROL].impressions == len(USERS) - n_challenger and by[CONTROL].clicks == 0
    assert by[CHALLENGER].conversions == 1 and by[CHALLENGER].value == 400.0
    assert by[CONTROL].conversions == 0
    # a restart: a new Experiments from the registry puts everyone where their list says
    again = await Experiments.load(registry)
    s = await live_serving(bus)
    for token, variant in variants.items():
        assert again.assign(s, token, "trending").variant == variant
        assert again.assign(s, token, "home").variant == variant  # home falls back to trending


async def test_a_shadow_experiment_logs_the_challenger_and_serves_the_control(
    fresh: NATS, world: dict[str, str]
) -> None:
    bus = Bus(fresh)
    registry = await bus.registry()
    challenger = await publish_challenger(fresh)
    e = await spec.start(registry, "trending", challenger, 100, shadow=True)
    served = await serve_as_the_service(
        bus, await live_serving(bus), await Experiments.load(registry), states(USERS[:6])
    )
    assert {ev["properties"]["model_version"] for ev in served.values()} == {world["trending"]}
    assert {ev["properties"]["variant"] for ev in served.values()} == {CONTROL}
    shadows = [orjson.loads(d) for _, _, d in await bus.read_all(SHADOW)]
    assert len(shadows) == 6
    assert {s["properties"]["variant"] for s in shadows} == {SHADOW_VARIANT}
    assert {s["properties"]["model_version"] for s in shadows} == {challenger}
    # the user then looks at the shadow's first item: a hit for the shadow, none for control
    first = shadows[0]["properties"]["items"][0]["item_id"]
    user = shadows[0]["user_id"]
    at = datetime.now(UTC) + timedelta(seconds=5)
    await Publisher(fresh).publish_events([activity(user, "item_viewed", at, first)])
    by = {v.variant: v for v in (await experiment_report(bus, e)).variants}
    assert by[SHADOW_VARIANT].lists == 6 and by[SHADOW_VARIANT].hit_rate.successes >= 1


async def test_promote_activates_the_challenger_and_stops_the_experiment(
    fresh: NATS, world: dict[str, str], nats_url: str
) -> None:
    import engine.cli.experiments  # noqa: F401  (registers `nerve experiments`)
    from engine.cli import app

    registry = await Bus(fresh).registry()
    challenger = await publish_challenger(fresh)

    def nerve(*args: str) -> str:
        result = CliRunner().invoke(app, ["--nats-url", nats_url, "experiments", *args])
        assert result.exit_code == 0, result.output
        return result.output

    started = await asyncio.to_thread(
        nerve, "start", "--slot", "trending", "--challenger", challenger, "--share", "10"
    )
    assert "started trending-" in started
    listed = await asyncio.to_thread(nerve)
    assert "challenger" in listed and "two-proportion z-test" in listed
    again = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        [
            "--nats-url",
            nats_url,
            "experiments",
            "start",
            "--slot",
            "trending",
            "--challenger",
            challenger,
        ],
    )
    assert again.exit_code != 0  # one experiment per slot
    promoted = await asyncio.to_thread(nerve, "promote", "trending")
    assert f"promoted {challenger} to slot trending" in promoted
    assert await registry.kv.get("active.trending") == challenger.encode()
    (e,) = await spec.listing(registry)
    assert e.outcome == "promoted" and e.stopped_at is not None
    assert await spec.running(registry) == {}
    assert (await Experiments.load(registry)).running == {}


async def test_two_starts_at_once_on_one_slot_store_one_experiment(
    fresh: NATS, world: dict[str, str]
) -> None:
    """Before: both passed the "slot already runs one" check and both were stored (review)."""
    registry = await Bus(fresh).registry()
    challenger = await publish_challenger(fresh)
    results = await asyncio.gather(
        *(spec.start(registry, "trending", challenger, 10) for _ in range(2)),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, Experiment)]
    refused = [r for r in results if isinstance(r, spec.ExperimentError)]
    assert len(started) == 1 and len(refused) == 1, results
    assert list(await spec.running(registry)) == ["trending"]
    await spec.stop(registry, "trending")
    again = await spec.start(registry, "trending", challenger, 10)  # the slot is free again
    assert (await spec.running(registry))["trending"].id == again.id


async def test_get_experiments_refuses_a_site_key_and_answers_an_internal_token(
    fresh: NATS, world: dict[str, str], nats_url: str
) -> None:
    registry = await Bus(fresh).registry()
    e = await spec.start(registry, "trending", await publish_challenger(fresh), 10)
    settings = GatewaySettings(site_keys=(SiteKey(key=KEY),), internal_tokens=(TOKEN,))
    app = create_app(settings, nats_url, 5)
    app.include_router(experiments_route.router)  # until engine.gateway.app includes it
    async with (
        ops_running(Bus(fresh)),  # /v1/experiments is read by the ops service
        serving(app) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        site = await http.get("/v1/experiments", headers={"X-Nerve-Site-Key": KEY})
        assert site.status_code == 401, site.text
        bad = await http.get("/v1/experiments", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 403
        ok = await http.get("/v1/experiments", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        (found,) = ok.json()["experiments"]
        assert found["experiment"]["id"] == e.id
        assert {v["variant"] for v in found["variants"]} == {CONTROL, CHALLENGER}

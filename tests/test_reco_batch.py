"""The recommender's batch path: users scored together rank as they would alone, the compiled
rules say what the rule table says, an event recomputes only the slots it can change, and a
list made in a batch is still explained exactly (against a real nats-server)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.bus.consumer import Delivery
from engine.profiles.profile import apply, new_profile
from engine.profiles.store import ProfileStore
from engine.recommender.batch import HISTORY, reads, score_rows
from engine.recommender.catalog import Item, ItemCatalog
from engine.recommender.core import Loaded, Serving
from engine.recommender.explain import explain
from engine.recommender.rules import Facts, Judge, forbids
from engine.recommender.triggers import Triggers
from engine.services.recommender import RecommenderService
from models import Interactions, make
from nerve_client.subjects import ACTIVITY
from tests.reco_world import (
    ITEMS,
    NOW,
    _event,
    fit_nbo,
    interactions,
    publish_model,
    publish_world,
    slots_config,
)
from tests.test_recommender_service import act, lists, send

NOW_MS = int(NOW.timestamp() * 1000)
DAY = 86_400_000


def _big_world(items: int = 3000, seed: int = 5) -> tuple[list[str], Interactions]:
    rng = np.random.default_rng(seed)
    ids = [f"i{i}" for i in range(items)]
    users = [f"u{u}" for u in range(1500) for _ in range(6)]
    cols = [ids[int(j)] for j in rng.integers(0, items, len(users))]
    return ids, Interactions.from_triples(users, cols, columns=ids)


@pytest.mark.parametrize("kind", ["als", "ease", "itemknn", "popular", "popular-segment", "nbo"])
def test_a_users_scores_do_not_depend_on_who_else_is_in_the_batch(kind: str) -> None:
    rng = np.random.default_rng(1)
    if kind == "nbo":
        model: Any = fit_nbo()
        ids = [i.item_id for i in ITEMS]
    else:
        ids, data = _big_world()
        model = make(kind, **({"factors": 16, "iterations": 3} if kind == "als" else {})).fit(data)
    histories = [
        {ids[int(j)]: float(rng.integers(1, 9)) for j in rng.integers(0, len(ids), n)}
        for n in rng.integers(0, 25, 120)
    ]
    profiles = [{"recent_items": [], "counts": {"item_viewed": len(h)}} for h in histories]
    together = score_rows(model, profiles, histories, NOW_MS)
    for i in range(0, 120, 11):
        alone = score_rows(model, profiles[i : i + 1], histories[i : i + 1], NOW_MS)[0]
        assert np.array_equal(alone, together[i]), i
        some = score_rows(model, profiles[i : i + 3], histories[i : i + 3], NOW_MS)
        assert all(np.array_equal(s, together[i + j]) for j, s in enumerate(some))
        # and the model's own single-user scoring agrees (to float32 rounding)
        assert np.allclose(alone, model.score(profiles[i], histories[i], NOW_MS), atol=1e-5)


def test_the_compiled_rules_remove_what_the_rule_table_removes() -> None:
    config = slots_config(
        home={
            "k": 3,
            "rules": {
                "cap": {"impressions": 1, "days": 7},
                "exclude_seen": True,
                "max_per_category": 1,
                "eligibility": [
                    {"name": "funds need consent", "categories": ["funds"], "field": "x.y"}
                ],
            },
            "filter": {"exclude_categories": ["cards"]},
        }
    )
    cfg = config.slots["home"]
    extra = [Item(item_id=f"loan-{n}", name=n, category="loans") for n in ("a", "b")]
    catalog = ItemCatalog([i for i in ITEMS if i.item_id != "loan-car"] + extra)
    items = [i.item_id for i in ITEMS] + ["unknown-item", "loan-a", "loan-b"]
    profile = new_profile("zoe", "zoe", None)
    script: list[tuple[str, str | None, dict[str, Any]]] = [
        ("item_viewed", "savings-plus", {"category": "savings"}),
        ("item_purchased", "card-basic", {"value": 1}),
        ("offer_dismissed", "fund-bonds", {"reason": "not_interested"}),
        (
            "recommendation_shown",
            None,
            {"recommendation_id": "r", "slot": "home", "items": [{"item_id": "loan-personal"}]},
        ),
    ]
    for seq, (etype, item, props) in enumerate(script, 1):
        apply(profile, _event(etype, "zoe", seq, item, **props), "activity", seq)
    profile["crm"]["fund-world"] = {"outcome": "declined", "time": NOW_MS - DAY, "seq": 9}
    judge = Judge(cfg, catalog, items)
    verdicts = judge.personal(profile, NOW_MS + DAY, "savings-plus")
    facts = Facts(profile, cfg, NOW_MS + DAY, catalog, "savings-plus")
    for i, item in enumerate(items):
        assert verdicts.forbids(i, item) == forbids(item, facts), item
    # the category maximum counts what was kept
    free = [i for i, item in enumerate(items) if verdicts.forbids(i, item) is None]
    assert [items[i] for i in free] == ["loan-a", "loan-b"]
    verdicts.kept(free[0])
    facts.kept(items[free[0]])
    for i, item in enumerate(items):
        assert verdicts.forbids(i, item) == forbids(item, facts), item
    assert verdicts.forbids(free[1], "loan-b") == "max per category"
    # the walk of a list (inlined) keeps and removes what forbids/kept say, in order
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 50):
        order = [int(i) for i in rng.permutation(len(items))]
        pairs = [(i, float(s)) for i, s in zip(order, rng.random(len(items)), strict=True)]
        pairs[1] = (pairs[1][0], float("nan"))
        removed: list[tuple[str, str]] = []
        walked = judge.personal(profile, NOW_MS + DAY, "savings-plus").walk(
            iter(pairs), items, k, removed
        )
        reference = judge.personal(profile, NOW_MS + DAY, "savings-plus")
        kept, gone = [], []
        for i, score in pairs:
            if not np.isfinite(score):
                continue
            rule = reference.forbids(i, items[i])
            if rule is not None:
                gone.append((items[i], rule))
                continue
            kept.append((items[i], score))
            reference.kept(i)
            if len(kept) == k:
                break
        assert (walked, removed) == (kept, gone), k


def test_an_item_view_recomputes_home_and_similar_but_not_a_popularity_trending() -> None:
    data = interactions()
    models = {
        "home": Loaded("home", "als-1", "als", make("als", factors=4).fit(data)),
        "similar": Loaded("similar", "knn-1", "itemknn", make("itemknn").fit(data)),
        "trending": Loaded("trending", "pop-1", "popular", make("popular").fit(data)),
    }
    assert reads(models["trending"].model) == frozenset()
    assert reads(models["home"].model) == {HISTORY}
    triggers = Triggers(slots_config())
    assert triggers.slots("item_viewed", models) == ("home", "similar")
    assert triggers.slots("page_viewed", models) == ()
    assert set(triggers.slots("item_purchased", models)) == {"home", "similar", "trending"}
    assert set(triggers.slots("offer_dismissed", models)) == {"home", "similar", "trending"}
    assert set(triggers.slots("an_event_type_nobody_knows", models)) == {
        "home",
        "similar",
        "trending",
    }
    # derived from the configuration: a trending that drops what was seen reads the history
    seen = Triggers(slots_config(trending={"rules": {"exclude_seen": True}}))
    assert "trending" in seen.slots("item_viewed", models)
    # ... and from the model: a trending served by a history model does too
    personal = {**models, "trending": Loaded("trending", "als-2", "als", models["home"].model)}
    assert "trending" in Triggers(slots_config()).slots("item_viewed", personal)


async def _service(nc: NATS) -> RecommenderService:
    """A service driven through `process`, as its worker would, without `run`."""
    bus = Bus(nc)
    service = RecommenderService(
        bus, Serving(slots_config(), ItemCatalog()), await ProfileStore.open(bus)
    )
    await service.reload(await bus.registry())
    await bus.scan("CATALOG", service.serving.catalog.update)
    return service


async def _deliveries(nc: NATS, events: list[dict[str, Any]]) -> list[Delivery]:
    bus = Bus(nc)
    got: list[Delivery] = []
    consumer = bus.push(ACTIVITY, f"batch-test-{len(events)}", got.append)
    await consumer.start()
    await send(nc, *events)
    for _ in range(200):
        if len(got) >= len(events):
            break
        await asyncio.sleep(0.05)
    await consumer.ack(got[-1])
    await consumer.stop()
    return got


async def test_a_batch_publishes_only_the_lists_an_event_can_change_and_they_explain(
    fresh: NATS,
) -> None:
    nc = fresh
    await publish_world(nc)
    service = await _service(nc)
    users = [f"b{u}" for u in range(12)]
    first = [act(u, "item_viewed", "card-gold", category="cards") for u in users]
    await service.process(await _deliveries(nc, first))
    for u in users:  # a first list for every slot (none was stored)
        for slot in ("home", "similar", "trending"):
            assert len(await lists(nc, u, slot)) == 1, (u, slot)
    second = [act(u, "item_viewed", "savings-plus", category="savings") for u in users]
    await service.process(await _deliveries(nc, second))
    for u in users:
        assert len(await lists(nc, u, "trending")) == 1, u  # popularity: a view cannot change it
        newest = (await lists(nc, u, "similar"))[-1]
        assert newest["properties"]["anchor"] == "savings-plus"
    assert service.stats.computed == 12 * 3 + 12 * 2
    # a list made in a batch of twelve is the list `nerve explain` recomputes for that user
    for u in users[:4]:
        for slot in ("home", "similar"):
            stored = (await lists(nc, u, slot))[-1]
            ex = await explain(Bus(nc), stored["id"], slots_config(), user=u)
            assert ex.matches, (u, slot, ex.notes)


async def test_a_stored_list_of_an_older_model_is_recomputed_on_the_next_event(
    fresh: NATS,
) -> None:
    nc = fresh
    world = await publish_world(nc)
    service = await _service(nc)
    await service.process(await _deliveries(nc, [act("old", "item_viewed", "card-gold")]))
    (before,) = await lists(nc, "old", "trending")
    assert before["properties"]["model_version"] == world["trending"]
    await publish_model(nc, make("popular", count="users").fit(interactions()), "trending")
    await service.reload(await Bus(nc).registry())
    computed = service.stats.computed
    await service.process(await _deliveries(nc, [act("old", "item_viewed", "loan-car")]))
    # a view alone would not recompute trending; its list's model is no longer the active one
    assert service.stats.computed - computed == 3


def test_each_list_of_a_batch_is_computed_at_its_own_time() -> None:
    """A replay's decisions each have their own time: `recommend_many` with one `now_ms` per
    profile gives list `i` exactly as `recommend` at `now[i]` (a cap that has expired for one
    user has not for another in the same batch)."""
    from tests.test_recommender_core import User

    data = interactions()
    models = {
        "home": Loaded("home", "nbo-1", "nbo", fit_nbo()),
        "similar": Loaded("similar", "knn-1", "itemknn", make("itemknn").fit(data)),
        "trending": Loaded("trending", "pop-1", "popular", make("popular").fit(data)),
    }
    serving = Serving(slots_config(), ItemCatalog(ITEMS), models)
    shown = {
        "recommendation_id": "r",
        "slot": "home",
        "items": [{"item_id": "loan-personal", "position": 0}],
    }
    user = User().does(
        "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
    )
    user.does("recommendation_shown", **shown).does("recommendation_shown", **shown)
    times = [NOW_MS, NOW_MS + 8 * DAY, NOW_MS + DAY, NOW_MS + 9 * DAY]
    for slot in ("home", "similar", "trending"):
        together = serving.recommend_many(slot, [user.profile] * 4, times)
        for t, out in zip(times, together, strict=True):
            alone = serving.recommend(slot, user.profile, t)
            assert out.signature() == alone.signature(), (slot, t)
            assert out.removed == alone.removed and out.fallback == alone.fallback
    home = serving.recommend_many("home", [user.profile] * 4, times)
    capped = [("loan-personal", "frequency cap") in o.removed for o in home]
    assert capped == [True, False, True, False]
    with pytest.raises(ValueError):
        serving.recommend_many("home", [user.profile] * 2, times)


@pytest.mark.parametrize("kind", ["als", "itemknn"])
def test_a_batch_explains_each_list_as_its_model_does_alone(kind: str) -> None:
    from engine.recommender.batch import explain_rows

    rng = np.random.default_rng(2)
    ids, data = _big_world()
    model: Any = make(kind, **({"factors": 16, "iterations": 3} if kind == "als" else {}))
    model.fit(data)
    histories = [
        {ids[int(j)]: float(rng.integers(1, 9)) for j in rng.integers(0, len(ids), n)}
        for n in rng.integers(0, 25, 60)
    ]
    chosen = [[ids[int(j)] for j in rng.integers(0, len(ids), 10)] for _ in histories]
    chosen[3] = [*chosen[3], "not-an-item"]
    profiles: list[dict[str, Any]] = [{} for _ in histories]
    together = explain_rows(model, profiles, histories, chosen, [NOW_MS] * 60)
    assert sum(len(d) for d in together) > (100 if kind == "als" else 10)
    for i in range(60):
        alone = explain_rows(
            model, profiles[i : i + 1], histories[i : i + 1], chosen[i : i + 1], [NOW_MS]
        )
        assert alone == [together[i]], i
        own = model.explain(profiles[i], histories[i], chosen[i], NOW_MS) if histories[i] else {}
        assert together[i] == own, i

"""The recommendation pipeline without a broker: models, rules, fallbacks and reasons."""

from __future__ import annotations

from typing import Any

import pytest

from engine.profiles.profile import apply, new_profile
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Loaded, Serving
from engine.recommender.slots import SlotsConfig, load_slots
from models import make
from nerve_client.errors import ConfigError
from tests.reco_world import ITEMS, NOW, _event, fit_nbo, interactions, slots_config

NOW_MS = int(NOW.timestamp() * 1000)
DAY = 86_400_000


@pytest.fixture(scope="module")
def serving() -> Serving:
    data = interactions()
    models = {
        "home": Loaded("home", "nbo-1", "nbo", fit_nbo()),
        "similar": Loaded("similar", "knn-1", "itemknn", make("itemknn").fit(data)),
        "trending": Loaded("trending", "pop-1", "popular", make("popular").fit(data)),
    }
    return Serving(slots_config(), ItemCatalog(ITEMS), models)


class User:
    """A profile grown with the projection, one scripted event at a time."""

    def __init__(self, name: str = "alice") -> None:
        self.profile = new_profile(name, name, None)
        self.seq = 0

    def does(self, etype: str, item: str | None = None, **props: Any) -> User:
        self.seq += 1
        apply(self.profile, _event(etype, "alice", self.seq, item, **props), "activity", self.seq)
        return self


def ids(serving: Serving, slot: str, user: User, **kw: Any) -> list[str]:
    return [r.item_id for r in serving.recommend(slot, user.profile, NOW_MS, **kw).items]


def test_a_new_user_gets_the_fallback_and_it_says_so(serving: Serving) -> None:
    out = serving.recommend("home", User().profile, NOW_MS)
    assert out.fallback == "cold_start" and out.served_by == "trending"
    assert out.model_version == "pop-1"
    assert out.items[0].item_id == "card-gold"  # the most popular
    assert {r.reason for r in out.items} == {"popular right now"}


def test_a_loan_simulation_moves_the_loan_to_the_top_with_its_reason(serving: Serving) -> None:
    user = User().does("item_viewed", "card-gold", category="cards")
    before = serving.recommend("home", user.profile, NOW_MS)
    assert before.fallback is None and before.model_version == "nbo-1"
    assert before.items[0].item_id != "loan-personal"
    user.does("simulator_used", "loan-personal", simulator="loan", amount=9000, term_months=36)
    after = serving.recommend("home", user.profile, NOW_MS)
    assert after.items[0].item_id == "loan-personal"
    assert "simulated" in after.items[0].reason


def test_held_items_leave_every_slot(serving: Serving) -> None:
    user = User().does("item_viewed", "card-gold", category="cards")
    assert "card-gold" in ids(serving, "trending", user)
    user.does("item_purchased", "card-gold", value=200)
    for slot in ("home", "similar", "trending"):
        out = serving.recommend(slot, user.profile, NOW_MS)
        assert "card-gold" not in [r.item_id for r in out.items], slot
        assert ("card-gold", "held") in out.removed or slot == "similar", slot


def test_frequency_cap_and_dismissal(serving: Serving) -> None:
    user = User().does(
        "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
    )
    assert ids(serving, "home", user)[0] == "loan-personal"
    shown = {
        "recommendation_id": "r",
        "slot": "home",
        "items": [{"item_id": "loan-personal", "position": 0}],
    }
    user.does("recommendation_shown", **shown)
    assert ids(serving, "home", user)[0] == "loan-personal"  # once: under the cap of 2
    user.does("recommendation_shown", **shown)
    out = serving.recommend("home", user.profile, NOW_MS)
    assert "loan-personal" not in [r.item_id for r in out.items]
    assert ("loan-personal", "frequency cap") in out.removed
    # eight days later the cap has expired
    later = serving.recommend("home", user.profile, NOW_MS + 8 * DAY)
    assert later.items[0].item_id == "loan-personal"
    user.does("offer_dismissed", "loan-personal", reason="not_interested")
    gone = serving.recommend("home", user.profile, NOW_MS + 8 * DAY)
    assert ("loan-personal", "dismissed") in gone.removed
    back = serving.recommend("home", user.profile, NOW_MS + 31 * DAY)
    assert back.items[0].item_id == "loan-personal"


def test_crm_decline_and_diversity(serving: Serving) -> None:
    user = User().does(
        "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
    )
    out = serving.recommend("home", user.profile, NOW_MS)
    cats = [ITEMS_BY_ID[r.item_id].category for r in out.items]
    assert len(cats) == len(set(cats)) == 3  # at most one per category
    user.profile["crm"]["loan-personal"] = {
        "outcome": "declined",
        "channel": "phone",
        "time": NOW_MS - 10 * DAY,
        "seq": 1,
        "contacts": 1,
    }
    out = serving.recommend("home", user.profile, NOW_MS)
    assert ("loan-personal", "crm declined") in out.removed


def test_similar_uses_the_context_item_then_the_last_one_viewed(serving: Serving) -> None:
    user = User().does("item_viewed", "savings-plus", category="savings")
    out = serving.recommend("similar", user.profile, NOW_MS)
    assert out.anchor == "savings-plus"
    assert set(r.item_id for r in out.items[:2]) == {"fund-world", "fund-bonds"}
    assert out.items[0].reason == "similar to Savings Plus"
    ctx = serving.recommend("similar", user.profile, NOW_MS, context_item="loan-personal")
    assert ctx.items[0].item_id == "loan-car"


def test_no_personalisation_without_consent(serving: Serving) -> None:
    user = User().does(
        "simulator_used", "loan-personal", simulator="loan", amount=1, term_months=12
    )
    user.does("consent_updated", analytics=True, personalization=False, marketing=False)
    out = serving.recommend("home", user.profile, NOW_MS)
    assert out.fallback == "no_consent" and out.served_by == "trending"


def test_no_model_anywhere_gives_an_empty_list() -> None:
    out = Serving(slots_config()).recommend("home", User().profile, NOW_MS)
    assert out.items == [] and out.fallback == "no_model"


def test_eligibility_rule_and_filters() -> None:
    config = slots_config(
        trending={
            "filter": {"exclude_categories": ["cards"]},
            "rules": {
                "eligibility": [
                    {
                        "name": "funds need marketing consent",
                        "categories": ["funds"],
                        "field": "consent.marketing",
                        "op": "==",
                        "value": True,
                    }
                ]
            },
        }
    )
    data = interactions()
    s = Serving(
        config,
        ItemCatalog(ITEMS),
        {"trending": Loaded("trending", "p", "popular", make("popular").fit(data))},
    )
    out = s.recommend("trending", User().profile, NOW_MS)
    got = [r.item_id for r in out.items]
    assert not any(i.startswith("card") or i.startswith("fund") for i in got)
    assert ("card-gold", "filter: excluded category") in out.removed
    assert any(rule == "eligibility: funds need marketing consent" for _, rule in out.removed)


def test_config_errors_are_one_clear_line(tmp_path: Any) -> None:
    bad = tmp_path / "slots.toml"
    bad.write_text("[slots.home]\nk = 0\n")
    with pytest.raises(ConfigError, match=r"slots.toml: slots.home.k: Input should be greater"):
        load_slots(bad)
    bad.write_text('[slots.home]\nfallback = "nowhere"\n')
    with pytest.raises(ConfigError, match="no slot 'nowhere'"):
        load_slots(bad)
    bad.write_text('[slots.a]\nfallback = "b"\n[slots.b]\nfallback = "a"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_slots(bad)
    config, path = load_slots()
    assert isinstance(config, SlotsConfig) and path.name == "default_slots.toml"
    assert {"home", "similar", "trending"} <= set(config.slots)


ITEMS_BY_ID = {i.item_id: i for i in ITEMS}

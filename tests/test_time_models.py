"""The time- and order-aware built-ins: each fits, saves and loads as arrays and JSON, and on a
planted history where its signal (recency, repeat purchase) decides, beats its time-blind
counterpart (item-kNN) on the same split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models import REGISTRY, Recommender, make
from models.recency import RecencyKNN
from training.evaluate import evaluate, interactions_for

DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2026-01-01", tz="UTC")


def history(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(user, item, type, day) rows as a warehouse-shaped frame, in time order."""
    rows = sorted(rows, key=lambda r: r[3])
    return pd.DataFrame(
        {
            "seq": np.arange(1, len(rows) + 1),
            "user": [r[0] for r in rows],
            "user_id": [r[0] for r in rows],
            "anonymous_id": [None] * len(rows),
            "item_id": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "value": [None] * len(rows),
            "properties": [None] * len(rows),
            "time": [START + r[3] * DAY for r in rows],
        }
    )


def drifting(users: int = 400, seed: int = 3) -> pd.DataFrame:
    """Tastes that moved: each user viewed five items of one group long ago, then three of
    another lately, and goes on (from day 56) with two more of the new group."""
    rng = np.random.default_rng(seed)
    groups = [[f"g{g}i{i}" for i in range(10)] for g in range(4)]
    rows = []
    for u in range(users):
        old = u % 4
        new = (old + 1 + (u // 4) % 3) % 4
        for n, item in enumerate(rng.choice(groups[old], 5, replace=False)):
            rows.append((f"u{u}", str(item), "item_viewed", 1 + n + rng.random()))
        later = rng.choice(groups[new], 5, replace=False)
        for n, item in enumerate(later):
            rows.append((f"u{u}", str(item), "item_viewed", 50 + n + rng.random()))
    return history(rows)


def repeating(users: int = 300, seed: int = 5) -> pd.DataFrame:
    """Baskets: each user buys three staples of their own every ten days and browses four
    random items; from day 40 they buy their staples again."""
    rng = np.random.default_rng(seed)
    items = [f"p{i}" for i in range(60)]
    rows = []
    for u in range(users):
        staples = rng.choice(items, 3, replace=False)
        for day in (0, 10, 20, 30):
            rows += [(f"u{u}", str(s), "item_purchased", day + rng.random()) for s in staples]
        rows += [(f"u{u}", str(i), "item_viewed", 35 * rng.random()) for i in rng.choice(items, 4)]
        rows += [(f"u{u}", str(s), "item_purchased", 41 + rng.random()) for s in staples[:2]]
    return history(rows)


def cut(frame: pd.DataFrame, day: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    at = START + day * DAY
    return frame[frame["time"] < at], frame[frame["time"] >= at]


def test_both_are_registered_and_round_trip_through_arrays_and_json(tmp_path: Path) -> None:
    frame = drifting(60)
    for name, params in (("itemknn-recency", {"half_life_days": 3.0}), ("repeat-blend", {})):
        assert name in REGISTRY
        model = make(name, **params)
        data = interactions_for(model, frame)
        model.fit(data)
        folder = model.save(tmp_path / name)
        assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "model.json"]
        loaded = Recommender.load(folder)
        assert loaded.config == model.config
        assert np.array_equal(loaded.score_many(data.matrix), model.score_many(data.matrix))


def test_recency_weighting_beats_item_knn_when_tastes_drift() -> None:
    train, test = cut(drifting(), 53)
    blind = evaluate(make("itemknn"), train, test)
    recent = evaluate(make("itemknn-recency", half_life_days=3.0), train, test)
    assert recent["users"] == blind["users"] > 300
    assert recent["ndcg@10"] > 1.2 * blind["ndcg@10"], (recent, blind)


def test_recency_model_decays_the_profiles_items_by_their_age_when_serving() -> None:
    train, _ = cut(drifting(), 53)
    model = RecencyKNN(half_life_days=3.0)
    model.fit(interactions_for(model, train))
    now = int((START + 53 * DAY).timestamp() * 1000)
    old, new = f"g0i{0}", f"g1i{0}"
    profile = {
        "recent_items": [
            {"item_id": new, "type": "item_viewed", "time": now - 86_400_000, "seq": 2},
            {"item_id": old, "type": "item_viewed", "time": now - 60 * 86_400_000, "seq": 1},
        ],
        "held": {},
    }
    scores = model.score(profile, {old: 1.0, new: 1.0}, now)
    assert model.items is not None
    top = str(model.items[int(np.argmax(np.where(np.isin(model.items, [old, new]), -1, scores)))])
    assert top.startswith("g1"), top  # the recent item's group, not the old one's


def test_repeat_purchase_prior_beats_item_knn_on_baskets() -> None:
    train, test = cut(repeating(), 40)
    blind = evaluate(make("itemknn"), train, test, repeats=True)
    blend = evaluate(make("repeat-blend", repeat_weight=0.5), train, test, repeats=True)
    assert blend["users"] == blind["users"] > 250
    assert blend["ndcg@10"] > 2 * blind["ndcg@10"], (blend, blind)
    assert blend["hr@10"] > 0.9

"""Every model passes the same contract; on a generated history each beats popularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from models import REGISTRY, Interactions, NotFitted, Recommender, make
from models.itemknn import ItemKNN
from training.evaluate import evaluate
from training.splits import global_cut, leave_last_n

SMALL = {"als": {"factors": 8, "iterations": 5}}
NAMES = sorted(REGISTRY)


def tiny() -> Interactions:
    users = ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4", "u4"]
    items = ["a", "b", "a", "b", "c", "d", "c", "d", "a"]
    return Interactions.from_triples(users, items, [1, 1, 1, 1, 1, 1, 2, 1, 1])


@pytest.fixture(params=NAMES)
def model(request: pytest.FixtureRequest) -> Recommender:
    return make(request.param, **SMALL.get(request.param, {})).fit(tiny())


def test_recommendations_are_ranked_and_exclude_history_and_exclusions(model: Recommender) -> None:
    recs = model.recommend({"a": 1.0}, k=2, exclude=["d"])
    assert len(recs) == 2
    assert not {"a", "d"} & {r.item for r in recs}
    assert recs[0].score >= recs[1].score
    kept = model.recommend(["a"], k=4, exclude_seen=False)
    assert "a" in {r.item for r in kept}
    scores = [r.score for r in kept]
    assert scores == sorted(scores, reverse=True) and len(kept) == 4


def test_an_unknown_user_gets_the_popular_items(model: Recommender) -> None:
    cold = model.recommend({}, k=4)
    assert len(cold) == 4
    assert model.recommend({"unknown-item": 1.0}, k=4) == cold
    assert cold[0].item == "a"  # used by the most users


def test_save_and_load_round_trip_to_identical_scores(model: Recommender, tmp_path: Path) -> None:
    loaded = Recommender.load(model.save(tmp_path / model.name))
    assert type(loaded) is type(model) and loaded.config == model.config
    rows = tiny().matrix
    assert np.array_equal(loaded.score_many(rows), model.score_many(rows))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / model.name).iterdir())


@pytest.mark.parametrize("name", NAMES)
def test_empty_input_unknown_parameters_and_unfitted_use_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no interactions"):
        make(name).fit(Interactions.from_triples([], []))
    with pytest.raises(ValidationError):
        make(name, no_such_parameter=1)
    with pytest.raises(NotFitted):
        make(name).recommend(["a"])


def test_trending_weights_halve_with_each_half_life() -> None:
    frame = pd.DataFrame(
        {
            "user": ["a", "b"],
            "item_id": ["x", "y"],
            "type": ["item_viewed", "item_viewed"],
            "value": [None, None],
            "time": pd.to_datetime(["2026-01-01", "2026-01-15"], utc=True),
        }
    )
    m = Interactions.from_frame(frame, half_life_days=7).matrix.toarray()
    assert m[0, 0] == pytest.approx(0.25) and m[1, 1] == pytest.approx(1.0)


def test_segment_popularity_serves_the_nearest_segment() -> None:
    users = [f"u{i}" for i in range(40)]
    items = ["a" if i < 20 else "c" for i in range(40)]
    extra = ["b" if i < 20 else "d" for i in range(40)]
    data = Interactions.from_triples(
        users + users[:10] + users[20:25], items + extra[:10] + extra[20:25]
    )
    model = make("popular-segment", segments=2).fit(data)
    assert model.recommend({"a": 1.0}, k=1)[0].item == "b"
    assert model.recommend({"c": 1.0}, k=1)[0].item == "d"


def test_similar_items_come_from_co_occurrence() -> None:
    knn = ItemKNN(shrink=0).fit(tiny())
    assert knn.similar("c", 1)[0].item == "d"
    assert knn.similar("nope") == []


@pytest.mark.parametrize("split", ["global", "last"])
def test_every_model_recovers_planted_preferences_better_than_popularity(
    generated: pd.DataFrame, split: str
) -> None:
    if split == "global":
        train, test = global_cut(generated, 0.8)
    else:
        train, test = leave_last_n(generated, 2, item_types=("item_viewed",))
    results = {
        name: evaluate(make(name, **SMALL_FULL.get(name, {})), train, test) for name in NAMES
    }
    base = results["popular"]["recall@10"]
    for name, res in results.items():
        assert res["users"] > 300
        if name != "popular":
            # ALS gains least on a 41-item catalogue (see the README): 15 %, not 20 %; the
            # segment popularity is a baseline that only has to beat the plain one.
            margin = {"als": 1.15, "popular-segment": 1.0}.get(name, 1.2)
            assert res["recall@10"] > margin * base, (name, results)
            assert res["ndcg@10"] > results["popular"]["ndcg@10"], (name, results)


SMALL_FULL = {
    "als": {"factors": 8, "iterations": 15, "alpha": 1.0, "regularization": 2.0, "fold_in_steps": 8}
}

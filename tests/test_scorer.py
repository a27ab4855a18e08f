"""The `Scorer` contract that every model kind keeps (what the serving pipeline relies on), and
loading a saved model of any kind through the loader registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import REGISTRY, NextBestOffer, Recommender, Scorer, load_model, load_packed, make, pack
from models.artifact import LOADERS
from tests.reco_world import ITEMS, NOW, fit_nbo, interactions

NOW_MS = int(NOW.timestamp() * 1000)
KINDS = [*sorted(REGISTRY), "nbo"]
PROFILE = {
    "counts": {"item_viewed": 2, "simulator_used": 1},
    "categories": {"loans": 2},
    "simulators": {"loan": {"count": 1, "last_item": "loan-personal"}},
    "recent_items": [
        {"item_id": "loan-car", "type": "item_viewed"},
        {"item_id": "loan-personal", "type": "simulator_used"},
    ],
    "held": {"card-basic": {}},
    "last_seen": NOW_MS,
}
HISTORY = {"loan-car": 1.0, "loan-personal": 2.0}
Fitted = dict[str, Recommender | NextBestOffer]


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    data = interactions()
    out: Fitted = {name: make(name).fit(data) for name in REGISTRY}
    out["nbo"] = fit_nbo()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_is_a_scorer_with_one_score_per_candidate(
    kind: str, fitted: Fitted
) -> None:
    model: Scorer = fitted[kind]  # statically too
    assert isinstance(model, Scorer) and model.name == kind
    candidates = model.candidates()
    assert len(candidates) > 0 and {str(c) for c in candidates} <= {i.item_id for i in ITEMS}
    for profile, history in ((PROFILE, HISTORY), ({}, {})):
        assert model.score(profile, history, NOW_MS).shape == (len(candidates),)
    like = model.score_like("loan-car")
    assert like is None or like.shape == (len(candidates),)


@pytest.mark.parametrize("kind", KINDS)
def test_explanations_name_a_kind_and_a_key_for_asked_items_only(kind: str, fitted: Fitted) -> None:
    model = fitted[kind]
    asked = [str(c) for c in model.candidates()][:4]
    drivers = model.explain(PROFILE, HISTORY, asked, NOW_MS)
    assert set(drivers) <= set(asked)
    for driver in drivers.values():
        kind_, sep, _ = driver.partition(":")
        assert sep and kind_, driver


def test_an_item_model_explains_by_a_history_item(fitted: Fitted) -> None:
    drivers = fitted["itemknn"].explain({}, HISTORY, ["loan-car", "loan-personal"], NOW_MS)
    assert drivers and all(d.removeprefix("item:") in HISTORY for d in drivers.values())


def test_the_offer_model_ranks_users_not_likeness(fitted: Fitted) -> None:
    model = fitted["nbo"]
    assert model.score_like("loan-car") is None
    assert not np.allclose(model.score(PROFILE, HISTORY, NOW_MS), model.score({}, {}, NOW_MS))


@pytest.mark.parametrize("kind", KINDS)
def test_a_packed_model_of_any_kind_loads_back_with_the_same_scores(
    kind: str, fitted: Fitted, tmp_path: Path
) -> None:
    model = fitted[kind]
    assert kind in LOADERS
    folder = model.save(tmp_path / kind)
    for loaded in (load_model(folder), load_packed(pack(folder), tmp_path)):
        assert type(loaded) is type(model) and loaded.name == kind
        assert list(loaded.candidates()) == list(model.candidates())
        np.testing.assert_allclose(
            loaded.score(PROFILE, HISTORY, NOW_MS), model.score(PROFILE, HISTORY, NOW_MS)
        )


def test_an_unknown_model_name_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"format": 1, "name": "mystery"}')
    with pytest.raises(ValueError, match=r"unknown model 'mystery' \(known: .*'nbo'"):
        load_model(tmp_path)

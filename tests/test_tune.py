"""Tuning: the search sees only slices of the training part (never the test part), keeps the
best setting by its validation score, records every trial in the card, and on a history where
one parameter decides, finds the right value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import pytest

from models import REGISTRY, Recommender
from nerve_client.errors import ConfigError
from tests.test_time_models import drifting, repeating
from training.evaluate import evaluate
from training.train import Tuning, split, train
from training.tune import settings, space_of, tune


class Seen:
    """An evaluator that records the slices it is handed, then evaluates for real."""

    def __init__(self) -> None:
        self.slices: list[pd.DataFrame] = []

    def __call__(
        self, model: Recommender, fit: pd.DataFrame, validation: pd.DataFrame
    ) -> Mapping[str, float]:
        self.slices += [fit, validation]
        return evaluate(model, fit, validation)


@pytest.mark.parametrize("how", ["global", "last"])
def test_tuning_never_reads_the_test_slice(how: Any) -> None:
    frame = drifting(200)
    _, test = split(frame, how)
    seen = Seen()
    result = train(frame, "itemknn-recency", how=how, curve=False, tune=Tuning(3, None, seen))
    assert len(seen.slices) == 2 * 3
    held = set(test["seq"])
    for part in seen.slices:
        assert not held & set(part["seq"])  # no event of the test part
        if how == "global":
            assert part["time"].max() < test["time"].min()
    tuning = result.card["tuning"]
    assert (
        tuning["validation"]["to"] < result.card["split"]["slices"]["test"]["from"] or how == "last"
    )
    assert tuning["fit"]["events"] + tuning["validation"]["events"] == len(frame) - len(test)


def test_the_chosen_setting_is_the_best_on_validation_and_every_trial_is_in_the_card() -> None:
    result = train(drifting(200), "itemknn-recency", {"neighbors": 20}, curve=False, tune=Tuning())
    tuning = result.card["tuning"]
    grid = settings(space_of("itemknn-recency"), fixed={"neighbors": 20})
    assert [t["params"] for t in tuning["trials"]] == grid and tuning["search"] == "grid"
    best = max(tuning["trials"], key=lambda t: t["score"])
    assert tuning["best"] == best["params"] and tuning["best_score"] == best["score"]
    assert result.card["params"] | best["params"] == result.card["params"]  # refitted with it
    assert tuning["metric"] == "ndcg@10" and tuning["validation"]["users"] > 0


def test_a_budget_draws_that_many_distinct_settings_from_the_grid() -> None:
    done: list[tuple[int, int]] = []
    result = tune(
        drifting(120), "repeat-blend", budget=4, progress=lambda d, n: done.append((d, n))
    )
    params = [t.params for t in result.trials]
    assert len(params) == 4 and result.how == "random"
    assert all(p in settings(space_of("repeat-blend")) for p in params)
    assert len({tuple(sorted(p.items())) for p in params}) == 4
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_the_search_finds_the_parameter_that_matters() -> None:
    """Repeat purchase decides these baskets: no repeat prior (weight 0) is far the worst."""
    result = tune(repeating(200), "repeat-blend", space={"repeat_weight": [0.0, 0.5, 0.9]})
    scores = {t.params["repeat_weight"]: t.score for t in result.trials}
    assert result.best.params["repeat_weight"] > 0 and scores[0.0] < 0.5 * result.best.score


def test_a_model_without_a_space_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="'nbo' declares no search space"):
        space_of("nbo")


def test_a_plugin_declares_its_own_space_and_is_tuned_like_a_built_in() -> None:
    """Before: a plugin named `module:Class` was not in the registry, so `--tune` said it
    "declares no search space" even when its class declared one (the worked example does)."""
    name = "models.contrib.sklearn_svd:TruncatedSVDItems"
    kinds = dict(REGISTRY)
    try:
        assert space_of(name) == {"factors": [16, 32, 64], "iterations": [5, 10]}
        result = tune(drifting(120), name, budget=2)
        assert len(result.trials) == 2 and {"factors", "iterations"} <= set(result.best.params)
    finally:  # the kind it registered is not left to other modules' tests
        REGISTRY.clear()
        REGISTRY.update(kinds)

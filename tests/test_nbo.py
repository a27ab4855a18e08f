"""Next-best-offer: planted credit intent is found; rules are applied before ranking."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.profiles.profile import new_profile
from models.nbo import NextBestOffer, features
from training.nbo import NBOResult, dataset, offer_values, train_nbo

NOW = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def result(generated: pd.DataFrame) -> NBOResult:
    return train_nbo(generated)


def test_planted_credit_intent_is_predicted_and_the_policy_beats_popular(result: NBOResult) -> None:
    credit = [a for o, a in result.auc_by_offer.items() if o.startswith(("loan", "mort"))]
    assert len(credit) >= 4 and np.mean(credit) > 0.65, result.auc_by_offer
    m = result.metrics
    assert m["buyers"] > 50
    assert m["value@1"] > m["value@1_popular"], m


def test_held_dismissed_and_declined_offers_are_never_offered(result: NBOResult) -> None:
    model: NextBestOffer = result.model
    profile = new_profile("u", "u", None)
    profile["counts"] = {"simulator_used": 5, "item_viewed": 9}
    profile["categories"] = {"loans": 9}
    free = [s.item for s in model.rank(profile, NOW, k=len(model.offers))]
    held, dismissed, declined, contacted = free[0], free[1], free[2], free[3]
    profile["held"] = {held: {"since": NOW, "value": 1, "source": "item_purchased"}}
    profile["offers"] = {
        dismissed: {
            "shown": 1,
            "clicked": 0,
            "dismissed": 1,
            "shown_times": [],
            "last_clicked": None,
            "last_dismissed": NOW - 86_400_000,
        }
    }
    profile["crm"] = {
        declined: {
            "outcome": "declined",
            "channel": "phone",
            "time": NOW - 1,
            "seq": 1,
            "contacts": 1,
        },
        contacted: {
            "outcome": "interested",
            "channel": "email",
            "time": NOW - 86_400_000,
            "seq": 2,
            "contacts": 1,
        },
    }
    ranked = [s.item for s in model.rank(profile, NOW, k=len(model.offers))]
    assert not {held, dismissed, declined, contacted} & set(ranked)
    assert len(ranked) == len(free) - 4
    long_ago = NOW + 400 * 86_400_000  # suppression windows have passed; holding has not
    later = {s.item for s in model.rank(profile, long_ago, k=len(model.offers))}
    assert {dismissed, declined, contacted} <= later and held not in later
    scores = [s.score for s in model.rank(profile, NOW, k=5)]
    assert scores == sorted(scores, reverse=True)


def test_save_load_round_trip(
    result: NBOResult,
    generated: pd.DataFrame,
    tmp_path: Path,
) -> None:
    model: NextBestOffer = result.model
    loaded = NextBestOffer.load(model.save(tmp_path / "nbo"))
    offers = sorted(offer_values(generated))
    _, x, _, _, _ = dataset(generated, generated["time"].quantile(0.9), None, offers, model.names)
    assert np.array_equal(loaded.propensity(x), model.propensity(x))
    assert features(new_profile("x", "x", None), model.names, NOW).shape == (len(model.names),)


def test_tuning_next_best_offer_reads_nothing_of_the_test_window(
    generated: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the trials' offer values were computed from the whole history, test window
    included (review); every frame the search reads now ends before the test window."""
    import training.nbo as nbo

    seen: list[pd.Timestamp] = []
    real = nbo.offer_values

    def recording(frame: pd.DataFrame) -> dict[str, float]:
        seen.append(frame["time"].max())
        return real(frame)

    monkeypatch.setattr(nbo, "offer_values", recording)
    test_starts = generated["time"].quantile(0.8)
    nbo.tune_nbo(generated, {}, budget=1)
    assert seen and max(seen) < test_starts

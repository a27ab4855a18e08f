"""Metrics on cases small enough to compute by hand."""

import math

import pytest

from training import metrics

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

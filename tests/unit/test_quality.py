"""Quality metrics and confidence-based estimation (services/monitor/quality.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.monitor import quality

pytestmark = pytest.mark.unit


def pairwise_auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    p = rng.integers(0, 10, 300) / 10  # many ties
    y = (rng.random(300) < p).astype(int)
    got = quality.binary(p, y)
    assert got["auc"] == pytest.approx(pairwise_auc(p, y), abs=1e-12)
    assert got["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
    assert got["positive_rate"] == pytest.approx(y.mean())
    assert got["brier"] == pytest.approx(((p - y) ** 2).mean())


def test_one_class_has_no_auc_and_empty_input_no_metrics() -> None:
    got = quality.binary(np.array([0.2, 0.9]), np.array([1, 1]))
    assert "auc" not in got and got["accuracy"] == 0.5
    assert quality.binary(np.array([]), np.array([])) == {}


def test_calibration_error_small_when_calibrated_large_when_not() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(50_000)
    y = (rng.random(50_000) < p).astype(int)
    assert quality.binary(p, y)["ece"] < 0.01
    assert quality.binary(np.clip(p + 0.3, 0, 1), y)["ece"] > 0.2


def test_cbpe_estimates_auc_and_accuracy_of_calibrated_probabilities() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(0.7, 1.5, 20_000)
    y = (rng.random(20_000) < p).astype(int)
    real = quality.binary(p, y)
    est = quality.estimate_binary(p)
    assert abs(est["auc"] - real["auc"]) < 0.01
    assert abs(est["accuracy"] - real["accuracy"]) < 0.01
    assert est["positive_rate"] == pytest.approx(p.mean())
    # Overconfident probabilities make the estimate wrong, as CBPE's assumption says.
    sharp = np.where(p > 0.5, 0.99, 0.01)
    assert quality.estimate_binary(sharp)["accuracy"] > real["accuracy"] + 0.1


def test_cbpe_edge_cases() -> None:
    assert quality.estimate_binary(np.array([])) == {}
    assert "auc" not in quality.estimate_binary(np.array([1.0, 1.0]))
    tied = quality.estimate_binary(np.full(10, 0.3))
    assert tied["auc"] == pytest.approx(0.5)  # one score for all: no ranking


def test_multiclass_and_regression() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    got = quality.multiclass(probs, np.array([0, 2, 2]))
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.1, 0.4])))
    r = quality.regression(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert r == pytest.approx({"rmse": np.sqrt(5 / 3), "mae": 1.0, "mean_error": 1 / 3})


def test_task_dispatch_reads_two_column_binary_outputs() -> None:
    two = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert quality.realized("binary", two, np.array([0, 1]), 0.5)["accuracy"] == 1.0
    assert quality.estimated("regression", np.array([1.0]), 0.5) == {}
    assert quality.errors({"auc": 0.9, "x": 1.0}, {"auc": 0.85}) == pytest.approx({"auc": 0.05})

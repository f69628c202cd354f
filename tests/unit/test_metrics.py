"""Sensitivity and specificity per class against a hand-made confusion matrix, and through classification_metrics."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_suite.training.metrics import SCORES, classification_metrics, normal_vs_rest, rate_metrics, summarise_folds

# rows: true a, b, c; columns: predicted a, b, c (15 images)
MATRIX = np.array([[4, 1, 0],
                   [2, 3, 1],
                   [0, 0, 4]])


def _predictions(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and one-hot probabilities that reproduce `matrix` exactly."""
    pairs = [(t, p) for t in range(len(matrix)) for p in range(len(matrix)) for _ in range(matrix[t, p])]
    y_true = np.array([t for t, _ in pairs])
    proba = np.eye(len(matrix))[[p for _, p in pairs]]
    return y_true, proba


def test_one_vs_rest_rates_by_hand():
    rates = rate_metrics(MATRIX, ["a", "b", "c"])
    # a: TP 4 of 5; negatives b+c = 10, of which 2 predicted a -> TN 8
    assert rates["sensitivity/a"] == pytest.approx(4 / 5) and rates["specificity/a"] == pytest.approx(8 / 10)
    # b: TP 3 of 6; negatives 9, of which 1 predicted b -> TN 8
    assert rates["sensitivity/b"] == pytest.approx(3 / 6) and rates["specificity/b"] == pytest.approx(8 / 9)
    # c: TP 4 of 4; negatives 11, of which 1 predicted c -> TN 10
    assert rates["sensitivity/c"] == pytest.approx(1.0) and rates["specificity/c"] == pytest.approx(10 / 11)
    assert rates["specificity_macro"] == pytest.approx((8 / 10 + 8 / 9 + 10 / 11) / 3)
    assert "specificity" not in rates  # only two-class tasks have a positive class


def test_classification_metrics_carries_the_rates_and_keeps_its_keys():
    y_true, proba = _predictions(MATRIX)
    scores = classification_metrics(y_true, proba, ["a", "b", "c"])
    assert scores["sensitivity/b"] == pytest.approx(0.5) and scores["specificity/c"] == pytest.approx(10 / 11)
    # sensitivity is recall: the macro recall is the mean of the per-class sensitivities
    assert scores["recall_macro"] == pytest.approx(np.mean([4 / 5, 3 / 6, 1.0]))
    assert set(SCORES) <= set(scores)


def test_binary_specificity_is_of_the_positive_class():
    # true normal: 6 (5 right, 1 called leukemia); true leukemia: 4 (3 right, 1 called normal)
    y_true, proba = _predictions(np.array([[5, 1], [1, 3]]))
    scores = classification_metrics(y_true, proba[:, 1], ["normal", "leukemia"])  # a sigmoid column
    assert scores["specificity"] == pytest.approx(5 / 6)  # TN / (TN + FP), leukemia positive
    assert scores["recall"] == pytest.approx(3 / 4) == scores["sensitivity/leukemia"]
    assert scores["sensitivity/normal"] == pytest.approx(5 / 6)


def test_an_absent_class_has_no_sensitivity_and_folds_still_summarise():
    # class c never occurs: no sensitivity, but its specificity is defined (1 of 8 negatives called c)
    missing = rate_metrics(np.array([[3, 0, 1], [1, 3, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert "sensitivity/c" not in missing and missing["specificity/c"] == pytest.approx(7 / 8)
    # a single true class: its specificity is undefined, the binary `specificity` with it
    single = rate_metrics(np.array([[0, 0], [1, 3]]), ["normal", "leukemia"])
    assert "specificity/leukemia" not in single and "specificity" not in single
    assert single["sensitivity/leukemia"] == pytest.approx(3 / 4)
    # folds where a class is missing: its per-class key is left out of the summary, the rest is averaged
    full = rate_metrics(MATRIX, ["a", "b", "c"])
    summary = summarise_folds([full, missing])
    assert "sensitivity/c_mean" not in summary
    assert summary["sensitivity/a_mean"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert summary["specificity_macro_mean"] == pytest.approx((full["specificity_macro"]
                                                               + missing["specificity_macro"]) / 2)


def test_normal_vs_rest_groups_the_leukemia_subtypes():
    """MATRIX read with a as normal: a subtype mistaken for another (b for c) is still leukemia found."""
    y_true, proba = _predictions(MATRIX)
    scores = normal_vs_rest(y_true, proba.argmax(axis=1), normal=0)
    # normal a: 4 of 5 called a; leukemia b+c: 10, of which 2 called a -> 8 found; right: 4 + 8 of 15
    assert scores == pytest.approx({"accuracy": 12 / 15, "sensitivity": 8 / 10, "specificity": 4 / 5})
    only_leukemia = normal_vs_rest(np.array([1, 2]), np.array([2, 0]), normal=0)
    assert only_leukemia == {"accuracy": 0.5, "sensitivity": 0.5}  # no normal image: no specificity
    assert normal_vs_rest(np.array([], dtype=int), np.array([], dtype=int), normal=0) == {}

"""Metrics against scikit-learn on fixed inputs, task mappings, and reproducible cross-validation."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.errors import UserError
from mtl_suite.training.metrics import as_class_probabilities, classification_metrics, summarise_folds
from mtl_suite.tasks import class_map_for, normal_class_of


def test_binary_metrics_from_a_sigmoid_column_match_hand_computed_values():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.7, 0.4, 0.9])  # predictions 0, 1, 1, 0, 1
    scores = classification_metrics(y, p, ["normal", "leukemia"])
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3)  # positive class: TP 2, FP 1
    assert scores["recall"] == pytest.approx(2 / 3)  # TP 2, FN 1
    assert scores["f1"] == pytest.approx(2 / 3)
    # AUC of the positive class: of the 6 (positive, negative) pairs, 5 are ordered correctly.
    assert scores["auc/leukemia"] == pytest.approx(5 / 6)
    assert scores["auc/normal"] == pytest.approx(5 / 6)
    np.testing.assert_allclose(as_class_probabilities(p)[:, 0], 1 - p)


def test_multiclass_macro_metrics_and_missing_class_auc():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    scores = classification_metrics(y, proba, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(0.75)
    # per class F1: a = 2/3 (P 1/2, R 1), b = 1, c = 2/3 (P 1, R 1/2)
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert scores["auc/b"] == pytest.approx(1.0)
    single_class = classification_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), ["x", "y"])
    assert "auc/y" not in single_class and "auc_macro" not in single_class


def test_fold_summary_is_mean_and_sample_std():
    summary = summarise_folds([{"accuracy": 0.5}, {"accuracy": 0.7}, {"accuracy": 0.9}])
    assert summary["accuracy_mean"] == pytest.approx(0.7)
    assert summary["accuracy_std"] == pytest.approx(0.2)


def test_binary_mapping_finds_the_normal_class_or_asks_for_it():
    assert class_map_for("binary", ["Benign", "Early", "Pro"], None, "leukemia") == {
        "Benign": "normal", "Early": "leukemia", "Pro": "leukemia"}
    assert class_map_for("multiclass", ["A", "B"], None, "leukemia") is None
    with pytest.raises(UserError, match="Pass --normal-class"):
        class_map_for("binary", ["A", "B", "C"], None, "leukemia")
    with pytest.raises(UserError, match="not a class of the data"):
        class_map_for("binary", ["A", "B"], "Z", "leukemia")
    with pytest.raises(UserError, match="only one class"):
        class_map_for("multiclass", ["A"], None, "leukemia")


def test_the_normal_class_is_named_found_or_none():
    """A multiclass run is read as normal vs leukemia only where one class is plainly the normal one."""
    assert normal_class_of(["Benign", "Early", "Pre", "Pro"]) == "Benign"
    assert normal_class_of(["A", "B", "C"], "B") == "B"
    assert normal_class_of(["A", "B", "C"]) is None
    assert normal_class_of(["normal", "healthy", "ALL"]) is None  # two candidates: no guess
    with pytest.raises(UserError, match="'Z' is not a class of the data"):
        normal_class_of(["A", "B", "C"], "Z")


def test_cross_validation_is_reproducible_under_a_seed():
    from mtl_suite.data.manifest import Entry
    from mtl_suite.data.splits import Split
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.training.cv import cross_validate
    from mtl_suite.training.fit import ArrayData

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 12)
    images = rng.integers(0, 100, (24, 32, 32, 3)).astype(np.uint8)
    images[labels == 1] += 100  # learnable: class 1 is brighter
    entries = tuple(Entry(f"{i}.png", str(l), "x", "g", 32, 32) for i, l in enumerate(labels))
    split = Split(entries, tuple(int(i % 2) for i in range(24)), 2, 0.0, 0, "digest")
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=2, finetune_epochs=1, unfreeze_layers=2,
                      batch_size=8, early_stopping_patience=0)

    def factory():
        backbone, _ = build_backbone("tiny", 32, "none")
        return build_classifier(backbone, "dense_dropout", 2, (8,), 0.1), backbone

    first = cross_validate(ArrayData(images, labels), split, ["0", "1"], factory, cfg)
    second = cross_validate(ArrayData(images, labels), split, ["0", "1"], factory, cfg)
    np.testing.assert_array_equal(first.oof_proba, second.oof_proba)
    assert first.fold_metrics == second.fold_metrics
    assert sorted(first.oof_index.tolist()) == list(range(24))

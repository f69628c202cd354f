"""The colour shortcut check (analysis/shortcut.py) and the test-accuracy context (analysis/intervals.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from mtl_suite.analysis.intervals import AccuracyContext, accuracy_context, context_from_metrics, wilson_interval
from mtl_suite.analysis.shortcut import (
    VARIANTS, channel_histograms, colour_statistics, rgb_histogram, shortcut_check, split_check,
)

SIZE = 32


def _noise(rng: np.random.Generator, base) -> np.ndarray:
    return np.clip(np.asarray(base) + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255)


def colour_coded(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 bluish, class 1 reddish background: colour alone separates them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.stack([_noise(rng, (200, 80, 80) if y else (80, 80, 200)) for y in labels]).astype(np.uint8)
    return images, labels


def shape_coded(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same background and the same dark object of the same area in both classes; only its shape (a disc or
    a square) and position tell the class: a histogram cannot."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    disc = cv2.circle(np.zeros((13, 13), np.uint8), (6, 6), 6, 1, -1)
    square = np.zeros((13, 13), np.uint8)
    square.ravel()[:int(disc.sum())] = 1  # the same number of pixels, as full rows from the top
    images = []
    for y in labels:
        image = _noise(rng, (180, 150, 170)).astype(np.uint8)
        x0, y0 = rng.integers(0, SIZE - 13, 2)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[y0:y0 + 13, x0:x0 + 13] = disc if y else square
        image[mask > 0] = np.clip(rng.normal((90, 40, 120), 15, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        images.append(image)
    return np.stack(images), labels


def _split_indices(n: int, folds: int = 3):
    test = np.arange(n)[-n // 4:]
    development = np.arange(n)[: n - len(test)]
    fold_of = development % folds
    return [(development[fold_of != k], development[fold_of == k]) for k in range(folds)], development, test


def test_histograms_count_pixels_per_value():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    hist = channel_histograms(images)
    assert hist.shape == (3, 4, 256)
    np.testing.assert_allclose(hist.sum(axis=-1), 1.0)
    for c in range(3):
        np.testing.assert_allclose(hist[1, c], np.bincount(images[1, ..., c].ravel(), minlength=256) / 600)
    gray = cv2.cvtColor(images[2], cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(hist[2, 3], np.bincount(gray.ravel(), minlength=256) / 600)
    coarse = rgb_histogram(hist, 8)
    assert coarse.shape == (3, 24)
    np.testing.assert_allclose(coarse[0, :8], np.bincount(images[0, ..., 0].ravel() // 32, minlength=8) / 600)


def test_colour_statistics_match_numpy():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    stats = colour_statistics(channel_histograms(images)).reshape(2, 4, 7)
    red = images[0, ..., 0].astype(float)
    assert stats[0, 0, 0] == pytest.approx(red.mean())
    assert stats[0, 0, 1] == pytest.approx(red.std())
    for j, q in enumerate((5, 25, 50, 75, 95)):
        assert abs(stats[0, 0, 2 + j] - np.percentile(red, q, method="inverted_cdf")) <= 1


def test_detects_a_colour_shortcut():
    images, labels = colour_coded(48)
    folds, development, test = _split_indices(48)
    check = shortcut_check(images, labels, folds, development, test)
    assert set(check.scores) == set(VARIANTS)
    for score in check.scores.values():
        assert score.cv_accuracy == 1.0 and score.test_accuracy == 1.0
        assert score.test_n == 12 and score.test_correct == 12
    assert check.best == "hist8"  # all tie: the first listed wins, never the test part
    assert check.label() == "hist8+lr"
    metrics = check.metrics()
    assert metrics["shortcut/best/test_accuracy"] == 1.0
    assert {f"shortcut/{v}/cv_accuracy" for v in VARIANTS} <= set(metrics)
    assert (check.predict_best(images[test]) == labels[test]).all()


def test_finds_no_shortcut_where_only_shape_tells_the_class():
    images, labels = shape_coded(96)
    folds, development, test = _split_indices(96)
    check = shortcut_check(images, labels, folds, development, test)
    for name, score in check.scores.items():
        assert score.cv_accuracy < 0.75, (name, score)  # chance is 0.5
    # and the same images with colour-coded objects: found
    recoloured = images.copy()
    recoloured[labels == 1] = np.clip(recoloured[labels == 1].astype(int) + (40, 0, -40), 0, 255)
    found = shortcut_check(recoloured, labels, folds, development, test)
    assert found.best_score.cv_accuracy > 0.95 and found.best_score.test_accuracy > 0.95


def test_the_best_variants_predictions_are_the_ones_it_was_scored_on():
    """best_oof holds each validated image's out-of-fold label (-1 elsewhere), best_test the refit's test labels:
    reading them another way (normal vs leukemia) starts from exactly what the scores counted."""
    images, labels = shape_coded(96)
    folds, development, test = _split_indices(96)
    check = shortcut_check(images, labels, folds, development, test)
    score = check.best_score
    fold_accuracy = [(check.best_oof[val] == labels[val]).mean() for _, val in folds]
    assert np.mean(fold_accuracy) == pytest.approx(score.cv_accuracy)
    validated = np.concatenate([val for _, val in folds])
    assert (check.best_oof[np.setdiff1d(np.arange(96), validated)] == -1).all()
    assert int((check.best_test == labels[test]).sum()) == score.test_correct


def test_the_best_variants_probabilities_give_its_calls_in_every_class_column():
    """Colour alone's per-image probabilities (what `assess` pools into its calibration): one column per class of
    the task, even one the refit never saw (0 there), rows summing to 1, and their argmax is exactly its calls."""
    images, labels = shape_coded(96)
    folds, development, test = _split_indices(96)
    check = shortcut_check(images, labels, folds, development, test)
    proba = check.predict_proba_best(images[test], 3)  # a third class the data lacks
    assert proba.shape == (len(test), 3) and (proba[:, 2] == 0).all()
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == check.best_test).all()


def test_best_is_chosen_by_cv_not_by_test():
    images, labels = colour_coded(48)
    folds, development, test = _split_indices(48)
    flipped = labels.copy()
    flipped[test] = 1 - flipped[test]  # every variant scores 0 on the test part now
    check = shortcut_check(images, flipped, folds, development, test)
    assert check.best == "hist8" and check.best_score.test_accuracy == 0.0


def test_one_class_training_folds_and_no_test_part():
    images, labels = colour_coded(12)
    labels = np.array([0] * 6 + [1] * 6)
    folds = [(np.arange(0, 6), np.arange(6, 9))]  # trains on class 0 only: predicts it
    check = shortcut_check(images, labels, folds, np.arange(12), np.array([], dtype=int), variants=("hist16",))
    assert check.scores["hist16"].cv_accuracy == 0.0
    assert math.isnan(check.scores["hist16"].test_accuracy)
    assert "shortcut/hist16/test_accuracy" not in check.metrics()


def test_split_check_uses_the_splits_folds_and_test_part(tmp_path):
    from PIL import Image

    from mtl_suite.data.manifest import build_manifest
    from mtl_suite.data.splits import make_split

    images, labels = colour_coded(40)
    for i, (image, y) in enumerate(zip(images, labels)):
        folder = tmp_path / ("red" if y else "blue")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    split = make_split(build_manifest(tmp_path, "folder"), folds=3, test_fraction=0.2, seed=1)
    ordered_labels = np.array([int(e.label == "red") for e in split.entries])
    ordered_images = np.stack([np.asarray(Image.open(e.path)) for e in split.entries])
    check = split_check(ordered_images, ordered_labels, split)
    assert check.best_score.test_n == len(split.test_indices) > 0
    assert check.best_score.cv_accuracy == 1.0


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 19)
    assert (round(low, 2), round(high, 2)) == (0.23, 0.64)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_accuracy_context_text_and_metrics():
    y = np.array([0] * 5 + [1] * 5 + [2] * 9)  # 19 images, majority class 9/19
    pred = y.copy()
    pred[:11] = (pred[:11] + 1) % 3  # 8 right
    context = accuracy_context(y, pred)
    assert context.correct == 8 and context.n == 19
    assert context.text() == "0.421 (8/19; 95% CI 0.23-0.64; majority class 0.47)"
    metrics = {f"test/{k}": v for k, v in context.metrics().items()}
    metrics.update({"test/accuracy": context.accuracy, "test/n": 19.0})
    assert context_from_metrics(metrics) == context
    assert context_from_metrics({"test/accuracy": 0.5}) is None
    assert AccuracyContext(0, 0, float("nan")).text().startswith("n/a")


@pytest.mark.slow
def test_aria_all_colour_baselines_are_as_strong_as_measured(shared_data):
    """The real data: on aria-all (duplicates dropped, grouped 5-fold split) colour alone is near 98% (issue 18:
    16 bins 98.3%, 32 bins 98.6%), far above the old 8-bin figure, and a stain shift breaks it."""
    from mtl_suite.config import DataConfig
    from mtl_suite.imaging.augment import stain_shifted
    from mtl_suite.tasks import smear_task

    task = smear_task(DataConfig(path=str(shared_data / "aria-all" / "original"), image_size=128, folds=5),
                      "multiclass", None)
    check = split_check(task.data.images, task.data.labels, task.split)
    assert check.best != "hist8"
    assert check.best_score.cv_accuracy > 0.97 and check.best_score.test_accuracy > 0.96
    assert check.scores["hist8"].cv_accuracy < check.best_score.cv_accuracy
    test = task.split.test_indices
    shifted = (check.predict_best(stain_shifted(task.data.images[test])) == task.data.labels[test]).mean()
    assert shifted < 0.8

"""The shortcut check: how far does colour alone get? Logistic regressions on colour features with no shape at all,
trained and scored on the same split and folds as the CNN.

Stain and background differ between the classes of some data sets. On the ALL image data set (aria-all, 4 classes,
2,739 images after deduplication, the suite's grouped split: 5 folds, 20% test, seed 42, 224 px) colour alone gives,
CV mean / outer test: 8-bin histogram 96.9% / 96.7%, 16 bins 97.9% / 98.9%, 32 bins 98.4% / 98.5%, statistics
97.0% / 98.7%, 32 bins + statistics 98.7% / 98.4%: above most CNNs the suite trains on it. A CNN's score therefore
means little unless it clearly beats the strongest of these baselines, so every variant is computed and the best is
reported, chosen by CV accuracy on the development part (never by the test part). The same best baseline falls to
43% on the test part re-stained by imaging/augment.py:STAIN_SHIFTS.

Features come from the in-memory uint8 arrays: one 256-bin histogram per channel (R, G, B and luminance) per image,
from which every variant is derived (coarser histograms by summing bins, mean/std/percentiles from the cumulative
counts). The regressions run on one BLAS thread: on a busy 2-core machine a multi-threaded fit of these small
problems was ten times slower. Measured on aria-all (2,739 images at 224 px, 5 folds, 2 busy cores): about 1 s of
histograms and 3 s of fits for all variants."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from threadpoolctl import threadpool_limits

from mtl_suite.models.colour import PERCENTILES, REGRESSION_SEED as SEED, colour_regression

CHANNELS = ("red", "green", "blue", "luminance")


def channel_histograms(images: np.ndarray) -> np.ndarray:
    """(N, 4, 256) pixel fractions per value of R, G, B and luminance (OpenCV's RGB2GRAY, ITU-R BT.601 weights).
    OpenCV counts in C: about 0.5 ms per 224 px image, where numpy's bincount takes ten times that."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images. Received: {images.dtype} {images.shape}")
    out = np.empty((len(images), 4, 256), dtype=np.float64)
    for i, image in enumerate(images):
        image = np.ascontiguousarray(image)
        for c in range(3):
            out[i, c] = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel()
        out[i, 3] = cv2.calcHist([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)], [0], None, [256], [0, 256]).ravel()
    return out / float(images.shape[1] * images.shape[2] or 1)


def rgb_histogram(hist: np.ndarray, bins: int) -> np.ndarray:
    """(N, 3 * bins): the R, G, B histograms of channel_histograms() summed into `bins` equal bins."""
    if 256 % bins:
        raise ValueError(f"bins must divide 256. Received: {bins}")
    return hist[:, :3].reshape(len(hist), 3, bins, 256 // bins).sum(axis=-1).reshape(len(hist), -1)


def colour_statistics(hist: np.ndarray) -> np.ndarray:
    """(N, 4 * 7): mean, standard deviation and the PERCENTILES of R, G, B and luminance, from the histograms."""
    values = np.arange(256, dtype=np.float64)
    mean = (hist * values).sum(axis=-1)
    std = np.sqrt(np.maximum((hist * values ** 2).sum(axis=-1) - mean ** 2, 0.0))
    cdf = np.cumsum(hist, axis=-1)
    quantiles = [(cdf < q / 100 - 1e-12).sum(axis=-1).astype(np.float64) for q in PERCENTILES]
    return np.stack([mean, std, *quantiles], axis=-1).reshape(len(hist), -1)


@dataclass(frozen=True)
class Variant:
    name: str  # a metric-key-safe name (MLflow keys allow no '+')
    description: str
    features: Callable[[np.ndarray], np.ndarray]  # channel_histograms() -> feature matrix


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("hist8", "RGB histogram, 8 bins per channel", lambda h: rgb_histogram(h, 8)),
    Variant("hist16", "RGB histogram, 16 bins per channel", lambda h: rgb_histogram(h, 16)),
    Variant("hist32", "RGB histogram, 32 bins per channel", lambda h: rgb_histogram(h, 32)),
    Variant("stats", "mean, sd and 5/25/50/75/95th percentiles of R, G, B and luminance", colour_statistics),
    Variant("hist32_stats", "32-bin RGB histogram and the colour statistics",
            lambda h: np.concatenate([rgb_histogram(h, 32), colour_statistics(h)], axis=1)),
]}


class _Constant:
    """Stands in for the regression when the training rows hold one class: it predicts that class."""

    def __init__(self, label: int):
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.label, dtype=np.int64)


def _fit(x: np.ndarray, y: np.ndarray, seed: int):
    classes = np.unique(y)
    if len(classes) < 2:
        return _Constant(int(classes[0]) if len(classes) else 0)
    return colour_regression(seed).fit(x, y)


@dataclass(frozen=True)
class VariantScore:
    """One colour baseline on one split: mean (and sd) over the CV folds, and the outer test part after a refit
    on the whole development part: the protocol of the CNN's `cv/*_mean` and `test/*`."""

    name: str
    cv_accuracy: float
    cv_accuracy_std: float
    cv_f1_macro: float
    test_accuracy: float
    test_f1_macro: float
    test_correct: int
    test_n: int


@dataclass
class ShortcutCheck:
    scores: dict[str, VariantScore]
    best: str  # highest CV accuracy (the first listed on a tie; the test part never chooses)
    best_model: object = field(repr=False, default=None)  # the best variant refit on the development part
    # the best variant's predicted labels: out-of-fold for each validated image (-1 for the others), and on the
    # outer test part after the refit; for reading its answers another way (normal vs leukemia)
    best_oof: np.ndarray | None = field(repr=False, default=None)
    best_test: np.ndarray | None = field(repr=False, default=None)

    @property
    def best_score(self) -> VariantScore:
        return self.scores[self.best]

    def label(self, name: str | None = None) -> str:
        """'hist32+lr': the variant and its classifier, as the stage commands print it."""
        return f"{name or self.best}+lr"

    def metrics(self) -> dict[str, float]:
        """`shortcut/<variant>/<score>` for every variant and `shortcut/best/<score>` for the best."""
        out: dict[str, float] = {}
        for key, score in [*self.scores.items(), ("best", self.best_score)]:
            for metric in ("cv_accuracy", "cv_accuracy_std", "cv_f1_macro", "test_accuracy", "test_f1_macro"):
                value = getattr(score, metric)
                if not math.isnan(value):
                    out[f"shortcut/{key}/{metric}"] = float(value)
        return out

    def predict_best(self, images: np.ndarray) -> np.ndarray:
        """Labels the best variant (refit on the development part) gives `images`: e.g. re-stained test images."""
        x = VARIANTS[self.best].features(channel_histograms(images))
        with threadpool_limits(1):
            return self.best_model.predict(x)

    def predict_proba_best(self, images: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) class probabilities of the best variant (refit on the development part), so a report can
        give colour alone's calibration and recompute its calls per image; 0 for a class its training rows lacked,
        one-hot when they held a single class. The argmax is `predict_best`'s label."""
        x = VARIANTS[self.best].features(channel_histograms(images))
        out = np.zeros((len(x), n_classes))
        if isinstance(self.best_model, _Constant):
            out[:, self.best_model.label] = 1.0
            return out
        with threadpool_limits(1):
            out[:, np.asarray(self.best_model.classes_, dtype=np.int64)] = self.best_model.predict_proba(x)
        return out


def shortcut_check(images: np.ndarray, labels: np.ndarray, folds: Iterable[tuple[np.ndarray, np.ndarray]],
                   development: np.ndarray, test: np.ndarray, variants: Sequence[str] = tuple(VARIANTS),
                   seed: int = SEED) -> ShortcutCheck:
    """Every colour baseline in `variants` on the given split: `folds` are (train, validation) index arrays into
    `images`, `development` what the refit trains on, `test` the outer test part (indices may be empty)."""
    labels = np.asarray(labels, dtype=np.int64)
    folds = [(np.asarray(t), np.asarray(v)) for t, v in folds]
    hist = channel_histograms(images)
    with threadpool_limits(1):
        scores, models, predictions = _score_variants(hist, labels, folds, development, test, variants, seed)
    best = max(variants, key=lambda n: (_finite(scores[n].cv_accuracy), -list(variants).index(n)))
    return ShortcutCheck(scores, best, models.get(best), *predictions[best])


def _score_variants(hist: np.ndarray, labels: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                    development: np.ndarray, test: np.ndarray, variants: Sequence[str],
                    seed: int) -> tuple[dict[str, VariantScore], dict[str, object], dict[str, tuple]]:
    """Each variant's score, its refit model and its (out-of-fold, test) predicted labels."""
    scores, models, predictions = {}, {}, {}
    for name in variants:
        x = VARIANTS[name].features(hist)
        fold_acc, fold_f1 = [], []
        oof, test_pred = np.full(len(labels), -1, dtype=np.int64), None
        for train, val in folds:
            if not len(val):
                continue
            pred = oof[val] = _fit(x[train], labels[train], seed).predict(x[val])
            fold_acc.append(accuracy_score(labels[val], pred))
            fold_f1.append(f1_score(labels[val], pred, average="macro"))
        test_acc = test_f1 = float("nan")
        correct = 0
        if len(development):
            models[name] = _fit(x[development], labels[development], seed)
            if len(test):
                pred = test_pred = models[name].predict(x[test])
                correct = int((pred == labels[test]).sum())
                test_acc = correct / len(test)
                test_f1 = float(f1_score(labels[test], pred, average="macro"))
        scores[name] = VariantScore(
            name, _mean(fold_acc), float(np.std(fold_acc, ddof=1)) if len(fold_acc) > 1 else float("nan"),
            _mean(fold_f1), test_acc, test_f1, correct, len(test))
        predictions[name] = (oof, test_pred)
    return scores, models, predictions


def split_check(images: np.ndarray, labels: np.ndarray, split, seed: int = SEED) -> ShortcutCheck:
    """shortcut_check on a data/splits.py `Split` (its images and the task's labels in split order)."""
    folds = [(train, val) for _, train, val in split.fold_indices()]
    return shortcut_check(images, labels, folds, split.development_indices, split.test_indices, seed=seed)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _finite(value: float) -> float:
    return -1.0 if math.isnan(value) else value

"""The shortcut check: how far does colour alone get? A colour-histogram + logistic-regression model trained on
the same split as the CNN. Stain and background differ between the classes of some data sets (ALL image data set:
about 90% 4-class accuracy from colour alone), so a CNN's score means little unless it clearly beats this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BINS = 8


def colour_histogram(path: str, bins: int = BINS, size: int = 128) -> np.ndarray:
    """Per-channel RGB histograms (normalised), plus per-channel mean and std: no spatial information at all."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32)
    pixels = rgb.reshape(-1, 3)
    hists = [np.histogram(pixels[:, c], bins=bins, range=(0, 256))[0] / len(pixels) for c in range(3)]
    return np.concatenate(hists + [pixels.mean(axis=0) / 255, pixels.std(axis=0) / 255])


def features(paths: Sequence[str]) -> np.ndarray:
    return np.stack([colour_histogram(p) for p in paths]) if len(paths) else np.zeros((0, 3 * BINS + 6))


def _model():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))


@dataclass(frozen=True)
class ShortcutScores:
    cv_accuracy: float
    cv_f1_macro: float
    test_accuracy: float
    test_f1_macro: float


def shortcut_scores(dev_x: np.ndarray, dev_y: np.ndarray, dev_fold: np.ndarray, test_x: np.ndarray,
                    test_y: np.ndarray) -> ShortcutScores:
    """Out-of-fold scores over the CNN's own folds (fold -1: training-only rows, never held out), then a refit on
    all development images scored on the test part: the same protocol as the CNN runs."""
    validated = dev_fold >= 0
    oof = np.full_like(dev_y, -1)
    for fold in np.unique(dev_fold[validated]):
        held = dev_fold == fold
        train_y = dev_y[~held]
        if len(np.unique(train_y)) < 2:
            oof[held] = np.bincount(train_y).argmax() if len(train_y) else 0
            continue
        oof[held] = _model().fit(dev_x[~held], train_y).predict(dev_x[held])
    y, p = dev_y[validated], oof[validated]
    cv_acc = float(accuracy_score(y, p)) if len(y) else float("nan")
    cv_f1 = float(f1_score(y, p, average="macro")) if len(y) else float("nan")
    if len(test_y) and len(np.unique(dev_y)) > 1:
        pred = _model().fit(dev_x, dev_y).predict(test_x)
        test_acc, test_f1 = float(accuracy_score(test_y, pred)), float(f1_score(test_y, pred, average="macro"))
    else:
        test_acc = test_f1 = float("nan")
    return ShortcutScores(cv_acc, cv_f1, test_acc, test_f1)

"""Calibration of predicted probabilities: reliability bins and the expected calibration error (ECE) of the
top-class confidence (Guo et al. 2017, equal-width bins)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtl_suite.training.metrics import as_class_probabilities


@dataclass(frozen=True)
class Reliability:
    confidence: np.ndarray  # mean confidence per bin (nan where empty)
    accuracy: np.ndarray  # accuracy per bin (nan where empty)
    count: np.ndarray
    ece: float


def reliability(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> Reliability:
    """ECE = sum over bins of (n_bin / n) * |accuracy_bin - confidence_bin|; a confidence of exactly 1 falls in
    the last bin, and bins are (lo, hi] except the first, which includes 0."""
    proba = as_class_probabilities(proba)
    y_true = np.asarray(y_true, dtype=int)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / len(y_true) * np.abs(acc[filled] - conf[filled]))) if len(y_true) else float("nan")
    return Reliability(conf, acc, count, ece)

"""The headline figures of `mtl-suite assess`: a recipe trained afresh on N outer splits, every figure computed from
one table of per-image test predictions (`predictions_table`'s columns), so a reader recomputes each of them from
the CSV beside the report without the tracking store. Pure numbers (numpy, scipy, pandas): no MLflow here.

- Test accuracy over splits: mean, sample sd and a 95% t-interval (n - 1 degrees of freedom), the CNN's and colour
  alone's (the shortcut check's best colour-only baseline, refit on the same split's development images).
- CNN - colour alone per split, paired: the Nadeau-Bengio corrected t-test (analysis/compare.py) decides, because
  the splits are drawn from one data set and overlap; the plain paired t-test is shown beside it.
- Normal (the data's normal class) vs leukemia (every other class): sensitivity (leukemia called leukemia) and
  specificity (normal called normal), pooled over every split's test images, with Wilson 95% intervals
  (analysis/intervals.py). An image in the test part of several splits counts once per split: the pooled count is
  of calls, not of distinct images.
- Calibration, pooled: the ECE of the top-class confidence over ECE_BINS equal-width bins (analysis/calibration.py)
  and the multiclass Brier score, mean over images of sum over classes (p_k - y_k)^2 (0 best, 2 worst)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mtl_suite.analysis import compare as paired_stats
from mtl_suite.analysis.calibration import reliability
from mtl_suite.analysis.intervals import wilson_interval

ALPHA = 0.05
ECE_BINS = 10
MIN_SPLITS = 2  # a t-interval needs two; the headline protocol uses at least HEADLINE_SPLITS
HEADLINE_SPLITS = 5
COLOUR_PREFIX = "colour_"  # colour alone's columns in the predictions table: colour_p_<class>, colour_predicted


@dataclass(frozen=True)
class Spread:
    """A figure over splits: n, mean, sample sd (ddof 1) and the 95% t-interval of the mean."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class Difference:
    """CNN - colour alone over paired splits."""

    spread: Spread  # of the differences, with the plain paired t-interval
    corrected_interval: tuple[float, float]  # the Nadeau-Bengio 95% interval
    paired: paired_stats.TestResult
    corrected: paired_stats.TestResult
    test_train_ratio: float
    verdict: str


@dataclass(frozen=True)
class Proportion:
    """successes of n, with the Wilson 95% interval."""

    successes: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else math.nan


@dataclass(frozen=True)
class BinaryReading:
    """Calls read as normal vs leukemia (leukemia the positive class)."""

    normal_class: str
    sensitivity: Proportion  # leukemia images called leukemia
    specificity: Proportion  # normal images called normal


@dataclass(frozen=True)
class Calibration:
    n: int
    ece: float
    bins: int
    brier: float


@dataclass(frozen=True)
class SplitRow:
    split_seed: int
    run_id: str
    n: int
    accuracy: float
    colour_accuracy: float  # nan without colour alone's predictions
    sensitivity: float
    specificity: float
    colour_sensitivity: float
    colour_specificity: float


@dataclass(frozen=True)
class Assessment:
    classes: tuple[str, ...]
    splits: tuple[SplitRow, ...]
    accuracy: Spread
    colour_accuracy: Spread | None  # None: no split has colour alone's predictions
    difference: Difference | None
    binary: BinaryReading | None  # None: the data has no normal class
    colour_binary: BinaryReading | None
    calibration: Calibration
    colour_calibration: Calibration | None

    def as_dict(self) -> dict:
        return asdict(self)


# --- the pieces, each checkable by hand ---------------------------------------------------------------------------

def spread(values: Sequence[float], confidence: float = 1 - ALPHA) -> Spread:
    """Mean, sd and the t-interval mean +- t(n-1) * sd / sqrt(n); at n = 1 the interval is (nan, nan)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan, ())
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return Spread(n, mean, sd, mean - half, mean + half, tuple(float(v) for v in x))


def difference(cnn: Sequence[float], colour: Sequence[float], test_train_ratio: float,
               alpha: float = ALPHA) -> Difference:
    """CNN - colour alone over paired splits; the verdict follows the corrected test."""
    d = np.asarray(cnn, dtype=np.float64) - np.asarray(colour, dtype=np.float64)
    if len(d) < MIN_SPLITS:
        raise ValueError(f"need at least {MIN_SPLITS} paired splits. Received: {len(d)}")
    plain = spread(d, 1 - alpha)
    t_crit = float(scipy_stats.t.ppf(1 - alpha / 2, len(d) - 1))
    half = t_crit * math.sqrt((1.0 / len(d) + test_train_ratio) * plain.sd ** 2)
    corrected = paired_stats.corrected_resampled_t_test(colour, cnn, test_train_ratio)
    paired = paired_stats.paired_t_test(colour, cnn) if plain.sd > 0 else paired_stats.TestResult(
        corrected.statistic, corrected.df, corrected.p_value)  # scipy gives nan for identical differences
    interval = (plain.mean - half, plain.mean + half)
    return Difference(plain, interval, paired, corrected, float(test_train_ratio),
                      difference_verdict(plain.mean, interval, corrected, len(d), bool(np.all(d == 0)), alpha))


def difference_verdict(mean: float, interval: tuple[float, float], corrected: paired_stats.TestResult, n: int,
                       identical: bool, alpha: float = ALPHA) -> str:
    """Plain words for CNN - colour alone, whichever way it falls."""
    if identical:
        return f"No detectable difference between the CNN and colour alone: identical test accuracy in all {n} splits."
    span = f"95% interval {_points(interval[0])} to {_points(interval[1])} points (corrected)"
    p = f"corrected resampled t-test p = {corrected.p_value:.3g}"
    if corrected.p_value < alpha:
        side = "above" if mean > 0 else "below"
        return f"The CNN is {side} colour alone by {abs(100 * mean):.2f} points on average ({p}; {span})."
    small = f" With {n} splits the test has little power." if n < HEADLINE_SPLITS else ""
    return (f"No detectable difference between the CNN and colour alone: mean CNN - colour {_points(mean)} points, "
            f"{span}; {p}." + small)


def proportion(successes: int, n: int) -> Proportion:
    low, high = wilson_interval(int(successes), int(n))
    return Proportion(int(successes), int(n), low, high)


def binary_reading(labels: Sequence[str], called: Sequence[str], normal_class: str) -> BinaryReading:
    """Sensitivity and specificity of `called` against `labels`, normal_class vs every other class."""
    truth = np.asarray(labels, dtype=object) != normal_class  # True: leukemia
    calls = np.asarray(called, dtype=object) != normal_class
    return BinaryReading(normal_class, proportion(int((truth & calls).sum()), int(truth.sum())),
                         proportion(int((~truth & ~calls).sum()), int((~truth).sum())))


def calibration(labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], bins: int = ECE_BINS) -> Calibration:
    """ECE of the top-class confidence over `bins` equal-width bins, and the multiclass Brier score."""
    index = {name: k for k, name in enumerate(classes)}
    y = np.asarray([index[label] for label in labels], dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if not len(y):
        return Calibration(0, math.nan, bins, math.nan)
    onehot = np.eye(len(classes))[y]
    brier = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    return Calibration(len(y), reliability(y, proba, n_bins=bins).ece, bins, brier)


# --- the whole table ----------------------------------------------------------------------------------------------

def probability_columns(classes: Sequence[str], prefix: str = "") -> list[str]:
    return [f"{prefix}p_{name}" for name in classes]


def classes_of(frame: pd.DataFrame) -> tuple[str, ...]:
    """The class names in output order, from the CNN's p_<class> columns."""
    return tuple(c[2:] for c in frame.columns if c.startswith("p_"))


def has_colour(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether colour alone's predictions are there (runs made before they were logged have none)."""
    column = f"{COLOUR_PREFIX}predicted"
    return frame[column].notna() if column in frame else pd.Series(False, index=frame.index)


def predictions_table(splits: Sequence[tuple[int, str, pd.DataFrame, pd.DataFrame | None]]) -> pd.DataFrame:
    """One table for the whole assessment from each split's (seed, final run id, its test/predictions.csv, colour
    alone's shortcut/test_predictions.csv or None): split_seed, run_id, file, sha256, label, p_<class>, predicted,
    colour_p_<class>, colour_predicted (empty where colour alone's predictions are missing)."""
    parts = []
    for seed, run_id, cnn, colour in splits:
        frame = cnn.rename(columns={"path": "file"})
        front = pd.DataFrame({"split_seed": seed, "run_id": run_id}, index=frame.index)
        parts.append(pd.concat([front, frame, _colour_columns(frame, colour)], axis=1))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _colour_columns(cnn: pd.DataFrame, colour: pd.DataFrame | None) -> pd.DataFrame:
    """Colour alone's probabilities and call beside the CNN's, row for row (both files list the test part in the
    same order; a file that does not is left out rather than misaligned)."""
    classes = classes_of(cnn)
    names = [*probability_columns(classes, COLOUR_PREFIX), f"{COLOUR_PREFIX}predicted"]
    same_rows = (colour is not None and len(colour) == len(cnn)
                 and list(colour["sha256"]) == list(cnn["sha256"]))
    if not same_rows:
        return pd.DataFrame({name: [math.nan] * len(cnn) for name in names}, index=cnn.index)
    picked = colour[[*probability_columns(classes), "predicted"]].set_axis(names, axis=1)
    return picked.set_axis(cnn.index, axis=0)


def assess(frame: pd.DataFrame, normal_class: str | None, test_train_ratio: float,
           bins: int = ECE_BINS) -> Assessment:
    """Every headline figure from the predictions table (one row per split and test image)."""
    classes = classes_of(frame)
    rows = tuple(_split_row(seed, part, normal_class) for seed, part in frame.groupby("split_seed", sort=True))
    colour_rows = [r for r in rows if math.isfinite(r.colour_accuracy)]
    coloured = frame[has_colour(frame)]
    cnn_spread = spread([r.accuracy for r in rows])
    colour_spread = spread([r.colour_accuracy for r in colour_rows]) if colour_rows else None
    diff = (difference([r.accuracy for r in colour_rows], [r.colour_accuracy for r in colour_rows], test_train_ratio)
            if len(colour_rows) >= MIN_SPLITS else None)
    binary = binary_reading(frame["label"], frame["predicted"], normal_class) if normal_class else None
    colour_binary = (binary_reading(coloured["label"], coloured[f"{COLOUR_PREFIX}predicted"], normal_class)
                     if normal_class and len(coloured) else None)
    cal = calibration(frame["label"], frame[probability_columns(classes)].to_numpy(), classes, bins)
    colour_cal = (calibration(coloured["label"], coloured[probability_columns(classes, COLOUR_PREFIX)].to_numpy(),
                              classes, bins) if len(coloured) else None)
    return Assessment(classes, rows, cnn_spread, colour_spread, diff, binary, colour_binary, cal, colour_cal)


def _split_row(seed, part: pd.DataFrame, normal_class: str | None) -> SplitRow:
    coloured = part[has_colour(part)]
    colour_ok = len(coloured) == len(part) and len(part) > 0
    colour_called = coloured[f"{COLOUR_PREFIX}predicted"] if colour_ok else None
    reading = binary_reading(part["label"], part["predicted"], normal_class) if normal_class else None
    colour_reading = (binary_reading(part["label"], colour_called, normal_class)
                      if normal_class and colour_ok else None)
    return SplitRow(
        int(seed), str(part["run_id"].iloc[0]), len(part), _share(part["predicted"] == part["label"]),
        _share(colour_called == part["label"]) if colour_ok else math.nan,
        reading.sensitivity.value if reading else math.nan, reading.specificity.value if reading else math.nan,
        colour_reading.sensitivity.value if colour_reading else math.nan,
        colour_reading.specificity.value if colour_reading else math.nan)


def _share(hits: pd.Series) -> float:
    return float(hits.mean()) if len(hits) else math.nan


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"

"""Split-conformal prediction sets (least ambiguous set-valued classifier, LAC; Sadinle et al. 2019): per image, the
classes whose probability is at least 1 - q, where q is the finite-sample quantile of the calibration images'
nonconformity scores 1 - p(true class). On images exchangeable with the calibration images, the set holds the true
class with probability at least the chosen coverage (and at most coverage + 1/(n+1)).

Calibration images are held out from the model that scores them: a stage run's out-of-fold probabilities (each
image scored by the fold model that did not train on it). The served model is the refit on all development images,
which is trained on more images than any fold model, so its sets are measured on the outer test part
(`test/conformal/coverage`) rather than assumed.

MAPIE's SplitConformalClassifier (conformity score "lac") computes the same sets; tests/unit/test_conformal.py checks
that. MAPIE is not a dependency of the served model: the sets need one stored quantile per coverage, computed here
from the stored scores, so any coverage can be asked for at prediction time.

A set can be empty when the coverage asked for is below the model's accuracy (no class is likely enough to be
needed); a set of several classes says the model cannot tell those apart on this image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtl_suite.errors import UserError

DEFAULT_COVERAGE = 0.99


@dataclass(frozen=True)
class ConformalCalibration:
    """The calibration images' nonconformity scores (1 - p(true class)), sorted."""

    scores: tuple[float, ...]

    @classmethod
    def from_probabilities(cls, proba: np.ndarray, labels: np.ndarray) -> "ConformalCalibration":
        proba = np.asarray(proba, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if proba.ndim != 2 or len(proba) != len(labels) or not len(labels):
            raise ValueError(f"calibration needs (n, classes) probabilities and n labels, n > 0; got {proba.shape} "
                             f"and {labels.shape}")
        return cls(tuple(sorted(float(s) for s in 1.0 - proba[np.arange(len(labels)), labels])))

    @property
    def n(self) -> int:
        return len(self.scores)

    def quantile(self, coverage: float) -> float:
        """q: the ceil((n + 1) * coverage)-th smallest score; inf (every class in every set) when n is too small to
        promise that coverage."""
        check_coverage(coverage)
        return self.scores[math.ceil((self.n + 1) * coverage) - 1] if promisable(self.n, coverage) else math.inf

    def sets(self, proba: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
        """(n, classes) boolean: class k is in image i's set."""
        return 1.0 - np.asarray(proba, dtype=np.float64) <= self.quantile(coverage)


def promisable(n: int, coverage: float) -> bool:
    """Whether n calibration images can promise `coverage` with sets smaller than every class (n >= 99 for 0.99)."""
    return math.ceil((n + 1) * coverage) <= n


def check_coverage(coverage: float) -> None:
    """A coverage a user asked for (--coverage, the served model's parameter): between 0 and 1, exclusive."""
    if not 0.0 < coverage < 1.0:
        raise UserError(f"coverage: expected a number between 0 and 1 (exclusive), e.g. 0.95. Received: {coverage}")


def set_metrics(sets: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`coverage` (share of images whose set holds the true class), `mean_size`, `singleton_share`, `empty_share`."""
    sets = np.asarray(sets, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return {}
    sizes = sets.sum(axis=1)
    return {"coverage": float(sets[np.arange(len(labels)), labels].mean()), "mean_size": float(sizes.mean()),
            "singleton_share": float((sizes == 1).mean()), "empty_share": float((sizes == 0).mean())}

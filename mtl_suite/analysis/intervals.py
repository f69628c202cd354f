"""Context for a test accuracy: how many images it was counted on, what always guessing the majority class would
score on them, and a 95% confidence interval. On the bundled sample a test part holds about 20 images, where one
image moves the accuracy by 5 points; a bare "accuracy 0.42" hides that, and that it may be no better than chance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's). Unlike the normal (Wald) interval it stays inside
    [0, 1] and does not collapse to a point at 0/n or n/n, which matters on test parts of 20 images.
    n = 0: (nan, nan), nothing was measured."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]. Received: {successes} of {n}")
    interval = binomtest(successes, n).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class AccuracyContext:
    """An accuracy with its count, 95% Wilson interval and the majority-class rate on the same images."""

    correct: int
    n: int
    majority: float  # accuracy of always predicting the most frequent class of these images

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def metrics(self) -> dict[str, float]:
        """`accuracy_ci_low`, `accuracy_ci_high`, `majority_class_accuracy` (callers add 'test/')."""
        low, high = self.interval
        return {"accuracy_ci_low": low, "accuracy_ci_high": high, "majority_class_accuracy": self.majority}

    def text(self) -> str:
        """'0.42 (8/19; 95% CI 0.23-0.64; majority class 0.26)'."""
        if not self.n:
            return "n/a (no test images)"
        low, high = self.interval
        return (f"{self.accuracy:.3f} ({self.correct}/{self.n}; 95% CI {low:.2f}-{high:.2f}; "
                f"majority class {self.majority:.2f})")


def accuracy_context(y_true: np.ndarray, y_pred: np.ndarray) -> AccuracyContext:
    """From labels and predicted labels (integers)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(y_true)
    majority = float(np.bincount(y_true).max() / n) if n else float("nan")
    return AccuracyContext(int((y_true == y_pred).sum()), n, majority)


def context_from_metrics(metrics: dict[str, float], prefix: str = "test/") -> AccuracyContext | None:
    """Rebuilt from logged metrics (`<prefix>accuracy`, `<prefix>n`, `<prefix>majority_class_accuracy`), for a
    command that prints a run's test accuracy without its predictions; None when the run lacks them."""
    keys = [f"{prefix}{k}" for k in ("accuracy", "n", "majority_class_accuracy")]
    if not all(k in metrics for k in keys):
        return None
    n = int(metrics[keys[1]])
    return AccuracyContext(int(round(metrics[keys[0]] * n)), n, float(metrics[keys[2]]))

"""The checks every trained stage run makes beside its own scores, logged on the run and said in one line:

- the colour shortcut (analysis/shortcut.py): colour-only baselines on the run's own split and folds, the best one
  (by CV accuracy) beside the CNN, computed on what the CNN sees (after the run's `--stain` control: under `gray`,
  grey-level histograms) ("stage3: CNN test accuracy 0.965 vs colour alone 0.983 (hist32+lr)");
- stain-shift robustness: the CNN and that best colour baseline on the outer test part re-stained with fixed shifts
  (imaging/augment.py:STAIN_SHIFTS, one shift per third of the images: one extra prediction pass, no cache applies
  to new pixels). A model that reads cells keeps its accuracy; one that reads stain falls with the baseline.

Statistics are computed in analysis/ and imaging/; this module decides what runs and logs it."""

from __future__ import annotations

import math
import tempfile
from typing import Callable

import mlflow
import numpy as np

from mtl_suite.analysis.intervals import accuracy_context
from mtl_suite.analysis.shortcut import ShortcutCheck, split_check
from mtl_suite.config import TrainConfig
from mtl_suite.models.stain import controlled_pixels
from mtl_suite.tasks import TaskData
from mtl_suite.training.cv import TestResult

BEST_VARIANT_TAG = "shortcut/best_variant"
SHIFTED_CHUNK = 64  # re-stained test images scored per throw-away activation store


def test_part_context(final: TestResult, task_data: TaskData) -> dict[str, float]:
    """`accuracy_ci_low|high`, `majority_class_accuracy` and `n` of the outer test part (callers add 'test/')."""
    context = accuracy_context(task_data.data.labels[final.index], np.asarray(final.proba).argmax(axis=1))
    return {**context.metrics(), "n": float(context.n)}


def run_checks(plan_name: str, final: TestResult, task_data: TaskData, train: TrainConfig,
               metrics: dict[str, float], say: Callable[[str], None]) -> dict[str, float]:
    """Shortcut check and stain-shift robustness on the active run; returns the metrics logged, and says the
    comparison line."""
    data, split = task_data.data, task_data.split
    check = split_check(controlled_pixels(data.images, train.stain), data.labels, split)
    logged = check.metrics()
    logged.update(_robustness(final, task_data, check, train))
    mlflow.log_metrics(logged)
    mlflow.set_tag(BEST_VARIANT_TAG, check.best)
    model = "CNN + colour" if train.colour_fusion != "none" else "CNN"  # a fused model holds the colour baseline
    say(comparison_line(plan_name, {**metrics, **logged}, check, model))
    return logged


def _robustness(final: TestResult, task_data: TaskData, check: ShortcutCheck, train: TrainConfig) -> dict[str, float]:
    from mtl_suite.imaging.augment import stain_shifted

    test = task_data.split.test_indices
    if not len(test):
        return {}
    shifted = stain_shifted(task_data.data.images[test])
    labels = task_data.data.labels[test]
    cnn = _shifted_predictions(final.model, shifted, train).argmax(axis=1)
    out = {"robustness/stain_shift_accuracy": float((cnn == labels).mean())}
    if check.best_model is not None:  # the colour model sees what the CNN sees: the stain-controlled pixels
        colour = check.predict_best(controlled_pixels(shifted, train.stain))
        out["robustness/shortcut_stain_shift_accuracy"] = float((colour == labels).mean())
    return out


def _shifted_predictions(model, shifted: np.ndarray, train: TrainConfig) -> np.ndarray:
    """No lasting cache: these pixels are seen once, keeping them would only fill the disk. A model that averages
    members (fold ensemble, flips) gets a throw-away activation store, so the frozen bottom its members share runs
    once per image, not once per member; a chunk of images at a time, so the store never holds more than a chunk's
    activations (Xception at 224 px, 5 members x 4 flips: 0.6 MB per image and flip)."""
    from mtl_suite.models.ensemble import prediction_parts
    from mtl_suite.training.activations import ActivationStore
    from mtl_suite.training.fit import activation_cache_for, predict_proba

    if prediction_parts(model) is None:
        return predict_proba(model, shifted, train.batch_size)
    parts = []
    for start in range(0, len(shifted), SHIFTED_CHUNK):
        with tempfile.TemporaryDirectory(prefix="mtl-shifted-") as tmp:
            cache = activation_cache_for(train, ActivationStore(tmp, max_bytes=1 << 50))
            parts.append(predict_proba(model, shifted[start:start + SHIFTED_CHUNK], train.batch_size,
                                       activation_cache=cache))
    return np.concatenate(parts)


def comparison_line(plan_name: str, metrics: dict[str, float], check: ShortcutCheck, model: str = "CNN") -> str:
    """'stage3: CNN test accuracy 0.965 vs colour alone 0.983 (hist32+lr); CV 0.950 vs 0.987; under stain shifts
    0.930 vs 0.425'; each part only where the run has it. `model` names what was scored ('CNN + colour' for a fused
    model)."""
    best = check.best_score
    parts = []
    if "test/accuracy" in metrics and not math.isnan(best.test_accuracy):
        parts.append(f"{model} test accuracy {metrics['test/accuracy']:.3f} vs colour alone {best.test_accuracy:.3f} "
                     f"({check.label()})")
    if "cv/accuracy_mean" in metrics and not math.isnan(best.cv_accuracy):
        cv = f"CV {metrics['cv/accuracy_mean']:.3f} vs {best.cv_accuracy:.3f}"
        parts.append(cv if parts else f"{model} {cv.replace('CV', 'CV accuracy')} for colour alone ({check.label()})")
    shifted = ("robustness/stain_shift_accuracy", "robustness/shortcut_stain_shift_accuracy")
    if all(k in metrics for k in shifted):
        parts.append(f"under stain shifts {metrics[shifted[0]]:.3f} vs {metrics[shifted[1]]:.3f}")
    return f"{plan_name}: " + ("; ".join(parts) if parts else "no colour baseline (no validation or test images)")

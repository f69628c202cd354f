"""The checks every trained stage run makes beside its own scores, logged on the run and said in one line:

- the colour shortcut (analysis/shortcut.py): colour-only baselines on the run's own split and folds, the best one
  (by CV accuracy) beside the CNN, computed on what the CNN sees (after the run's `--stain` control: under `gray`,
  grey-level histograms) ("stage3: CNN test accuracy 0.965 vs colour alone 0.983 (hist32+lr)");
- stain-shift robustness: the CNN and that best colour baseline on the outer test part re-stained with fixed shifts
  (imaging/augment.py:STAIN_SHIFTS, one shift per third of the images: one extra prediction pass, no cache applies
  to new pixels). A model that reads cells keeps its accuracy; one that reads stain falls with the baseline;
- a multiclass run on data with a normal class, and its colour baseline, read as normal vs leukemia (the paper's
  binary question asked of the subtype model): `cv/as_binary/*`, `test/as_binary/*`, `shortcut/best/as_binary/*`;
- a final model's reliability parts (workflows/reliability.py): on the test part the share flagged as unlike the
  training images and the prediction sets' coverage (`test/ood/*`, `test/conformal_<coverage>/*`), and with
  `--external` another lab's images of one known class (`external/*`), beside colour alone's calls on them.

Statistics are computed in analysis/ and imaging/; this module decides what runs and logs it."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np

from mtl_suite.analysis.intervals import accuracy_context, context_from_metrics
from mtl_suite.analysis.shortcut import ShortcutCheck, split_check
from mtl_suite.analysis.stage_files import predictions_frame
from mtl_suite.config import TrainConfig
from mtl_suite.models.stain import controlled_pixels
from mtl_suite.run_files import COLOUR_TEST_PREDICTIONS
from mtl_suite.tasks import TaskData
from mtl_suite.training.cv import CVResult, TestResult
from mtl_suite.training.metrics import normal_vs_rest, summarise_folds
from mtl_suite.training.reliability import Reliability
from mtl_suite.workflows import reliability as reliability_checks
from mtl_suite.workflows.reliability import ExternalCheck

BEST_VARIANT_TAG = "shortcut/best_variant"
AS_BINARY = "as_binary"  # metric key part of a multiclass run's scores read as normal vs leukemia
SHIFTED_CHUNK = 64  # re-stained test images scored per throw-away activation store


def test_part_context(final: TestResult, task_data: TaskData) -> dict[str, float]:
    """`accuracy_ci_low|high`, `majority_class_accuracy` and `n` of the outer test part (callers add 'test/')."""
    context = accuracy_context(task_data.data.labels[final.index], np.asarray(final.proba).argmax(axis=1))
    return {**context.metrics(), "n": float(context.n)}


def run_checks(plan_name: str, final: TestResult, task_data: TaskData, train: TrainConfig,
               metrics: dict[str, float], say: Callable[[str], None], cv: CVResult | None = None,
               reliability: Reliability | None = None, external: ExternalCheck | None = None) -> dict[str, float]:
    """Shortcut check, stain-shift robustness, (multiclass data with a normal class) the normal-vs-leukemia reading
    and, for a final model, its reliability parts on the test part and on `external` images, on the active run;
    returns the metrics logged, and says the comparison lines."""
    data, split = task_data.data, task_data.split
    check = split_check(controlled_pixels(data.images, train.stain), data.labels, split)
    logged = check.metrics()
    _log_colour_predictions(final, task_data, check, train)
    logged.update(_robustness(final, task_data, check, train))
    if task_data.normal_class is not None:
        logged.update(normal_vs_leukemia(cv, final, task_data, check))
    if reliability is not None:
        logged.update(_reliability_checks(final, task_data, train, check, reliability, external))
    mlflow.log_metrics(logged)
    mlflow.set_tag(BEST_VARIANT_TAG, check.best)
    model = "CNN + colour" if train.colour_fusion != "none" else "CNN"  # a fused model holds the colour baseline
    said = {**metrics, **logged}
    say(comparison_line(plan_name, said, check, model))
    if task_data.normal_class is not None:
        say(as_binary_line(plan_name, task_data.normal_class, said, model))
    if "test/ood/flagged_share" in said:
        say(reliability_checks.reliability_line(plan_name, said))
    if external is not None:
        say(reliability_checks.external_summary(plan_name, external, said))
    return logged


def _log_colour_predictions(final: TestResult, task_data: TaskData, check: ShortcutCheck, train: TrainConfig) -> None:
    """Colour alone's probabilities on the test part, per image, in test/predictions.csv's columns: what `assess`
    pools into colour alone's sensitivity, specificity and calibration beside the CNN's."""
    if check.best_model is None or not len(final.index):
        return
    images = controlled_pixels(task_data.data.images[final.index], train.stain)  # what the CNN sees
    proba = check.predict_proba_best(images, len(task_data.class_names))
    with tempfile.TemporaryDirectory(prefix="mtl-colour-") as tmp:
        path = Path(tmp) / Path(COLOUR_TEST_PREDICTIONS).name
        predictions_frame(task_data, final.index, proba).to_csv(path, index=False)
        mlflow.log_artifact(str(path), str(Path(COLOUR_TEST_PREDICTIONS).parent))


def _reliability_checks(final: TestResult, task_data: TaskData, train: TrainConfig, check: ShortcutCheck,
                        reliability: Reliability, external: ExternalCheck | None) -> dict[str, float]:
    """The detector's flags and the prediction sets on the test part; `external` images read as served, beside
    colour alone's calls on them."""
    def colour_calls(pixels: np.ndarray) -> np.ndarray:
        return check.predict_best(controlled_pixels(pixels, train.stain))

    with tempfile.TemporaryDirectory(prefix="mtl-reliability-") as tmp:
        out = reliability_checks.test_part_metrics(reliability, final, task_data, train, Path(tmp))
        if external is not None:
            out.update(reliability_checks.external_metrics(
                reliability, final, task_data, train, external,
                colour_calls if check.best_model is not None else None, Path(tmp) / "external"))
    return out


def normal_vs_leukemia(cv: CVResult | None, final: TestResult, task_data: TaskData,
                       check: ShortcutCheck) -> dict[str, float]:
    """The run's predicted classes, and the best colour baseline's, read as normal vs leukemia on the same folds and
    test part: `cv/as_binary/<score>_mean|_std`, `test/as_binary/<score>` with the test part's n, interval and
    majority class, `shortcut/best/as_binary/cv_accuracy|test_accuracy`."""
    normal = task_data.class_names.index(task_data.normal_class)
    labels = task_data.data.labels
    out: dict[str, float] = {}
    if cv is not None and len(cv.oof_index):
        called = np.full(len(labels), -1)
        called[cv.oof_index] = cv.oof_proba.argmax(axis=1)
        folds = [val for _, _, val in task_data.split.fold_indices() if len(val)]
        scores = summarise_folds([normal_vs_rest(labels[val], called[val], normal) for val in folds])
        out.update({f"cv/{AS_BINARY}/{k}": v for k, v in scores.items()})
        if check.best_oof is not None:
            colour = [normal_vs_rest(labels[val], check.best_oof[val], normal)["accuracy"] for val in folds]
            out[f"shortcut/best/{AS_BINARY}/cv_accuracy"] = float(np.mean(colour))
    if len(final.index):
        truth, called = labels[final.index], np.asarray(final.proba).argmax(axis=1)
        context = accuracy_context(truth != normal, called != normal)
        test = {**normal_vs_rest(truth, called, normal), **context.metrics(), "n": float(context.n)}
        out.update({f"test/{AS_BINARY}/{k}": v for k, v in test.items()})
        if check.best_test is not None:
            colour = normal_vs_rest(truth, check.best_test, normal)["accuracy"]
            out[f"shortcut/best/{AS_BINARY}/test_accuracy"] = colour
    return out


def as_binary_line(plan_name: str, normal_class: str, metrics: dict[str, float], model: str = "CNN") -> str:
    """'stage3 read as Benign vs leukemia: CNN test accuracy 0.998 (547/548; 95% CI 0.99-1.00; majority class
    0.84) vs colour alone 0.987; CV 0.992 vs 0.992'; each part only where the run has it."""
    parts = []
    context = context_from_metrics(metrics, f"test/{AS_BINARY}/")
    colour_test = metrics.get(f"shortcut/best/{AS_BINARY}/test_accuracy")
    if context is not None:
        parts.append(f"{model} test accuracy {context.text()}"
                     + (f" vs colour alone {colour_test:.3f}" if colour_test is not None else ""))
    if f"cv/{AS_BINARY}/accuracy_mean" in metrics:
        colour_cv = metrics.get(f"shortcut/best/{AS_BINARY}/cv_accuracy")
        cv = f"CV {metrics[f'cv/{AS_BINARY}/accuracy_mean']:.3f}"
        cv += f" vs {colour_cv:.3f}" if colour_cv is not None else ""
        parts.append(cv if parts else f"{model} {cv}")
    return f"{plan_name} read as {normal_class} vs leukemia: " + ("; ".join(parts) or "nothing to score")


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

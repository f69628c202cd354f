"""A final model's reliability parts end to end: fitted on the run's development images (the OOD detector, its
threshold on held-out folds) and out-of-fold predictions (the conformal calibration), logged as the run's
`reliability/` artifact that `promote` packs into the served model, then scored on the outer test part, on its
re-stained copy and, when asked, on another lab's images of one known class (`--external`).

Never fitted on a test part or on external images: those are only scored, once per run, and every score is logged
with the per-image rows it comes from (`reliability/test_readings.csv`, `external/readings.csv`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np

from mtl_suite.analysis.external import expected_class_scores, external_line, readings_frame
from mtl_suite.config import TrainConfig
from mtl_suite.data.arrays import ArrayData
from mtl_suite.data.images import read_rgb, resize
from mtl_suite.data.layouts import read_one_class
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.tasks import TaskData, normal_class_of
from mtl_suite.training.conformal import ConformalCalibration, promisable, set_metrics
from mtl_suite.training.cv import CVResult, FoldProbe, TestResult
from mtl_suite.training.ood import fit_detector
from mtl_suite.training.reliability import ARTIFACT, Readings, Reliability

COVERAGES = (0.95, 0.99)  # the prediction sets' coverages measured on the test part
EXTERNAL = "external"
MAGNIFICATION = 2.5  # the development-side stand-in for another lab's higher-magnification fields
INNER_FOLDS = 5  # a fold detector's threshold: held-out scores within the fold's training images


@dataclass(frozen=True)
class ExternalCheck:
    """Images of one known class from elsewhere (another lab), scored by the final model: `expected` is a class of
    the model (for a binary task, the data's normal class may be named: it is the model's `normal`)."""

    path: str
    expected: str

    @property
    def name(self) -> str:
        path = Path(self.path)
        return path.name if path.name.lower() not in ("jpegimages", "images") else path.parent.name

    def files(self) -> list[Path]:
        try:
            return [record.path for record in read_one_class(Path(self.path), self.expected)]
        except UserError as exc:
            raise UserError(f"--external: {exc}") from None

    def resolved(self, task_data: TaskData, data_classes: list[str], normal_class: str | None) -> "ExternalCheck":
        """Checked against the task before any run opens: every image decodes and `expected` names a class."""
        for path in self.files():
            _read(path)
        if self.expected in task_data.class_names:
            return self
        if "normal" in task_data.class_names and self.expected == normal_class_of(data_classes, normal_class):
            return ExternalCheck(self.path, "normal")
        raise UserError(f"--external-class: expected one of the model's classes ({', '.join(task_data.class_names)})."
                        f" Received: {self.expected!r}")


def fit_reliability(task_data: TaskData, train: TrainConfig, cv: CVResult | None,
                    say: Callable[[str], None]) -> Reliability:
    """The detector on the development images (threshold on each fold's held-out images) and the conformal
    calibration on the out-of-fold probabilities (None without them)."""
    split, data = task_data.split, task_data.data
    development = split.development_indices
    position = np.full(len(split.entries), -1)
    position[development] = np.arange(len(development))
    folds = [(position[train_idx], position[val]) for _, train_idx, val in split.fold_indices() if len(val)]
    say(f"reliability: fitting the out-of-distribution detector on {len(development)} development images")
    fitted = fit_detector(data.images[development], data.labels[development], folds, train.stain)
    calibration = None
    if cv is not None and len(cv.oof_index):
        calibration = ConformalCalibration.from_probabilities(cv.oof_proba, data.labels[cv.oof_index])
    return Reliability(fitted.model, fitted.threshold, task_data.image_size, calibration, fitted.flag_rate,
                       fitted.heldout_flagged_share,
                       info={"heldout_n": len(fitted.heldout_scores), "stain": train.stain,
                             "feature_backbone": "mobilenet_025", "class_names": task_data.class_names})


def log_reliability(reliability: Reliability) -> dict[str, float]:
    """The `reliability/` artifact and what its fitting measured on development images."""
    with tempfile.TemporaryDirectory(prefix="mtl-reliability-") as tmp:
        mlflow.log_artifacts(str(reliability.save(Path(tmp) / ARTIFACT)), artifact_path=ARTIFACT)
    metrics = {"ood/threshold": reliability.threshold, "ood/heldout_flagged_share": reliability.heldout_flagged_share,
               "ood/heldout_n": float(reliability.info.get("heldout_n", 0))}
    if reliability.calibration is not None:
        metrics["conformal/calibration_n"] = float(reliability.calibration.n)
    mlflow.log_metrics(metrics)
    return metrics


def classifier(model, train: TrainConfig) -> Callable[[np.ndarray], np.ndarray]:
    from mtl_suite.training.fit import predict_proba

    return lambda pixels: predict_proba(model, pixels, train.batch_size)


def test_part_metrics(reliability: Reliability, final: TestResult, task_data: TaskData, train: TrainConfig,
                      workdir: Path) -> dict[str, float]:
    """On the outer test part: the share flagged, accuracy on the unflagged images, the prediction sets' coverage;
    on its re-stained copy, the share flagged. Logs the per-image rows."""
    from mtl_suite.imaging.augment import stain_shifted

    if not len(final.index):
        return {}
    images, labels = task_data.data.images[final.index], task_data.data.labels[final.index]
    readings = reliability.read(list(images), classifier(final.model, train), plain_proba=final.proba)
    called = readings.proba.argmax(axis=1)
    unflagged = readings.in_distribution
    out = {"test/ood/flagged_share": float(readings.flagged.mean()), "test/ood/unflagged_n": float(unflagged.sum())}
    if unflagged.any():
        out["test/ood/unflagged_accuracy"] = float(np.mean(called[unflagged] == labels[unflagged]))
    for coverage in COVERAGES if reliability.calibration is not None else ():
        sets = reliability.sets(readings.proba, coverage)
        out.update({f"test/conformal_{round(coverage * 100)}/{k}": v for k, v in set_metrics(sets, labels).items()})
    shifted = reliability.scores(stain_shifted(images))
    out["robustness/stain_shift_flagged_share"] = float(np.mean(shifted > reliability.threshold))
    frame = _frame(reliability, readings, task_data, [task_data.split.entries[i].path for i in final.index],
                   [task_data.split.entries[i].sha256 for i in final.index])
    frame.insert(2, "label", [task_data.class_names[k] for k in labels])
    _log_frame(frame, workdir / "test_readings.csv", ARTIFACT)
    return out


def external_metrics(reliability: Reliability, final: TestResult, task_data: TaskData, train: TrainConfig,
                     external: ExternalCheck, colour_calls: Callable[[np.ndarray], np.ndarray] | None,
                     workdir: Path) -> dict[str, float]:
    """The final model on `external`'s images as served: `external/*` (analysis/external.py's shares), with colour
    alone's share called the expected class beside it (`external/colour_called_expected_share`)."""
    files = external.files()
    images = np.stack([resize(_read(path), task_data.image_size) for path in files])
    readings = reliability.read(list(images), classifier(final.model, train))
    sets = reliability.sets(readings.proba)
    scores = expected_class_scores(task_data.class_names, external.expected, readings.proba.argmax(axis=1),
                                   readings.flagged, sets)
    out = {f"{EXTERNAL}/{k}": v for k, v in scores.items()}
    if colour_calls is not None:
        expected = task_data.class_names.index(external.expected)
        out[f"{EXTERNAL}/colour_called_expected_share"] = float(np.mean(colour_calls(images) == expected))
    _log_frame(_frame(reliability, readings, task_data, [str(p) for p in files]), workdir / "readings.csv", EXTERNAL)
    mlflow.set_tags({"external_data": external.path[:250], "external_class": external.expected})
    return out


def shift_probe(train: TrainConfig) -> FoldProbe:
    """Per cross-validation fold, its model on its validation images changed as another lab's would be: re-stained
    (the stage checks' fixed shifts) and magnified 2.5 times, with the share that a detector fitted on the fold's
    training images flags. Development-side figures (`cv/shift/*`) to choose a model for other labs by, where no
    test part and no other lab's images are looked at."""
    def probe(model, training: ArrayData, val: ArrayData) -> dict[str, float]:
        from mtl_suite.imaging.augment import magnified, stain_shifted

        classify = classifier(model, train)
        reliability = _fold_reliability(training, val.images.shape[1], train.stain)
        flagged = lambda pixels: float(np.mean(reliability.scores(pixels) > reliability.threshold))  # noqa: E731
        accuracy = lambda pixels: float(np.mean(classify(pixels).argmax(axis=1) == val.labels))  # noqa: E731
        shifted = stain_shifted(val.images)
        bigger = np.stack([magnified(image, MAGNIFICATION) for image in val.images])
        return {"shift/val_flagged_share": flagged(val.images), "shift/stain_accuracy": accuracy(shifted),
                "shift/stain_flagged_share": flagged(shifted), "shift/magnified_accuracy": accuracy(bigger),
                "shift/magnified_flagged_share": flagged(bigger)}

    return probe


def _fold_reliability(training: ArrayData, size: int, stain: str) -> Reliability:
    from sklearn.model_selection import StratifiedKFold

    splits = max(2, min(INNER_FOLDS, int(np.unique(training.labels, return_counts=True)[1].min())))
    inner = StratifiedKFold(splits, shuffle=True, random_state=0).split(training.images, training.labels)
    fitted = fit_detector(training.images, training.labels, inner, stain)
    return Reliability(fitted.model, fitted.threshold, size, None, fitted.flag_rate)


def external_summary(plan_name: str, external: ExternalCheck, metrics: dict[str, float]) -> str:
    return external_line(f"{plan_name} on {external.name}", external.expected, metrics, f"{EXTERNAL}/",
                         f"{EXTERNAL}/colour_called_expected_share")


def reliability_line(plan_name: str, metrics: dict[str, float]) -> str:
    """'stage3 reliability: 1.3% of the test part flagged (unflagged accuracy 0.991), 99% sets cover 0.989 (mean
    size 1.02); 4.0% of re-stained test images flagged'."""
    parts = [f"{metrics['test/ood/flagged_share']:.1%} of the test part flagged as unlike the training images"]
    if "test/ood/unflagged_accuracy" in metrics:
        parts[-1] += f" (accuracy on the rest {metrics['test/ood/unflagged_accuracy']:.3f})"
    coverage = COVERAGES[-1]
    key = f"test/conformal_{round(coverage * 100)}/"
    if f"{key}coverage" in metrics:
        parts.append(f"{coverage:.0%} prediction sets cover {metrics[f'{key}coverage']:.3f} "
                     f"(mean size {metrics[f'{key}mean_size']:.2f})")
        calibration_n = int(metrics.get("conformal/calibration_n", 0))
        if calibration_n and not promisable(calibration_n, coverage):
            parts[-1] += (f": {calibration_n} calibration images are too few to promise {coverage:.0%}, so every set "
                          "holds every class")
    if "robustness/stain_shift_flagged_share" in metrics:
        parts.append(f"{metrics['robustness/stain_shift_flagged_share']:.1%} of re-stained test images flagged")
    return f"{plan_name} reliability: " + "; ".join(parts)


def _frame(reliability: Reliability, readings: Readings, task_data: TaskData, paths: list[str],
           sha256: list[str] | None = None):
    return readings_frame(paths, task_data.class_names, readings.proba, readings.ood_score, readings.in_distribution,
                          reliability.sets(readings.proba), sha256)


def _log_frame(frame, path: Path, artifact_path: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def _read(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except BadImageError as exc:
        raise UserError(f"--external: {exc}") from None


"""The files a stage run keeps beside its metrics, written to a folder that the caller logs: per-fold metrics,
out-of-fold and test predictions, confusion matrices (counts and row %), ROC curves, training curves and the
classification report. Files only; no MLflow here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtl_suite.analysis import plots
from mtl_suite.run_files import TEST_PREDICTIONS
from mtl_suite.tasks import TaskData
from mtl_suite.training import metrics as m
from mtl_suite.training.cv import CVResult, TestResult


def write_cv_files(cv: CVResult, task_data: TaskData, folder: Path) -> Path:
    names = task_data.class_names
    y_true = task_data.data.labels[cv.oof_index]
    folder.mkdir()
    pd.DataFrame(cv.fold_metrics, index=[f"fold-{i}" for i in range(len(cv.fold_metrics))]).to_csv(
        folder / "fold_metrics.csv")
    predictions_frame(task_data, cv.oof_index, cv.oof_proba, fold=cv.oof_fold).to_csv(
        folder / "oof_predictions.csv", index=False)
    pooled = m.classification_metrics(y_true, cv.oof_proba, names)
    _figures(y_true, cv.oof_proba, names, pooled, folder, "cross-validation (out-of-fold)")
    if cv.histories:  # an ensemble of logged runs trained nothing here
        plots.curves_png(cv.histories, folder / "curves.png",
                         "training and validation per epoch (mean, range over folds)")
    (folder / "classification_report.txt").write_text(m.classification_report(y_true, cv.oof_proba, names))
    return folder


def write_test_files(final: TestResult, task_data: TaskData, folder: Path) -> Path:
    names = task_data.class_names
    y_true = task_data.data.labels[final.index]
    folder.mkdir()
    predictions_frame(task_data, final.index, final.proba).to_csv(folder / Path(TEST_PREDICTIONS).name, index=False)
    _figures(y_true, final.proba, names, final.metrics, folder, "outer test")
    (folder / "classification_report.txt").write_text(m.classification_report(y_true, final.proba, names))
    return folder


def _figures(y_true, proba, names, scores, folder: Path, title: str) -> None:
    matrix = m.confusion(y_true, proba, len(names))
    pd.DataFrame(matrix, index=names, columns=names).to_csv(folder / "confusion_matrix.csv")
    plots.confusion_matrix_png(matrix, names, folder / "confusion_matrix.png", f"Confusion matrix, {title}")
    plots.roc_png(m.roc_curves(y_true, proba, names), scores, folder / "roc.png", f"ROC, {title}")


def predictions_frame(task_data: TaskData, index: np.ndarray, proba: np.ndarray, fold=None) -> pd.DataFrame:
    entries = [task_data.split.entries[i] for i in index]
    frame = pd.DataFrame({"path": [e.path for e in entries], "sha256": [e.sha256 for e in entries],
                          "label": [task_data.class_names[k] for k in task_data.data.labels[index]]})
    if fold is not None:
        frame["fold"] = fold
    for k, name in enumerate(task_data.class_names):
        frame[f"p_{name}"] = proba[:, k]
    frame["predicted"] = [task_data.class_names[k] for k in proba.argmax(axis=1)]
    return frame

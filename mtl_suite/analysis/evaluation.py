"""A model's predictions on a labelled dataset, scored as a stage run's outer test part is: the paper's metrics
(training/metrics.py), the accuracy with its n, 95% Wilson interval and majority-class rate (analysis/intervals.py),
and the same files a stage run keeps for its test part (predictions, confusion matrix as CSV and figure, ROC
curves, per-class report). Files and numbers only; no MLflow here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_suite.analysis import plots
from mtl_suite.analysis.intervals import AccuracyContext, accuracy_context
from mtl_suite.training import metrics as m


@dataclass(frozen=True)
class Scored:
    """Predictions on labelled images and their scores, in the model's class order."""

    class_names: list[str]
    paths: list[str]
    sha256: list[str]
    data_labels: list[str]  # each image's label in the dataset (before any mapping onto the model's classes)
    y_true: np.ndarray  # index into class_names
    proba: np.ndarray  # (n, classes)
    metrics: dict[str, float]  # classification_metrics, accuracy context and n (callers add a prefix)
    context: AccuracyContext

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def confusion(self) -> np.ndarray:
        return m.confusion(self.y_true, self.proba, len(self.class_names))

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 and support per class (sklearn's report as numbers)."""
        from sklearn.metrics import classification_report

        report = classification_report(self.y_true, self.y_pred, labels=list(range(len(self.class_names))),
                                       target_names=self.class_names, output_dict=True, zero_division=0)
        return {name: {k: float(v) for k, v in report[name].items()} for name in self.class_names}

    def summary(self) -> dict:
        """What --out writes: metrics, confusion matrix (rows true, columns predicted) and the per-class report."""
        matrix = self.confusion()
        return {"n": self.context.n, "class_names": self.class_names, "metrics": self.metrics,
                "confusion_matrix": {true: dict(zip(self.class_names, map(int, row)))
                                     for true, row in zip(self.class_names, matrix)},
                "per_class": self.per_class()}


def score(class_names: list[str], paths: list[str], sha256: list[str], data_labels: list[str], y_true: np.ndarray,
          proba: np.ndarray) -> Scored:
    proba = m.as_class_probabilities(proba)
    y_true = np.asarray(y_true, dtype=int)
    context = accuracy_context(y_true, proba.argmax(axis=1))
    metrics = {**m.classification_metrics(y_true, proba, class_names), **context.metrics(), "n": float(context.n)}
    return Scored(list(class_names), list(paths), list(sha256), list(data_labels), y_true, proba, metrics, context)


def write_evaluation_files(scored: Scored, folder: Path, title: str = "evaluation",
                           extra_columns: pd.DataFrame | None = None) -> Path:
    """predictions.csv, confusion_matrix.csv/.png, roc.png, classification_report.txt and metrics.json in `folder`
    (the names a stage run's test/ folder uses). `extra_columns`: more per-image columns for predictions.csv (the
    detector's score and flag, the prediction set), in the images' order."""
    names = scored.class_names
    folder.mkdir(parents=True, exist_ok=True)
    predictions = predictions_frame(scored)
    if extra_columns is not None:
        predictions = pd.concat([predictions, extra_columns.reset_index(drop=True)], axis=1)
    predictions.to_csv(folder / "predictions.csv", index=False)
    matrix = scored.confusion()
    pd.DataFrame(matrix, index=names, columns=names).to_csv(folder / "confusion_matrix.csv")
    plots.confusion_matrix_png(matrix, names, folder / "confusion_matrix.png", f"Confusion matrix, {title}")
    plots.roc_png(m.roc_curves(scored.y_true, scored.proba, names), scored.metrics, folder / "roc.png",
                  f"ROC, {title}")
    (folder / "classification_report.txt").write_text(m.classification_report(scored.y_true, scored.proba, names))
    (folder / "metrics.json").write_text(json.dumps(scored.summary(), indent=2))
    return folder


def predictions_frame(scored: Scored) -> pd.DataFrame:
    """One row per image: path, content hash, the dataset's label, the model's class for it, p_<class>, predicted."""
    frame = pd.DataFrame({"path": scored.paths, "sha256": scored.sha256, "data_label": scored.data_labels,
                          "label": [scored.class_names[k] for k in scored.y_true]})
    for k, name in enumerate(scored.class_names):
        frame[f"p_{name}"] = scored.proba[:, k]
    frame["predicted"] = [scored.class_names[k] for k in scored.y_pred]
    return frame

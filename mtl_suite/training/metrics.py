"""The paper's metrics: accuracy, precision, recall, F1 (macro and weighted), per-class ROC AUC with micro and macro
averages, confusion matrices; and one-vs-rest sensitivity and specificity per class. Keys use the house form
('f1_macro', 'auc/<class>', 'sensitivity/<class>'); callers add 'val/', 'cv/', 'test/' prefixes."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

# The scalar scores classification_metrics() returns (per-class "auc/<class>", "sensitivity/<class>" and
# "specificity/<class>" aside), each with the direction an optimiser should take; tuning, reports and the CLI read
# them from here. POSITIVE_CLASS_SCORES: binary tasks only.
SCORES: dict[str, str] = {name: "maximize" for name in (
    "f1_macro", "accuracy", "auc_macro", "auc_micro", "precision_macro", "recall_macro", "f1_weighted",
    "precision_weighted", "recall_weighted", "specificity_macro")}
POSITIVE_CLASS_SCORES: dict[str, str] = {"f1": "maximize", "precision": "maximize", "recall": "maximize",
                                         "specificity": "maximize"}
SENSITIVITY, SPECIFICITY = "sensitivity", "specificity"  # per-class keys: "sensitivity/<class>"


def as_class_probabilities(raw: np.ndarray) -> np.ndarray:
    """A single sigmoid column p becomes [1 - p, p], so binary and multiclass models are scored alike."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 1 or raw.shape[1] == 1:
        p = raw.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return raw


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, float]:
    proba = as_class_probabilities(proba)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(class_names)))
    out = {"accuracy": float(skm.accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                         zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    if len(class_names) == 2:  # the paper's binary table reports the positive (leukemia/blast) class
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=[1], average=None, zero_division=0)
        out.update({"precision": float(p[0]), "recall": float(r[0]), "f1": float(f[0])})
    out.update(auc_metrics(y_true, proba, class_names))
    out.update(rate_metrics(skm.confusion_matrix(y_true, y_pred, labels=labels), class_names))
    return out


def rate_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """One-vs-rest rates from a confusion matrix (rows true, columns predicted): `sensitivity/<class>` TP/(TP+FN),
    `specificity/<class>` TN/(TN+FP), `specificity_macro`, and for two classes `specificity` of the positive class
    (index 1), the companion of the binary `recall`. A class absent from the true labels has no sensitivity (as it
    has no AUC); a class that is every true label has no specificity."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    out, specificities = {}, []
    for k, name in enumerate(class_names):
        positives, predicted = matrix[k].sum(), matrix[:, k].sum()
        if positives > 0:
            out[f"{SENSITIVITY}/{name}"] = float(matrix[k, k] / positives)
        negatives = total - positives
        if negatives > 0:
            true_negatives = negatives - (predicted - matrix[k, k])
            out[f"{SPECIFICITY}/{name}"] = float(true_negatives / negatives)
            specificities.append(out[f"{SPECIFICITY}/{name}"])
    if specificities:
        out[f"{SPECIFICITY}_macro"] = float(np.mean(specificities))
    positive = f"{SPECIFICITY}/{class_names[-1]}"
    if len(class_names) == 2 and positive in out:
        out[SPECIFICITY] = out[positive]
    return out


def normal_vs_rest(y_true: np.ndarray, y_pred: np.ndarray, normal: int) -> dict[str, float]:
    """A multiclass model's predicted labels read as normal (class `normal`) vs leukemia (any other class), the
    paper's binary question asked of its 4-class model: `accuracy`, `sensitivity` (leukemia called leukemia,
    whichever subtype) and `specificity` (normal called normal); a rate without images to count on is left out."""
    is_normal, called_normal = np.asarray(y_true) == normal, np.asarray(y_pred) == normal
    out = {"accuracy": float((is_normal == called_normal).mean())} if len(is_normal) else {}
    if (~is_normal).any():
        out[SENSITIVITY] = float((~called_normal[~is_normal]).mean())
    if is_normal.any():
        out[SPECIFICITY] = float(called_normal[is_normal].mean())
    return out


def auc_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """One-vs-rest AUC per class, micro (pooled) and macro (mean of classes). A class absent from y_true has no
    AUC; it is left out rather than reported as a number it cannot have."""
    onehot = label_binarize(y_true, classes=list(range(len(class_names))))
    if len(class_names) == 2:
        onehot = np.hstack([1 - onehot, onehot])
    out, per_class = {}, []
    for k, name in enumerate(class_names):
        if 0 < onehot[:, k].sum() < len(onehot):
            auc = float(skm.roc_auc_score(onehot[:, k], proba[:, k]))
            out[f"auc/{name}"] = auc
            per_class.append(auc)
    if per_class:
        out["auc_macro"] = float(np.mean(per_class))
        out["auc_micro"] = float(skm.roc_auc_score(onehot.ravel(), proba.ravel()))
    return out


def confusion(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> np.ndarray:
    y_pred = as_class_probabilities(proba).argmax(axis=1)
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def roc_curves(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{class or 'micro'/'macro': (fpr, tpr)} for plotting."""
    proba = as_class_probabilities(proba)
    onehot = label_binarize(y_true, classes=list(range(len(class_names))))
    if len(class_names) == 2:
        onehot = np.hstack([1 - onehot, onehot])
    curves = {}
    for k, name in enumerate(class_names):
        if 0 < onehot[:, k].sum() < len(onehot):
            fpr, tpr, _ = skm.roc_curve(onehot[:, k], proba[:, k])
            curves[name] = (fpr, tpr)
    if curves:
        grid = np.linspace(0, 1, 201)
        macro = np.mean([np.interp(grid, f, t) for f, t in curves.values()], axis=0)
        curves["micro"] = tuple(skm.roc_curve(onehot.ravel(), proba.ravel())[:2])
        curves["macro"] = (grid, macro)
    return curves


def classification_report(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> str:
    y_pred = as_class_probabilities(proba).argmax(axis=1)
    return skm.classification_report(y_true, y_pred, labels=list(range(len(class_names))),
                                     target_names=class_names, digits=4, zero_division=0)


def summarise_folds(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation over folds of every metric that all folds have."""
    keys = set.intersection(*(set(m) for m in fold_metrics)) if fold_metrics else set()
    out = {}
    for key in sorted(keys):
        values = np.array([m[key] for m in fold_metrics], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out

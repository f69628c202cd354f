"""Figures in the paper's style: confusion matrices (counts and row %), per-class ROC curves with micro and macro
averages, train/validation curves. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtl_suite.io_utils import atomic_path  # noqa: E402


def confusion_matrix_png(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    row_totals = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(matrix, row_totals, out=np.zeros_like(matrix, dtype=float), where=row_totals > 0) * 100
    size = 1.2 + 0.9 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{matrix[i, j]}\n{percent[i, j]:.1f}%", ha="center", va="center",
                    color="white" if percent[i, j] > 60 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="row %")
    return save_figure(fig, path)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float], path: str | Path,
            title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr) in curves.items():
        averaged = name in ("micro", "macro")
        key = f"auc_{name}" if averaged else f"auc/{name}"
        label = f"{name}{' average' if averaged else ''} (AUC {aucs.get(key, float('nan')):.3f})"
        ax.plot(fpr, tpr, linestyle="--" if averaged else "-", linewidth=2 if averaged else 1.2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if curves:  # none when the images are all of one class (evaluate --expect): no ROC to draw
        ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def curves_png(histories: list[dict[str, list[float]]], path: str | Path, title: str) -> Path:
    """Loss and accuracy per epoch: mean over folds (lines) with the spread of folds (band)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, colour in (("", "tab:blue"), ("val_", "tab:orange")):
            series = [h[prefix + metric] for h in histories if h.get(prefix + metric)]
            if not series:
                continue
            length = max(len(s) for s in series)
            padded = np.array([s + [np.nan] * (length - len(s)) for s in series])
            mean = np.nanmean(padded, axis=0)
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, mean, color=colour, label="validation" if prefix else "training")
            if len(series) > 1:
                ax.fill_between(epochs, np.nanmin(padded, axis=0), np.nanmax(padded, axis=0), color=colour, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write (atomically: a crash leaves the old figure or the new one) and close a figure; parent folders are
    made. Shared with the report's figures."""
    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path

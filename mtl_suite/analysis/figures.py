"""Figures for comparisons and reports (matplotlib, files only). Each function writes one PNG and returns its path.
plots.py holds the figures every stage run logs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtl_suite.analysis.plots import save_figure  # noqa: E402


def paired_box_strip_png(values: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str, labels: tuple[str, str] = ("CTL", "MTL")) -> Path:
    """One panel per metric: a box per arm, every run as a dot, and a grey line joining the two runs of a pair."""
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 4.2), squeeze=False)
    for ax, (metric, (ctl, mtl)) in zip(axes[0], values.items()):
        ctl, mtl = np.asarray(ctl, float), np.asarray(mtl, float)
        ax.boxplot([ctl, mtl], widths=0.5, showmeans=True)
        ax.set_xticks([1, 2], list(labels))
        jitter = np.linspace(-0.06, 0.06, len(ctl)) if len(ctl) > 1 else np.zeros(len(ctl))
        for i in range(len(ctl)):
            ax.plot([1 + jitter[i], 2 + jitter[i]], [ctl[i], mtl[i]], color="grey", linewidth=0.8, alpha=0.7)
        ax.scatter(1 + jitter, ctl, color="tab:blue", zorder=3, label=labels[0])
        ax.scatter(2 + jitter, mtl, color="tab:orange", zorder=3, label=labels[1])
        ax.set_ylabel(f"test {metric}")
        ax.set_title(metric)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def convergence_png(series: dict[str, dict[str, np.ndarray]], path: str | Path, title: str) -> Path:
    """Fig. 9 style: one panel per group (e.g. backbone / task), one mean training-loss line per configuration."""
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 4), squeeze=False)
    for ax, (group, lines) in zip(axes[0], series.items()):
        for name, mean in lines.items():
            ax.plot(np.arange(1, len(mean) + 1), mean, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean training loss over folds")
        ax.set_title(group)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def reliability_png(bin_confidence: np.ndarray, bin_accuracy: np.ndarray, bin_count: np.ndarray, ece: float,
                    path: str | Path, title: str) -> Path:
    edges = np.linspace(0, 1, len(bin_count) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    filled = bin_count > 0
    ax.bar(centres[filled], bin_accuracy[filled], width=edges[1] - edges[0], edgecolor="black", alpha=0.7,
           label="accuracy")
    ax.plot(bin_confidence[filled], bin_accuracy[filled], "o", color="tab:red", markersize=4,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}")
    ax.legend(fontsize=8, loc="upper left")
    ax_hist.bar(centres, bin_count, width=edges[1] - edges[0], color="grey", edgecolor="black")
    ax_hist.set_xlabel("confidence (top-class probability)")
    ax_hist.set_ylabel("images")
    return save_figure(fig, path, dpi=100)


def overlay_grid_png(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]], path: str | Path,
                     title: str) -> Path:
    """Rows of (label, [(image uint8 HxWx3, heatmap HxW in [0, 1], caption)]) drawn as image + jet overlay."""
    n_cols = max(2, max((len(items) for _, items in rows), default=1))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols + 0.6, 2.5 * len(rows)), squeeze=False)
    for r, (label, items) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                image, heat, caption = items[c]
                ax.imshow(image)
                ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1,
                          extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
                ax.set_title(caption, fontsize=7)
            elif c == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center")
        axes[r][0].text(-0.08, 0.5, label, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)

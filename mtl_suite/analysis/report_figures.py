"""The `mtl-suite report` sections that are figures: Figs. 9-11 of the paper, calibration and Grad-CAM, drawn into
the report's figures/ folder. What comes from MLflow arrives ready: `RunData`, and callables for the fold
histories and the logged model (tracking/report_queries.py), so no section reads the store itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from mtl_suite.analysis import plots
from mtl_suite.analysis import report as rp
from mtl_suite.analysis.calibration import reliability
from mtl_suite.analysis.figures import convergence_png, overlay_grid_png, reliability_png
from mtl_suite.analysis.report_sections import TABLE_METRICS, RunData, labels_proba, none_found
from mtl_suite.catalog import Stage
from mtl_suite.training import metrics as m

Histories = Callable[[str], list[dict[str, list[float]]]]  # stage run id -> per CV fold, metric -> per epoch


def _mean_series(series: list[list[float]]) -> np.ndarray:
    series = [s for s in series if s]
    if not series:
        return np.zeros(0)
    length = max(len(s) for s in series)
    return np.nanmean(np.array([s + [np.nan] * (length - len(s)) for s in series]), axis=0)


def convergence_section(histories: Histories, groups: dict, headline: list[RunData],
                        figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 9: mean convergence loss per transfer configuration")]
    for task in TABLE_METRICS:
        panels: dict[str, dict[str, np.ndarray]] = {}
        for rd in headline:
            tags = rd.run.data.tags
            if tags.get("task") != task:
                continue
            lines = {}
            classical = groups.get((Stage.CLASSICAL, tags["backbone"], task))
            stage3 = rd.run if tags.get("stage") == Stage.STAGE3 else None
            stage2_id = stage3.data.tags.get("parent_stage_run") if stage3 else None
            for label, run_id in (("1 transfer (CTL)", classical[0].info.run_id if classical else None),
                                  ("2 transfers (stage 2, cells)", stage2_id or None),
                                  ("3 transfers (MTL)", stage3.info.run_id if stage3 else None)):
                if run_id:
                    mean = _mean_series([h["loss"] for h in histories(run_id)])
                    if len(mean):
                        lines[label] = mean
            if lines:
                panels[f"{tags['backbone']} ({task})"] = lines
        if panels:
            path = convergence_png(panels, figures / f"fig9-convergence-{task}.png",
                                   f"Mean training loss over CV folds, {task} task")
            blocks.append(rp.Figure(path, f"Fig. 9 ({task}): mean training loss per epoch for 1-, 2- and 3-transfer "
                                          "configurations (stage 2 is the single-cell task)."))
    if len(blocks) == 1:
        blocks += none_found("convergence curves")
    return blocks


def roc_section(headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 10: ROC per class with micro and macro averages (out-of-fold)")]
    for rd in headline:
        if rd.oof is None:
            continue
        y, proba = labels_proba(rd.oof, rd.class_names)
        curves = m.roc_curves(y, proba, rd.class_names)
        if not curves:
            continue
        aucs = m.auc_metrics(y, proba, rd.class_names)
        path = plots.roc_png(curves, aucs, figures / f"fig10-roc-{rd.slug}.png", f"ROC, {rd.title}")
        blocks.append(rp.Figure(path, f"Fig. 10, {rd.title}: micro AUC {aucs.get('auc_micro', float('nan')):.3f}, "
                                      f"macro AUC {aucs.get('auc_macro', float('nan')):.3f}."))
    if len(blocks) == 1:
        blocks += none_found("ROC curves")
    return blocks


def curves_section(histories: Histories, headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 11: training and validation loss and accuracy")]
    for rd in headline:
        run_histories = histories(rd.run.info.run_id)
        if not run_histories:
            continue
        path = plots.curves_png(run_histories, figures / f"fig11-curves-{rd.slug}.png",
                                f"{rd.title}: mean over folds (band: range)")
        blocks.append(rp.Figure(path, f"Fig. 11, {rd.title}: per-epoch loss and accuracy, mean over "
                                      f"{len(run_histories)} folds."))
    if len(blocks) == 1:
        blocks += none_found("training curves")
    return blocks


def calibration_section(headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Beyond the paper: calibration"),
                              rp.Para("Do the predicted probabilities mean what they say? Reliability diagram of the "
                                      "top-class confidence on out-of-fold predictions, 10 equal-width bins; expected "
                                      "calibration error (ECE) = weighted mean gap between accuracy and confidence.")]
    rows = []
    for rd in headline:
        if rd.oof is None:
            continue
        y, proba = labels_proba(rd.oof, rd.class_names)
        rel = reliability(y, proba)
        path = reliability_png(rel.confidence, rel.accuracy, rel.count, rel.ece,
                               figures / f"calibration-{rd.slug}.png", f"Reliability, {rd.title}")
        rows.append((rd.title, f"{rel.ece:.4f}", len(y)))
        blocks.append(rp.Figure(path, f"Reliability diagram, {rd.title} (ECE {rel.ece:.3f})."))
    if not rows:
        return blocks + none_found("calibration")
    return blocks + [rp.Table(("model", "ECE", "images"), tuple(rows))]


def gradcam_section(headline: list[RunData], figures: Path, per_class: int, say: Callable[[str], None],
                    load_model: Callable[[str], Any]) -> list[rp.Block]:
    """`load_model`: stage run id -> its logged Keras model."""
    blocks: list[rp.Block] = [
        rp.Heading("Beyond the paper: Grad-CAM"),
        rp.Para("Where the model looks: Grad-CAM of the predicted class on the last convolutional feature map of the "
                "backbone, for correct and wrong outer-test images of each class (most confident first).")]
    if per_class <= 0:
        return blocks + [rp.Para("Skipped (--gradcam-per-class 0).")]
    for rd in headline:
        if rd.test is None or not len(rd.test):
            continue
        picks = _gradcam_picks(rd.test, rd.class_names, per_class)
        paths = [row["path"] for _, items in picks for row in items]
        if not paths or not all(Path(p).is_file() for p in paths):
            blocks.append(rp.Para(f"{rd.title}: test images are not readable here; no Grad-CAM."))
            continue
        say(f"Grad-CAM for {rd.title} ({len(paths)} images)")
        path, cam = _gradcam_figure(rd, load_model(rd.run.info.run_id), picks, figures)
        feature_size = cam.feature_size
        caveat = ("" if max(feature_size) > 1 else f" Caution: at {rd.image_size} px the last feature map is 1x1, "
                  "so these maps carry no spatial information; use a larger --image-size.")
        if cam.partial:
            caveat += (" The model averages several parts (fold models, flips or a colour classifier); the maps "
                       "are its first network's, the predictions and probabilities the whole model's.")
        blocks.append(rp.Figure(path, f"Grad-CAM, {rd.title}: rows are true class and outcome; captions give the "
                                      f"prediction and its probability (feature map {feature_size[0]}x"
                                      f"{feature_size[1]}).{caveat}"))
    if len(blocks) == 2:
        blocks += none_found("Grad-CAM overlays")
    return blocks


def _gradcam_picks(test: pd.DataFrame, class_names: list[str], per_class: int) -> list[tuple[str, list[dict]]]:
    frame = test.copy()
    frame["confidence"] = frame[[f"p_{c}" for c in class_names]].max(axis=1)
    picks = []
    for name in class_names:
        of_class = frame[frame["label"] == name].sort_values("confidence", ascending=False)
        for outcome, mask in (("correct", of_class["predicted"] == name), ("wrong", of_class["predicted"] != name)):
            rows = of_class[mask].head(per_class).to_dict("records")
            picks.append((f"{name}: {outcome}", rows))
    return picks


def _gradcam_figure(rd: RunData, model, picks: list[tuple[str, list[dict]]],
                    figures: Path) -> tuple[Path, Any]:
    from mtl_suite.analysis.gradcam import GradCam
    from mtl_suite.data.pipeline import load_image_array

    cam = GradCam(model)
    rows = []
    for label, items in picks:
        if not items:
            rows.append((label, []))
            continue
        images = load_image_array([r["path"] for r in items], rd.image_size)
        heat, _ = cam.heatmaps(images.astype("float32"))
        cells = [(images[i], heat[i], f"{Path(r['path']).name[:22]}\npred {r['predicted']} "
                                      f"{r['p_' + r['predicted']]:.2f}") for i, r in enumerate(items)]
        rows.append((label, cells))
    path = overlay_grid_png(rows, figures / f"gradcam-{rd.slug}.png", f"Grad-CAM, {rd.title} "
                                                                      f"(layer {cam.feature_name})")
    return path, cam

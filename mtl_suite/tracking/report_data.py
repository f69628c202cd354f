"""`mtl-suite report`: read finished stage runs from MLflow and build the paper's tables and figures (Tables II-IV,
Figs. 9-11), a data section, and three checks the paper lacks: calibration, a colour-only shortcut baseline on
the same split, and Grad-CAM overlays. Statistics and drawing live in analysis/; this module only fetches.

Which runs: for every (stage, backbone, task) the newest FINISHED stage run is shown (with how many runs of that
kind exist). The figures follow the "headline" runs: the newest stage-3 (MTL) run per backbone and task, or the
newest classical run where a backbone/task has no stage-3 run."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run

from mtl_suite.analysis import report as rp
from mtl_suite.analysis.calibration import reliability
from mtl_suite.analysis.figures import convergence_png, overlay_grid_png, reliability_png
from mtl_suite.analysis.tables import mean_sd, pct
from mtl_suite.errors import UserError
from mtl_suite.io_utils import write_text_atomic
from mtl_suite.tracking.setup import resolve_tracking_uri
from mtl_suite.training import metrics as m
from mtl_suite.training import plots

CONFIG_LABEL = {"classical": "CTL (1 transfer)", "stage2": "stage 2 (2 transfers)", "stage3": "MTL (3 transfers)"}
TABLE_METRICS = {
    "binary": [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1")],
    "multiclass": [("accuracy", "accuracy"), ("precision_macro", "precision (macro)"),
                   ("recall_macro", "recall (macro)"), ("f1_macro", "F1 (macro)")],
}


@dataclass
class RunData:
    """What the figures need from one stage run (artifacts downloaded once)."""

    run: Run
    class_names: list[str]
    image_size: int
    oof: pd.DataFrame | None
    test: pd.DataFrame | None
    split: dict | None
    dropped_duplicates: int

    @property
    def title(self) -> str:
        t = self.run.data.tags
        return f"{t.get('backbone')} {t.get('task')} {CONFIG_LABEL.get(t.get('stage'), t.get('stage'))}"

    @property
    def slug(self) -> str:
        t = self.run.data.tags
        return f"{t.get('backbone')}-{t.get('task')}-{t.get('stage')}"


def build_report(experiment: str, tracking_uri: str | None, out: Path | None, gradcam_per_class: int = 2,
                 say: Callable[[str], None] = print) -> tuple[Path, Path]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars would interleave with our lines
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"--experiment {experiment!r}: no such experiment in {uri}. Expected one of: "
                        f"{', '.join(names) or '(none)'}")
    out = out or Path("reports") / f"{experiment}-{dt.date.today().isoformat()}"
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'stage' AND attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        t = run.data.tags
        groups[(t.get("stage", ""), t.get("backbone", ""), t.get("task", ""))].append(run)
    say(f"report on experiment {experiment!r}: {len(runs)} finished stage runs in {uri}")
    with tempfile.TemporaryDirectory(prefix="mtl-report-") as tmp:
        headline = [_run_data(client, r, Path(tmp)) for r in _headline_runs(groups)]
        blocks = _header(experiment, uri, runs, out, tracking_uri)
        blocks += _data_section(headline)
        blocks += _metric_table(groups, "binary", "Table II: binary classification (normal vs leukemia)")
        blocks += _metric_table(groups, "multiclass", "Table III: multiclass classification")
        blocks += _confusion_tables(headline)
        blocks += _convergence(client, groups, headline, figures)
        blocks += _roc(headline, figures)
        blocks += _curves(client, headline, figures)
        blocks += _calibration(headline, figures)
        blocks += _shortcut(headline)
        blocks += _gradcam(headline, figures, gradcam_per_class, say)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, rp.to_markdown(blocks, out))
    write_text_atomic(html_path, rp.to_html(blocks, f"mtl-suite report: {experiment}"))
    say(f"report written: {md_path} and {html_path}")
    return md_path, html_path


# --- selection and downloads ------------------------------------------------------------------------------------

def _headline_runs(groups: dict[tuple[str, str, str], list[Run]]) -> list[Run]:
    chosen = {}
    for (stage, backbone, task), runs in sorted(groups.items()):
        if task not in TABLE_METRICS:
            continue
        if stage == "stage3" or (stage == "classical" and ("stage3", backbone, task) not in groups):
            chosen[(backbone, task)] = runs[0]
    return list(chosen.values())


def _run_data(client, run: Run, tmp: Path) -> RunData:
    run_id = run.info.run_id
    folder = tmp / run_id
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for d in ("cv", "test", "data")
                                                                for a in client.list_artifacts(run_id, d)}

    def get(path: str) -> Path | None:
        if path not in names:
            return None
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(folder)))

    info_path = get("model_info.json")
    info = json.loads(info_path.read_text()) if info_path else {}
    class_names = info.get("class_names") or run.data.tags.get("classes", "").split(",")
    oof_path, test_path, split_path = get("cv/oof_predictions.csv"), get("test/predictions.csv"), get("data/split.json")
    dup_path = get("data/dropped_duplicates.txt")
    dropped = len([line for line in dup_path.read_text().splitlines() if line.strip()]) if dup_path else 0
    return RunData(run, class_names, int(info.get("image_size") or run.data.tags.get("image_size", 128)),
                   pd.read_csv(oof_path) if oof_path else None, pd.read_csv(test_path) if test_path else None,
                   json.loads(split_path.read_text()) if split_path else None, dropped)


def _labels_proba(frame: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(class_names)}
    y = frame["label"].map(index).to_numpy(dtype=int)
    proba = frame[[f"p_{c}" for c in class_names]].to_numpy(dtype=float)
    return y, proba


def _none(what: str) -> list[rp.Block]:
    return [rp.Para(f"No finished runs of this kind in the experiment: {what} cannot be shown.")]


# --- sections ---------------------------------------------------------------------------------------------------

def _header(experiment: str, uri: str, runs: list[Run], out: Path, given_uri: str | None) -> list[rp.Block]:
    store = f" --tracking-uri {given_uri}" if given_uri else ""
    return [rp.Heading(f"mtl-suite report: {experiment}", 1),
            rp.Code(f"mtl-suite report --experiment {experiment}{store} --out {out}"),
            rp.Bullets((f"MLflow store: `{uri}`", f"generated {dt.datetime.now().isoformat(timespec='seconds')}",
                        f"{len(runs)} finished stage runs; tables show the newest run of each kind, figures the "
                        "newest stage-3 (MTL) run per backbone and task (classical where there is none)",
                        "Reproduces Maaliw et al. (2022), Tables II-IV and Figs. 9-11, then checks the paper "
                        "lacks: calibration, a colour-only shortcut baseline, Grad-CAM."))]


def _data_section(headline: list[RunData]) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Data")]
    seen = set()
    for rd in headline:
        if rd.split is None:
            continue
        key = (rd.split.get("manifest_digest"), rd.split.get("seed"), rd.run.data.tags.get("task"))
        if key in seen:
            continue
        seen.add(key)
        rows = pd.DataFrame(rd.split["rows"])
        rows["part"] = np.where(rows["role"] == "test", "test", "development")
        counts = rows.groupby(["label", "part"]).size().unstack(fill_value=0)
        table_rows = [(label, int(r.get("development", 0)), int(r.get("test", 0)), int(r.sum()))
                      for label, r in counts.iterrows()]
        table_rows.append(("total", int(counts.get("development", pd.Series(dtype=int)).sum()),
                           int(counts.get("test", pd.Series(dtype=int)).sum()), int(counts.values.sum())))
        params = rd.run.data.params
        folds = sorted(r for r in rows["role"].unique() if r.startswith("fold-"))
        blocks += [
            rp.Table(("class", "development", "outer test", "total"), tuple(table_rows),
                     f"{rd.title}: images per class after deduplication (run `{rd.run.info.run_id[:12]}`)"),
            rp.Bullets((f"source: `{rd.split.get('root')}`; dataset digest {str(rd.split.get('manifest_digest'))[:16]}",
                        f"byte-identical duplicates removed before the split: {rd.dropped_duplicates}",
                        f"split: outer test fraction {rd.split.get('test_fraction')}, {len(folds)} CV fold(s) over "
                        f"the development part, split seed {rd.split.get('seed')}; groups of related images never "
                        f"straddle parts; split digest {rd.run.data.tags.get('split_digest', '')[:16]}",
                        f"augmentation (training folds only): {params.get('train.augment', 'none')}; input "
                        f"{rd.image_size} px; backbone weights {rd.run.data.tags.get('weights', '?')}")),
        ]
    if len(blocks) == 1:
        blocks += _none("the data section")
    return blocks


def _metric_table(groups: dict, task: str, title: str) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading(title)]
    rows = []
    for (stage, backbone, t), runs in sorted(groups.items()):
        if t != task or stage not in ("classical", "stage3"):
            continue
        run = runs[0]
        mt = run.data.metrics
        row = [backbone, CONFIG_LABEL[stage]]
        row += [mean_sd(mt.get(f"cv/{k}_mean"), mt.get(f"cv/{k}_std")) for k, _ in TABLE_METRICS[task]]
        row += [pct(mt.get(f"test/{k}")) for k, _ in TABLE_METRICS[task]]
        row += [len(runs), f"`{run.info.run_id[:12]}`"]
        rows.append(tuple(row))
    if not rows:
        return blocks + _none(f"{task} stage-3 or classical runs, so {title.split(':')[0]}")
    header = ["backbone", "configuration"] + [f"CV {n} (%)" for _, n in TABLE_METRICS[task]] + \
             [f"test {n} (%)" for _, n in TABLE_METRICS[task]] + ["runs of this kind", "run shown"]
    note = ("CV: mean ± sd over folds; test: the outer held-out part after refitting on all development images."
            + (" Binary precision/recall/F1 are for the leukemia class." if task == "binary" else ""))
    return blocks + [rp.Table(tuple(header), tuple(rows)), rp.Para(note)]


def _confusion_tables(headline: list[RunData]) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Table IV: confusion matrices (cross-validation, out-of-fold)")]
    for rd in headline:
        if rd.oof is None:
            continue
        y, proba = _labels_proba(rd.oof, rd.class_names)
        matrix = m.confusion(y, proba, len(rd.class_names))
        totals = matrix.sum(axis=1, keepdims=True)
        percent = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0) * 100
        rows = tuple((name, *(f"{matrix[i, j]} ({percent[i, j]:.1f}%)" for j in range(len(rd.class_names))))
                     for i, name in enumerate(rd.class_names))
        blocks.append(rp.Table(("true \\ predicted", *rd.class_names), rows,
                               f"{rd.title}: counts (row %), run `{rd.run.info.run_id[:12]}`"))
    if len(blocks) == 1:
        blocks += _none("confusion matrices")
    return blocks


def fold_histories(client, stage_run_id: str) -> list[dict[str, list[float]]]:
    """Per CV fold: {'loss', 'val_loss', 'accuracy', 'val_accuracy'} per epoch, from the nested fold runs."""
    run = client.get_run(stage_run_id)
    folds = client.search_runs([run.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{stage_run_id}' AND tags.run_kind = 'fold'")
    histories = []
    for fold in sorted(folds, key=lambda r: r.data.tags.get("fold", "")):
        if not fold.data.tags.get("fold", "").startswith("fold-"):
            continue
        history = {}
        for key, name in (("train/loss", "loss"), ("val/loss", "val_loss"), ("train/accuracy", "accuracy"),
                          ("val/accuracy", "val_accuracy")):
            points = sorted(client.get_metric_history(fold.info.run_id, key), key=lambda p: p.step)
            history[name] = [p.value for p in points]
        histories.append(history)
    return histories


def _mean_series(series: list[list[float]]) -> np.ndarray:
    series = [s for s in series if s]
    if not series:
        return np.zeros(0)
    length = max(len(s) for s in series)
    return np.nanmean(np.array([s + [np.nan] * (length - len(s)) for s in series]), axis=0)


def _convergence(client, groups: dict, headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 9: mean convergence loss per transfer configuration")]
    for task in TABLE_METRICS:
        panels: dict[str, dict[str, np.ndarray]] = {}
        for rd in headline:
            tags = rd.run.data.tags
            if tags.get("task") != task:
                continue
            lines = {}
            classical = groups.get(("classical", tags["backbone"], task))
            stage3 = rd.run if tags.get("stage") == "stage3" else None
            stage2_id = stage3.data.tags.get("parent_stage_run") if stage3 else None
            for label, run_id in (("1 transfer (CTL)", classical[0].info.run_id if classical else None),
                                  ("2 transfers (stage 2, cells)", stage2_id or None),
                                  ("3 transfers (MTL)", stage3.info.run_id if stage3 else None)):
                if run_id:
                    mean = _mean_series([h["loss"] for h in fold_histories(client, run_id)])
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
        blocks += _none("convergence curves")
    return blocks


def _roc(headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 10: ROC per class with micro and macro averages (out-of-fold)")]
    for rd in headline:
        if rd.oof is None:
            continue
        y, proba = _labels_proba(rd.oof, rd.class_names)
        curves = m.roc_curves(y, proba, rd.class_names)
        if not curves:
            continue
        aucs = m.auc_metrics(y, proba, rd.class_names)
        path = plots.roc_png(curves, aucs, figures / f"fig10-roc-{rd.slug}.png", f"ROC, {rd.title}")
        blocks.append(rp.Figure(path, f"Fig. 10, {rd.title}: micro AUC {aucs.get('auc_micro', float('nan')):.3f}, "
                                      f"macro AUC {aucs.get('auc_macro', float('nan')):.3f}."))
    if len(blocks) == 1:
        blocks += _none("ROC curves")
    return blocks


def _curves(client, headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Fig. 11: training and validation loss and accuracy")]
    for rd in headline:
        histories = fold_histories(client, rd.run.info.run_id)
        if not histories:
            continue
        path = plots.curves_png(histories, figures / f"fig11-curves-{rd.slug}.png",
                                f"{rd.title}: mean over folds (band: range)")
        blocks.append(rp.Figure(path, f"Fig. 11, {rd.title}: per-epoch loss and accuracy, mean over "
                                      f"{len(histories)} folds."))
    if len(blocks) == 1:
        blocks += _none("training curves")
    return blocks


def _calibration(headline: list[RunData], figures: Path) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading("Beyond the paper: calibration"),
                              rp.Para("Do the predicted probabilities mean what they say? Reliability diagram of the "
                                      "top-class confidence on out-of-fold predictions, 10 equal-width bins; expected "
                                      "calibration error (ECE) = weighted mean gap between accuracy and confidence.")]
    rows = []
    for rd in headline:
        if rd.oof is None:
            continue
        y, proba = _labels_proba(rd.oof, rd.class_names)
        rel = reliability(y, proba)
        path = reliability_png(rel.confidence, rel.accuracy, rel.count, rel.ece,
                               figures / f"calibration-{rd.slug}.png", f"Reliability, {rd.title}")
        rows.append((rd.title, f"{rel.ece:.4f}", len(y)))
        blocks.append(rp.Figure(path, f"Reliability diagram, {rd.title} (ECE {rel.ece:.3f})."))
    if not rows:
        return blocks + _none("calibration")
    return blocks + [rp.Table(("model", "ECE", "images"), tuple(rows))]


def _shortcut(headline: list[RunData]) -> list[rp.Block]:
    from mtl_suite.analysis.shortcut import features, shortcut_scores

    blocks: list[rp.Block] = [
        rp.Heading("Beyond the paper: shortcut check (colour only)"),
        rp.Para("A logistic regression on per-channel colour histograms (no shape, no cells) trained and scored on "
                "the same split and folds as the CNN. If it comes close to the CNN, the data let a model score by "
                "stain and background, and accuracy overstates what was learnt about cells.")]
    rows = []
    for rd in headline:
        if rd.split is None or rd.oof is None:
            continue
        frame = pd.DataFrame(rd.split["rows"])
        known = pd.concat([rd.oof[["path", "label"]]] + ([rd.test[["path", "label"]]] if rd.test is not None else []))
        task_label = dict(zip(known["path"], known["label"]))
        class_map = {orig: task_label[p] for p, orig in zip(frame["path"], frame["label"]) if p in task_label}
        frame["task_label"] = frame["label"].map(class_map)
        missing = [p for p in frame["path"] if not Path(p).is_file()]
        if missing or frame["task_label"].isna().any():
            rows.append((rd.title, "n/a", "n/a", "n/a", "n/a", f"images not readable here ({len(missing)} missing)"))
            continue
        index = {c: i for i, c in enumerate(rd.class_names)}
        y = frame["task_label"].map(index).to_numpy(dtype=int)
        is_test = (frame["role"] == "test").to_numpy()
        fold = frame["role"].map(lambda r: int(r.split("-")[1]) if str(r).startswith("fold-") else -1).to_numpy()
        x = features(list(frame["path"]))
        s = shortcut_scores(x[~is_test], y[~is_test], fold[~is_test], x[is_test], y[is_test])
        mt = rd.run.data.metrics
        rows.append((rd.title, f"{pct(s.cv_accuracy)} / {pct(mt.get('cv/accuracy_mean'))}",
                     f"{pct(s.cv_f1_macro)} / {pct(mt.get('cv/f1_macro_mean'))}",
                     f"{pct(s.test_accuracy)} / {pct(mt.get('test/accuracy'))}",
                     f"{pct(s.test_f1_macro)} / {pct(mt.get('test/f1_macro'))}", f"{len(frame)} images"))
    if not rows:
        return blocks + _none("the shortcut check")
    return blocks + [rp.Table(("model", "CV accuracy: colour / CNN (%)", "CV macro-F1: colour / CNN (%)",
                               "test accuracy: colour / CNN (%)", "test macro-F1: colour / CNN (%)", "data"),
                              tuple(rows))]


def _gradcam(headline: list[RunData], figures: Path, per_class: int, say) -> list[rp.Block]:
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
        path, feature_size = _gradcam_figure(rd, picks, figures)
        caveat = ("" if max(feature_size) > 1 else f" Caution: at {rd.image_size} px the last feature map is 1x1, "
                  "so these maps carry no spatial information; use a larger --image-size.")
        blocks.append(rp.Figure(path, f"Grad-CAM, {rd.title}: rows are true class and outcome; captions give the "
                                      f"prediction and its probability (feature map {feature_size[0]}x"
                                      f"{feature_size[1]}).{caveat}"))
    if len(blocks) == 2:
        blocks += _none("Grad-CAM overlays")
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


def _gradcam_figure(rd: RunData, picks: list[tuple[str, list[dict]]], figures: Path) -> tuple[Path, tuple[int, int]]:
    import mlflow.keras

    from mtl_suite.analysis.gradcam import GradCam
    from mtl_suite.data.pipeline import load_image_array

    model = mlflow.keras.load_model(f"runs:/{rd.run.info.run_id}/model", load_model_kwargs={"safe_mode": True})
    cam = GradCam(model)
    rows = []
    for label, items in picks:
        if not items:
            rows.append((label, []))
            continue
        images = load_image_array([r["path"] for r in items], rd.image_size)
        heat, proba = cam.heatmaps(images.astype("float32"))
        cells = [(images[i], heat[i], f"{Path(r['path']).name[:22]}\npred {r['predicted']} "
                                      f"{proba[i].max():.2f}") for i, r in enumerate(items)]
        rows.append((label, cells))
    path = overlay_grid_png(rows, figures / f"gradcam-{rd.slug}.png", f"Grad-CAM, {rd.title} "
                                                                      f"(layer {cam.feature_name})")
    return path, cam.feature_size

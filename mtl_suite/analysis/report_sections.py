"""The `mtl-suite report` sections that are text and tables: header, data, Tables I-IV (Table IV and the per-class
sensitivity and specificity on the out-of-fold and the outer test predictions) and the colour shortcut check, as
report blocks (analysis/report.py renders them). The figure sections are in report_figures.py; what they
read from MLflow arrives as `RunData`, fetched by tracking/report_queries.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mtl_suite.analysis import report as rp
from mtl_suite.analysis.comparison_report import ARIA_CLASSES
from mtl_suite.analysis.intervals import accuracy_context
from mtl_suite.analysis.machine import code_description
from mtl_suite.analysis.tables import mean_sd, pct
from mtl_suite.catalog import ARM_STAGES, STAGES, LookTag, StageData, Task, get_stage
from mtl_suite.data.looks import earlier_text
from mtl_suite.training import metrics as m

if TYPE_CHECKING:
    from mlflow.entities import Run

TABLE_METRICS = {
    Task.BINARY: [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1")],
    Task.MULTICLASS: [("accuracy", "accuracy"), ("precision_macro", "precision (macro)"),
                      ("recall_macro", "recall (macro)"), ("f1_macro", "F1 (macro)")],
}
ACCURACY, TEST = "accuracy", "test/"
# The outer test table's specificity: of the leukemia class for binary tasks, the mean over classes otherwise.
SPECIFICITY_COLUMN = {Task.BINARY: (m.SPECIFICITY, "specificity"),
                      Task.MULTICLASS: (f"{m.SPECIFICITY}_macro", "specificity (macro)")}
OOF_PART, TEST_PART = "cross-validation, out-of-fold", "outer test part"  # the two sets of logged predictions
# Table I: header, then the logged params it shows (config_params' dotted keys, tracking/runs.py), joined by " / "
HYPERPARAMETERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("warm-up / fine-tune epochs", ("train.warmup_epochs", "train.finetune_epochs")),
    ("batch size", ("train.batch_size",)),
    ("learning rate: warm-up / fine-tune", ("train.learning_rate", "train.finetune_learning_rate")),
    ("lr decay per epoch", ("train.decay_rate",)),
    ("dense units", ("train.dense_units",)),
    ("dropout", ("train.dropout",)),
    ("unfrozen top layers", ("train.unfreeze_layers",)),
    ("augmentation / mode", ("train.augment", "train.augment_mode")),
    ("stain control", ("train.stain",)),
    ("backbone weights", ("train.weights",)),
)
MAX_CODES = 5  # distinct run commits named in the header; more are counted
IMAGE_SIZE_PARAM = "data.image_size"  # None in a config means "the backbone's own size": the run's tag has the size


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
        stage = t.get("stage")
        return f"{t.get('backbone')} {t.get('task')} {STAGES[stage].label if stage in STAGES else stage}"

    @property
    def slug(self) -> str:
        t = self.run.data.tags
        return f"{t.get('backbone')}-{t.get('task')}-{t.get('stage')}"


def labels_proba(frame: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(class_names)}
    y = frame["label"].map(index).to_numpy(dtype=int)
    proba = frame[[f"p_{c}" for c in class_names]].to_numpy(dtype=float)
    return y, proba


def none_found(what: str) -> list[rp.Block]:
    return [rp.Para(f"No finished runs of this kind in the experiment: {what} cannot be shown.")]


def report_header(experiment: str, uri: str, runs: list[Run], out: Path, given_uri: str | None,
                  comparisons: tuple[str, ...] = (), commit: str = "") -> list[rp.Block]:
    """`commit`: the report's own code (tracking/runs.py:git_commit); the runs' code comes from their tags."""
    store = f" --tracking-uri {given_uri}" if given_uri else ""
    only = "".join(f" --comparison {c}" for c in comparisons)
    scope = f" of comparison run(s) {', '.join(f'`{c}`' for c in comparisons)}" if comparisons else ""
    return [rp.Heading(f"mtl-suite report: {experiment}", 1),
            rp.Code(f"mtl-suite report --experiment {experiment}{store}{only} --out {out}"),
            rp.Bullets((f"MLflow store: `{uri}`", f"generated {dt.datetime.now().isoformat(timespec='seconds')}",
                        code_line(commit, runs),
                        f"{len(runs)} finished stage runs{scope}; tables show the newest run of each kind, figures the "
                        "newest stage-3 (MTL) run per backbone and task (classical where there is none)",
                        "Reproduces Maaliw et al. (2022), Tables I-IV and Figs. 9-11, then checks the paper "
                        "lacks: calibration, a colour-only shortcut baseline, Grad-CAM."))]


def code_line(commit: str, runs: list[Run]) -> str:
    """The report's code and the code each run recorded (its `git_commit` tag), so a reader can check both out."""
    counts: dict[str, int] = {}
    for run in runs:
        described = code_description(run.data.tags.get("git_commit", ""))
        counts[described] = counts.get(described, 0) + 1
    shown = [f"{words} ({n} run{'' if n == 1 else 's'})" for words, n in sorted(counts.items())[:MAX_CODES]]
    more = f", and {len(counts) - MAX_CODES} more" if len(counts) > MAX_CODES else ""
    return (f"code: this report {code_description(commit)}; the runs' code: {', '.join(shown) or 'no runs'}"
            f"{more}")


def data_section(headline: list[RunData]) -> list[rp.Block]:
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
                        f"{rd.image_size} px; backbone weights {rd.run.data.tags.get('weights', '?')}",
                        *_looks_bullet(rd.run))),
        ]
    if len(blocks) == 1:
        return blocks + none_found("the data section")
    return blocks + labels_note(headline)


def _looks_bullet(run: Run) -> tuple[str, ...]:
    """How many configurations had scored the run's outer test part before it (the ledger's count, as the run
    recorded it); nothing for a run from before the ledger."""
    earlier = run.data.tags.get(LookTag.EARLIER, "")
    if not earlier.isdigit():
        return ()
    return (f"looks: {earlier_text(int(earlier))} before run `{run.info.run_id[:12]}` (test part digest "
            f"{run.data.tags.get(LookTag.PART, '')[:16]}; `mtl-suite data looks` lists them)",)


def labels_note(headline: list[RunData]) -> list[rp.Block]:
    """What the classes are, beside the paper's: the Aria data stand in for ALL-IDB, with other labels."""
    labels = {str(row["label"]) for rd in headline if rd.split for row in rd.split["rows"]}
    fab = "not the paper's FAB classes Normal, L1, L2, L3"
    allidb = ("the suite reads a licensed local copy (layout `allidb`: ALL-IDB1 `ImNNN_L.jpg` smear fields, ALL-IDB2 "
              "`ImNNN_L.tif` single cells), whose file names give blast (L = 1) or normal (L = 0) only")
    if not labels or not labels <= ARIA_CLASSES:  # a subset of Aria's classes is still the Aria data
        return [rp.Para(f"Labels: the data's own classes ({', '.join(sorted(labels))}), {fab}; for ALL-IDB, "
                        f"{allidb}.")]
    return [rp.Para(
        "Labels: these images come from the \"Acute Lymphoblastic Leukemia (ALL) image dataset\" of Aria, "
        "Ghaderzadeh, Bashash et al. (Taleqani Hospital, Tehran, 2021; CC BY 4.0). Its 4 classes are B-lineage "
        "development stages, `Benign` (hematogones) and the malignant `Early` (early pre-B ALL), `Pre` (pre-B) and "
        f"`Pro` (pro-B), {fab}: the binary task here is Benign vs the three malignant stages, and the multiclass "
        "scores cannot be compared with the paper's Table III. The paper's data, ALL-IDB, is not shipped (it needs a "
        f"signed licence from its owners and may not be redistributed); {allidb}.")]


def metric_table(groups: dict, task: Task, title: str) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading(title)]
    rows = []
    for (stage, backbone, t), runs in sorted(groups.items()):
        if t != task or stage not in ARM_STAGES:
            continue
        run = runs[0]
        mt = run.data.metrics
        row = [backbone, get_stage(stage).label]
        row += [mean_sd(mt.get(f"cv/{k}_mean"), mt.get(f"cv/{k}_std")) for k, _ in TABLE_METRICS[task]]
        row += [pct(mt.get(f"test/{k}")) for k, _ in TABLE_METRICS[task]]
        row += [len(runs), f"`{run.info.run_id[:12]}`"]
        rows.append(tuple(row))
    if not rows:
        return blocks + none_found(f"{task} stage-3 or classical runs, so {title.split(':')[0]}")
    header = ["backbone", "configuration"] + [f"CV {n} (%)" for _, n in TABLE_METRICS[task]] + \
             [f"test {n} (%)" for _, n in TABLE_METRICS[task]] + ["runs of this kind", "run shown"]
    note = ("CV: mean ± sd over folds; test: the outer held-out part after refitting on all development images."
            + (" Binary precision/recall/F1 are for the leukemia class." if task == Task.BINARY else ""))
    return blocks + [rp.Table(tuple(header), tuple(rows)), rp.Para(note)]


def test_metric_table(groups: dict, task: Task, title: str) -> list[rp.Block]:
    """Tables II-III's runs scored once on the outer test part, with how many images that is, the 95% interval
    of the accuracy (on a test part of a few dozen images one image moves the accuracy by points) and how many other
    configurations had scored the same test part before the run (a figure chosen among many looks is optimistic)."""
    blocks: list[rp.Block] = [rp.Heading(title)]
    columns = [c for c in TABLE_METRICS[task] if c[0] != ACCURACY] + [SPECIFICITY_COLUMN[task]]
    rows = []
    for (stage, backbone, t), runs in sorted(groups.items()):
        mt = runs[0].data.metrics
        if t != task or stage not in ARM_STAGES or f"{TEST}{ACCURACY}" not in mt:
            continue
        n = mt.get(f"{TEST}n")
        rows.append((backbone, get_stage(stage).label, "n/a" if n is None else int(n), _accuracy_interval(mt),
                     pct(mt.get(f"{TEST}majority_class_accuracy")), *(pct(mt.get(f"{TEST}{k}")) for k, _ in columns),
                     runs[0].data.tags.get(LookTag.EARLIER, "n/a"), f"`{runs[0].info.run_id[:12]}`"))
    if not rows:
        return blocks + none_found(f"{task} stage-3 or classical runs with a test part, so this table")
    header = ("backbone", "configuration", "n", "accuracy [95% CI] (%)", "majority class (%)",
              *(f"{name} (%)" for _, name in columns), "earlier configurations", "run shown")
    note = ("Outer test part, scored once after refitting on all development images. 95% CI: Wilson score interval "
            "over the n images; majority class: the accuracy of always predicting the part's most frequent class. "
            "Earlier configurations: this test part had been scored by that many other configurations (models) "
            "before the run, in any experiment of the store (`mtl-suite data looks` lists them); a figure picked "
            "among many looks is optimistic. n/a: the run logged no such metric or count (older runs)."
            + (" Binary scores are for the leukemia class; specificity is the share of normal images called normal."
               if task == Task.BINARY else ""))
    return blocks + [rp.Table(header, tuple(rows)), rp.Para(note)]


def _accuracy_interval(metrics: dict[str, float]) -> str:
    accuracy = pct(metrics.get(f"{TEST}{ACCURACY}"))
    low, high = metrics.get(f"{TEST}accuracy_ci_low"), metrics.get(f"{TEST}accuracy_ci_high")
    return accuracy if low is None or high is None else f"{accuracy} [{pct(low)}, {pct(high)}]"


def hyperparameter_table(groups: dict) -> list[rp.Block]:
    """Table I from what the runs used: each stage's logged params (newest run of each kind), not the paper's."""
    blocks: list[rp.Block] = [rp.Heading("Table I: hyper-parameters per stage (as logged by the runs)")]
    order = list(STAGES)
    chosen = sorted(((backbone, task, order.index(stage)), runs[0]) for (stage, backbone, task), runs in groups.items()
                    if stage in STAGES and _trained(stage, task))
    rows = tuple(_hyperparameter_row(run) for _, run in chosen)
    if not rows:
        return blocks + none_found("trained stage runs, so Table I")
    header = ("backbone", "configuration", "task", "image size (px)", "optimiser",
              *(name for name, _ in HYPERPARAMETERS), "run shown")
    note = ("Read from each run's MLflow params (`train.*`, `data.*`). The optimiser is not a parameter: "
            "training/fit.py always uses Adam with the learning rate decayed exponentially per epoch.")
    return blocks + [rp.Table(header, rows), rp.Para(note)]


def _trained(stage: str, task: str) -> bool:
    """Stage 1 without a source dataset only loads ImageNet weights: no training used its params."""
    plan = get_stage(stage)
    return plan.data is not StageData.SOURCE or task == plan.run_task(Task.BINARY, has_source=True)


def _hyperparameter_row(run: Run) -> tuple[str, ...]:
    params, tags = run.data.params, run.data.tags
    size = tags.get("image_size") or params.get(IMAGE_SIZE_PARAM, "n/a")
    return (tags.get("backbone", ""), get_stage(tags["stage"]).label, tags.get("task", ""), size, "Adam",
            *(" / ".join(params.get(k, "n/a") for k in keys) for _, keys in HYPERPARAMETERS),
            f"`{run.info.run_id[:12]}`")


def _part(rd: RunData, part: str) -> pd.DataFrame | None:
    return rd.oof if part == OOF_PART else rd.test


def confusion_tables(headline: list[RunData], part: str = OOF_PART) -> list[rp.Block]:
    blocks: list[rp.Block] = [rp.Heading(f"Table IV: confusion matrices ({part})")]
    for rd in headline:
        frame = _part(rd, part)
        if frame is None:
            continue
        y, proba = labels_proba(frame, rd.class_names)
        matrix = m.confusion(y, proba, len(rd.class_names))
        totals = matrix.sum(axis=1, keepdims=True)
        percent = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0) * 100
        rows = tuple((name, *(f"{matrix[i, j]} ({percent[i, j]:.1f}%)" for j in range(len(rd.class_names))))
                     for i, name in enumerate(rd.class_names))
        accuracy = accuracy_context(y, proba.argmax(axis=1)).text()
        blocks.append(rp.Table(("true \\ predicted", *rd.class_names), rows,
                               f"{rd.title}: counts (row %); accuracy {accuracy}; run `{rd.run.info.run_id[:12]}`"))
    if len(blocks) == 1:
        blocks += none_found(f"confusion matrices ({part})")
    return blocks


def rate_tables(headline: list[RunData]) -> list[rp.Block]:
    """Sensitivity and specificity per class, one-vs-rest, on both sets of predictions. Computed from the logged
    predictions, so runs from before these metrics were logged get them too; the test part falls back to the
    logged `test/sensitivity/<class>` where a run has no test predictions."""
    blocks: list[rp.Block] = [rp.Heading("Sensitivity and specificity per class (one-vs-rest)")]
    parts = (OOF_PART, TEST_PART)
    for rd in headline:
        scored = {part: _part_rates(rd, part) for part in parts}
        if not any(values for values, _ in scored.values()):
            continue
        rows = tuple((name, *(cell for part in parts for cell in _rate_cells(scored[part], name)))
                     for name in rd.class_names)
        header = ("class", *(f"{'CV' if part == OOF_PART else 'test'} {what}" for part in parts
                             for what in ("n", "sensitivity (%)", "specificity (%)")))
        blocks.append(rp.Table(header, rows, f"{rd.title}, run `{rd.run.info.run_id[:12]}`"))
    if len(blocks) == 1:
        return blocks + none_found("per-class sensitivity and specificity")
    return blocks + [rp.Para("Sensitivity: TP / (TP + FN), the share of a class's images called that class (its "
                             "recall). Specificity: TN / (TN + FP), the share of the other classes' images not "
                             "called that class. n: the class's images in that part; n/a: not in that part, or "
                             "read from logged metrics without counts. CV: out-of-fold predictions over all folds.")]


PartRates = tuple[dict[str, float], dict[str, int]]  # rate_metrics() keys, true images per class (empty: unknown)


def _part_rates(rd: RunData, part: str) -> PartRates:
    frame = _part(rd, part)
    if frame is not None:
        y, proba = labels_proba(frame, rd.class_names)
        counts = {name: int((y == k).sum()) for k, name in enumerate(rd.class_names)}
        return m.rate_metrics(m.confusion(y, proba, len(rd.class_names)), rd.class_names), counts
    if part == OOF_PART:
        return {}, {}
    prefixes = tuple(f"{TEST}{key}/" for key in (m.SENSITIVITY, m.SPECIFICITY))
    return {k[len(TEST):]: v for k, v in rd.run.data.metrics.items() if k.startswith(prefixes)}, {}


def _rate_cells(scored: PartRates, name: str) -> tuple[object, str, str]:
    values, counts = scored
    return (counts.get(name, "n/a"), pct(values.get(f"{m.SENSITIVITY}/{name}")),
            pct(values.get(f"{m.SPECIFICITY}/{name}")))


def shortcut_section(headline: list[RunData]) -> list[rp.Block]:
    from mtl_suite.analysis.shortcut import VARIANTS

    blocks: list[rp.Block] = [
        rp.Heading("Beyond the paper: shortcut check (colour only)"),
        rp.Para("Logistic regressions on colour features alone (no shape, no cells): RGB histograms at 8, 16 and 32 "
                "bins per channel, per-channel colour and intensity statistics (mean, sd, percentiles), and the "
                "32-bin histogram with the statistics. Each is trained and scored on the same split and folds as "
                "the CNN (CV: mean over folds; test: refit on the development part); the best by CV accuracy is "
                "shown beside the CNN. If it comes close to or beats the CNN, the data let a model score by stain "
                "and background, and accuracy overstates what was learnt about cells. Under stain shifts: the "
                "outer test part re-stained with three fixed shifts (darker and lighter HED stain, a hue/saturation "
                "shift), one per third of the images; a model that reads cells keeps its accuracy there.")]
    rows, variant_rows = [], []
    for rd in headline:
        mt = rd.run.data.metrics
        scores = _logged_shortcut(rd) if "shortcut/best/cv_accuracy" in mt else _recomputed_shortcut(rd)
        if isinstance(scores, str):
            rows.append((rd.title, "n/a", "n/a", "n/a", "n/a", scores))
            continue
        best, by_variant, source = scores
        colour = by_variant[best]
        rows.append((rd.title, f"{pct(colour.get('cv_accuracy'))} / {pct(mt.get('cv/accuracy_mean'))}",
                     f"{pct(colour.get('test_accuracy'))} / {pct(mt.get('test/accuracy'))}",
                     f"{pct(mt.get('robustness/shortcut_stain_shift_accuracy'))} / "
                     f"{pct(mt.get('robustness/stain_shift_accuracy'))}",
                     f"{best} ({VARIANTS[best].description})" if best in VARIANTS else best, source))
        variant_rows += [(rd.title, name, pct(v.get("cv_accuracy")), pct(v.get("test_accuracy")))
                         for name, v in by_variant.items()]
    if not rows:
        return blocks + none_found("the shortcut check")
    return blocks + [
        rp.Table(("model", "CV accuracy: colour / CNN (%)", "test accuracy: colour / CNN (%)",
                  "under stain shifts: colour / CNN (%)", "best colour model", "source"), tuple(rows)),
        rp.Table(("model", "colour baseline", "CV accuracy (%)", "test accuracy (%)"), tuple(variant_rows),
                 "Every colour baseline on each run's split"),
        *_as_binary_table(headline),
    ]


def _as_binary_table(headline: list[RunData]) -> list[rp.Block]:
    """Multiclass runs read as normal vs leukemia (`*/as_binary/*`, logged where the data has a normal class)."""
    rows = []
    for rd in headline:
        mt = rd.run.data.metrics
        if "test/as_binary/accuracy" not in mt and "cv/as_binary/accuracy_mean" not in mt:
            continue
        colour = {k: mt.get(f"shortcut/best/as_binary/{k}") for k in ("cv_accuracy", "test_accuracy")}
        rows.append((rd.title, f"{pct(colour['cv_accuracy'])} / {pct(mt.get('cv/as_binary/accuracy_mean'))}",
                     f"{pct(colour['test_accuracy'])} / {pct(mt.get('test/as_binary/accuracy'))}",
                     f"{pct(mt.get('test/as_binary/sensitivity'))} / {pct(mt.get('test/as_binary/specificity'))}"))
    if not rows:
        return []
    return [rp.Table(("model", "CV accuracy: colour / CNN (%)", "test accuracy: colour / CNN (%)",
                      "CNN test sensitivity / specificity (%)"), tuple(rows),
                     "Read as normal vs leukemia: a multiclass model's calls (and colour alone's) grouped as the "
                     "normal class against every leukemia class")]


def reliability_section(headline: list[RunData]) -> list[rp.Block]:
    """What each final model says about images unlike its training images, and how it reads other labs' images:
    the test part's flags and prediction sets, the development-side shifts (cross-validation folds' validation
    images re-stained and magnified), and the external images of one known class (`--external`), beside the
    in-lab test accuracy and colour alone."""
    blocks: list[rp.Block] = [
        rp.Heading("Beyond the paper: images unlike the training images, and other labs"),
        rp.Para("Every final model carries an out-of-distribution detector (Mahalanobis distance in frozen ImageNet "
                "MobileNet features, thresholded so that about 1.5% of held-out development images are flagged) "
                "and split-conformal prediction sets calibrated on its out-of-fold predictions. A flag never "
                "changes the class. Development-side shifts: each fold's validation images re-stained, and "
                "magnified 2.5 times (another lab's objective). External: images from "
                "another lab that are all of one class, scored once by the final model; never trained, tuned or "
                "thresholded on.")]
    rows, external_rows = [], []
    for rd in headline:
        mt = rd.run.data.metrics
        if "test/ood/flagged_share" not in mt and "cv/shift/magnified_accuracy_mean" not in mt:
            continue
        rows.append((rd.title, pct(mt.get("test/accuracy")), pct(mt.get("test/ood/flagged_share")),
                     pct(mt.get("test/ood/unflagged_accuracy")),
                     f"{pct(mt.get('test/conformal_99/coverage'))} ({_size(mt.get('test/conformal_99/mean_size'))})",
                     pct(mt.get("robustness/stain_shift_flagged_share")),
                     pct(mt.get("cv/shift/stain_accuracy_mean")), pct(mt.get("cv/shift/magnified_accuracy_mean"))))
        if "external/called_expected_share" in mt:
            tags = rd.run.data.tags
            external_rows.append((rd.title, tags.get("external_data", "?"), f"{int(mt.get('external/n', 0))}",
                                  tags.get("external_class", "?"), pct(mt.get("test/accuracy")),
                                  pct(mt.get("shortcut/best/test_accuracy")),
                                  pct(mt.get("external/called_expected_share")),
                                  pct(mt.get("external/colour_called_expected_share")),
                                  pct(mt.get("external/flagged_share")),
                                  pct(mt.get("external/confident_wrong_share"))))
    if not rows:
        return blocks + none_found("a final model with an out-of-distribution detector")
    blocks.append(rp.Table(("model", "test accuracy (%)", "test flagged (%)", "accuracy unflagged (%)",
                            "99% sets: coverage (%) (mean size)", "re-stained test flagged (%)",
                            "CV re-stained accuracy (%)", "CV magnified 2.5x accuracy (%)"),
                           tuple(rows)))
    if external_rows:
        blocks.append(rp.Table(("model", "external images", "n", "all of class", "in-lab test accuracy (%)",
                                "colour alone, in-lab test (%)", "called that class (%)",
                                "colour alone called it (%)", "flagged (%)", "called otherwise, unflagged (%)"),
                               tuple(external_rows), "Another lab's images"))
    return blocks


def _size(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


ShortcutScores = tuple[str, dict[str, dict[str, float]], str]  # best variant, {variant: {score: value}}, source


def _logged_shortcut(rd: RunData) -> ShortcutScores:
    """What the stage run logged (`shortcut/<variant>/<score>`, tag `shortcut/best_variant`)."""
    by_variant: dict[str, dict[str, float]] = {}
    for key, value in rd.run.data.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "shortcut" and parts[1] != "best":
            by_variant.setdefault(parts[1], {})[parts[2]] = value
    best = rd.run.data.tags.get("shortcut/best_variant", "")
    if best not in by_variant:  # a run without the tag: the best by CV accuracy, as the stage chose it
        best = max(by_variant, key=lambda n: by_variant[n].get("cv_accuracy", -1.0))
    return best, by_variant, "logged by the stage run"


def _recomputed_shortcut(rd: RunData) -> ShortcutScores | str:
    """For a run logged before the check existed: recomputed from its split's images on disk (or why not)."""
    from mtl_suite.analysis.shortcut import shortcut_check
    from mtl_suite.data.images import read_resized

    if rd.split is None or rd.oof is None:
        return "no split or predictions logged"
    frame = pd.DataFrame(rd.split["rows"])
    known = pd.concat([rd.oof[["path", "label"]]] + ([rd.test[["path", "label"]]] if rd.test is not None else []))
    task_label = dict(zip(known["path"], known["label"]))
    class_map = {orig: task_label[p] for p, orig in zip(frame["path"], frame["label"]) if p in task_label}
    frame["task_label"] = frame["label"].map(class_map)
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing or frame["task_label"].isna().any():
        return f"images not readable here ({len(missing)} missing)"
    index = {c: i for i, c in enumerate(rd.class_names)}
    y = frame["task_label"].map(index).to_numpy(dtype=int)
    roles = frame["role"].astype(str).to_numpy()
    test = np.flatnonzero(roles == "test")
    development = np.flatnonzero(roles != "test")
    fold_names = sorted({r for r in roles if r.startswith("fold-")})
    folds = [(development[roles[development] != name], np.flatnonzero(roles == name)) for name in fold_names]
    images = np.stack([read_resized(p, rd.image_size) for p in frame["path"]])
    check = shortcut_check(images, y, folds, development, test)
    by_variant = {name: {"cv_accuracy": s.cv_accuracy, "test_accuracy": s.test_accuracy}
                  for name, s in check.scores.items()}
    return check.best, by_variant, f"recomputed here from {len(frame)} images"

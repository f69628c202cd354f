"""The comparison's report: the paper's Table V (one row per paired run) and the Markdown that `mtl-suite compare`
writes under reports/ and logs to the comparison run. Text only: the statistics come in computed
(analysis/compare.py), the provenance (commit, dataset digests) comes in read from MLflow by the caller."""

from __future__ import annotations

import datetime as dt
import math
from typing import Sequence

import pandas as pd

from mtl_suite.analysis import compare as stats
from mtl_suite.analysis.machine import code_description, machine_description
from mtl_suite.analysis.tables import markdown_table
from mtl_suite.catalog import Arm, CompareRequest, Pair, arm_stage
from mtl_suite.config import TrainConfig

METRICS = ("accuracy", "f1_macro")  # the test metrics both arms are compared on (Table V's columns)
ACCURACY = METRICS[0]
# a pair's checks beside its scores (Pair.checks: arm -> key -> value, nan where an older run logged none)
COLOUR = "colour_accuracy"  # the best colour-only baseline on the outer test part (read from the CTL run)
STAIN_SHIFT = "stain_shift_accuracy"  # an arm's CNN on the re-stained test part
COLOUR_STAIN_SHIFT = "colour_stain_shift_accuracy"  # the colour baseline on the re-stained test part (CTL run)
CHECKS = (COLOUR, STAIN_SHIFT, COLOUR_STAIN_SHIFT)
# the Aria data's classes (B-ALL development stages), which stand in for the paper's FAB classes
ARIA_CLASSES = frozenset({"Benign", "Early", "Pre", "Pro"})
_ARM_STAGE = {arm: arm_stage(arm).name for arm in Arm}  # the stage whose run is the arm's result
PREDICTIONS_SUFFIX = "-predictions.csv"  # beside the report: <report stem>-predictions.csv
CONFIG_SUFFIX = "-config.yaml"  # beside the report: a copy of the --config file


def table_v(pairs: list[Pair]) -> pd.DataFrame:
    """The paper's Table V: one row per run, test accuracy of CTL and MTL (here with macro-F1 beside it)."""
    rows = []
    for p in pairs:
        row = {"run": p.index + 1, "seed": p.seed, "split_seed": p.data_seed}
        for arm in Arm:
            for m in METRICS:
                row[f"{arm}_{m}"] = p.metrics.get(arm, {}).get(m, math.nan)
            row[f"{arm}_{STAIN_SHIFT}"] = _check(p, arm, STAIN_SHIFT)
        row[COLOUR] = _check(p, Arm.CTL, COLOUR)
        row[COLOUR_STAIN_SHIFT] = _check(p, Arm.CTL, COLOUR_STAIN_SHIFT)
        row["status"] = "excluded: " + p.excluded if p.excluded else "used"
        rows.append(row)
    return pd.DataFrame(rows)


def render_report(request: CompareRequest, pairs: list[Pair], comparisons: dict[str, stats.Comparison],
                  ratio: float, table: pd.DataFrame, plot_name: str, parent: str, uri: str,
                  experiment_id: str, *, dataset_digests: Sequence[str], commit: str,
                  config_copy: tuple[str, str] | None = None, predictions: tuple[str, int] | None = None) -> str:
    """`dataset_digests`: the used pairs' dataset digests (one, when all pairs read the same data). `config_copy`:
    the copy of --config's file beside the report and its sha256; `predictions`: the per-image predictions CSV
    beside the report and how many of the pairs' arms logged predictions."""
    cfg = request.config
    used = [p for p in pairs if not p.excluded]
    digests = sorted(set(dataset_digests) - {""})
    lines = [f"# CTL vs MTL: {cfg.train.backbone}, {request.task} task", "",
             "Made by:", "", "```", request.command or "mtl-suite compare", "```", "",
             f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}; code: {code_description(commit)}",
             config_line(request, config_copy),
             predictions_line(predictions),
             f"- Machine: {machine_description()}",
             f"- MLflow: `{uri}`, experiment id {experiment_id}, comparison run `{parent}`",
             f"- Data: `{cfg.data.path or 'bundled sample'}`, dataset digest "
             f"{', '.join(d[:16] for d in digests) or 'n/a'}; {cfg.data.image_size} px; outer test fraction "
             f"{cfg.data.test_fraction}; {cfg.data.folds} CV folds per run; n_test / n_train = {ratio:.3f}",
             _labels_line(pairs),
             budget_line(cfg.train, request.study),
             "- Protocol: pair i trains both arms with seed base+i on the same split (split seed base+i; the split "
             "digests of the two arms are checked to be equal). CTL = ImageNet -> task. MTL = ImageNet -> stage 2 "
             "(single-cell crops of the same split's development images only; re-run per pair) -> stage 3 with the "
             "same budget as CTL. Scores are on the outer test part of each split, after refitting on all "
             "development images.", "",
             "## Verdict", ""]
    if comparisons:
        lines += [f"- {c.verdict}" for c in comparisons.values()]
        lines += [f"- {error_line(comparisons[ACCURACY])}"] if ACCURACY in comparisons else []
    else:
        lines.append(f"- No verdict: only {len(used)} of {len(pairs)} pairs finished both arms; a t-test needs 2.")
    if used:
        lines += [f"- {colour_line(used)}", f"- {stain_shift_line(used)}", f"- {time_line(used)}"]
    lines += ["", "The verdict uses the Nadeau-Bengio corrected resampled t-test: the runs reuse one data set, so "
              "their differences are correlated and the plain paired t-test overstates significance.", "",
              "## Table V: test scores per run (%)", ""]
    rows = []
    for _, r in table.iterrows():
        rows.append([int(r["run"]), int(r["seed"]), _pct(r["ctl_accuracy"]), _pct(r["mtl_accuracy"]),
                     _pct(r["mtl_accuracy"] - r["ctl_accuracy"]), _pct(r[COLOUR]), _pct(r["ctl_f1_macro"]),
                     _pct(r["mtl_f1_macro"]), r["status"]])
    lines.append(markdown_table(["run", "seed", "CTL accuracy", "MTL accuracy", "MTL - CTL", "colour alone",
                                 "CTL macro-F1",
                                 "MTL macro-F1", "status"], rows))
    if comparisons:
        lines += ["## Statistics (MTL - CTL, percentage points)", ""]
        srows = []
        for c in comparisons.values():
            srows.append([c.metric, f"{100 * c.ctl.mean:.2f} ± {100 * c.ctl.std:.2f}",
                          f"{100 * c.mtl.mean:.2f} ± {100 * c.mtl.std:.2f}", f"{100 * c.mean_difference:+.2f}",
                          f"[{100 * c.ci95[0]:+.2f}, {100 * c.ci95[1]:+.2f}]",
                          f"[{100 * c.ci95_corrected[0]:+.2f}, {100 * c.ci95_corrected[1]:+.2f}]",
                          _test(c.paired), _test(c.welch), _test(c.pooled), _test(c.corrected),
                          f"{c.cohens_d:.2f}", _reduction(c.error_reduction)])
        lines.append(markdown_table(["metric", "CTL mean ± sd", "MTL mean ± sd", "difference", "95% CI (paired)",
                                     "95% CI (corrected)", "paired t", "Welch t", "pooled t (paper's test)",
                                     "corrected t (Nadeau-Bengio)", "Cohen's d_z", "error-rate reduction"], srows))
        lines.append(f"n = {len(used)} pairs; corrected test uses n_test / n_train = {ratio:.3f}. "
                     "All values computed by scipy from the runs above. Error-rate reduction: (err_CTL - err_MTL) / "
                     "err_CTL with err = 1 - mean score; positive = MTL makes fewer errors.\n")
        lines.append(paper_sentence() + "\n")
    failed = [p for p in pairs if p.excluded]
    lines += ["## Failed or excluded pairs", ""]
    lines += [f"- run {p.index + 1} (seed {p.seed}): {p.excluded}" for p in failed] or ["- none"]
    lines += ["", "## Figure", "", f"![CTL vs MTL per run]({plot_name})", "",
              "Boxes: per-arm distribution; dots: runs; grey lines join the two arms of a pair.", "",
              "## Runs", ""]
    lines += [f"- run {p.index + 1}: " + ", ".join(f"{k} `{v}`" for k, v in sorted(p.runs.items())) for p in pairs]
    return "\n".join(lines) + "\n"


def config_line(request: CompareRequest, copy: tuple[str, str] | None) -> str:
    """Which experiment file the command read, and where its copy is: the path in the command may not outlive it."""
    if request.config_file is None:
        return "- Config file: none (the defaults and the options in the command)"
    if copy is None:
        return f"- Config file: `{request.config_file}` (not copied beside this report)"
    name, digest = copy
    return f"- Config file: `{request.config_file}`, copied beside this report as `{name}` (sha256 {digest[:16]})"


def predictions_line(predictions: tuple[str, int] | None) -> str:
    """Where a reader finds every test image's probabilities, to recompute the scores and tests without the store."""
    if predictions is None:
        return "- Per-image predictions: none (no arm run logged test/predictions.csv)"
    name, arms = predictions
    return (f"- Per-image predictions: `{name}` ({arms} arm run{'' if arms == 1 else 's'}: pair, arm, run, file "
            "sha256, label and class probabilities on each pair's outer test part; the re-stained test parts are "
            "scored in the runs but not kept per image)")


def predictions_table(pairs: list[Pair], frames: dict[tuple[int, str], pd.DataFrame]) -> pd.DataFrame:
    """One CSV for the whole comparison: each arm run's `test/predictions.csv` (analysis/stage_files.py:
    predictions_frame) with the pair (numbered as in Table V), its seeds, the arm, the run and whether the pair
    counts in the statistics in front. `frames`: (pair index, arm) -> that run's predictions."""
    parts = []
    for p in pairs:
        for arm in Arm:
            frame = frames.get((p.index, str(arm)))
            if frame is None:
                continue
            front = pd.DataFrame({"run": p.index + 1, "seed": p.seed, "split_seed": p.data_seed, "arm": str(arm),
                                  "run_id": p.runs.get(_ARM_STAGE[arm], ""),
                                  "status": "excluded" if p.excluded else "used"}, index=frame.index)
            parts.append(pd.concat([front, frame], axis=1))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def budget_line(train: TrainConfig, study: str | None = None) -> str:
    """Every training setting an arm's score depends on, so a reader can tell one comparison's budget from another's."""
    augment = "none" if train.augment == "none" else f"{train.augment} ({train.augment_mode})"
    final = [f"{name} {value}" for name, value in (("ensemble", train.ensemble), ("test-time", train.tta),
                                                    ("colour fusion", train.colour_fusion)) if value != "none"]
    return (f"- Budget per arm: {train.warmup_epochs} warm-up epochs (head {train.dense_units}, dropout "
            f"{train.dropout}, lr {train.learning_rate}, decay {train.decay_rate}) + {train.finetune_epochs} "
            f"fine-tuning epochs (top {train.unfreeze_layers} weighted layers, lr {train.finetune_learning_rate}, "
            f"early-stopping patience {train.early_stopping_patience}), batch {train.batch_size}; stain "
            f"{train.stain}, augmentation {augment}" + "".join(f", {item}" for item in final)
            + f"; weights {train.weights}" + (f"; parameters from study {study}" if study else ""))


def error_line(c: stats.Comparison) -> str:
    """'MTL cuts the test error from 4.6% to 3.9% (15% fewer errors)', or says plainly that MTL raises it."""
    before, after = 1.0 - c.ctl.mean, 1.0 - c.mtl.mean
    span = f"from {_share(before)} to {_share(after)}"
    name = "the test error" if c.metric == ACCURACY else f"the test shortfall 1 - {c.metric}"
    if not math.isfinite(c.error_reduction):
        return f"CTL made no test errors on {c.metric}; MTL's {name.removeprefix('the ')} is {_share(after)}."
    if after < before:
        return f"MTL cuts {name} {span} ({c.error_reduction:.0%} fewer errors)."
    if after > before:
        return f"MTL is worse: it raises {name} {span} ({-c.error_reduction:.0%} more errors)."
    return f"MTL leaves {name} unchanged at {_share(before)}."


def colour_line(used: list[Pair]) -> str:
    """The colour baseline's mean test accuracy beside both arms', over the pairs whose CTL run logged it."""
    rows = [(p.metrics[Arm.CTL][ACCURACY], p.metrics[Arm.MTL][ACCURACY], _check(p, Arm.CTL, COLOUR)) for p in used]
    rows = [r for r in rows if math.isfinite(r[2])]
    if not rows:
        return "Colour alone: n/a (these runs logged no colour baseline)."
    ctl, mtl, colour = (_mean(column) for column in zip(*rows))
    line = (f"Colour alone (the best colour-only baseline on the same test parts): mean test accuracy "
            f"{_share(colour)} vs CTL {_share(ctl)} and MTL {_share(mtl)} over {len(rows)} "
            f"pair{'' if len(rows) == 1 else 's'}.")
    if max(ctl, mtl) < colour:
        line += " Both arms are below the colour baseline: stain colour alone predicts the class better than either."
    return line


def time_line(used: list[Pair]) -> str:
    """What the comparison cost on the machine named above: mean wall time per run of each arm, and in all."""
    ctl, mtl = (_mean([p.seconds.get(str(arm), math.nan) for p in used]) for arm in (Arm.CTL, Arm.MTL))
    if math.isnan(ctl) or math.isnan(mtl):
        return "Time: n/a (a run has no end time)."
    total = sum(v for p in used for v in p.seconds.values() if math.isfinite(v))
    return (f"Time on this machine: CTL {ctl / 60:.1f} min per run, MTL {mtl / 60:.1f} min per run (stages 1-3, "
            f"{mtl / ctl:.1f}x CTL); {total / 3600:.2f} h for the {len(used)} pairs (wall time of the runs as "
            "MLflow recorded them).")


def stain_shift_line(used: list[Pair]) -> str:
    """Mean accuracy on the re-stained test parts: both arms and the colour baseline, n/a where not logged."""
    means = {"CTL": _mean([_check(p, Arm.CTL, STAIN_SHIFT) for p in used]),
             "MTL": _mean([_check(p, Arm.MTL, STAIN_SHIFT) for p in used]),
             "colour alone": _mean([_check(p, Arm.CTL, COLOUR_STAIN_SHIFT) for p in used])}
    if all(math.isnan(v) for v in means.values()):
        return "Under stain shifts: n/a (these runs logged no stain-shift accuracy)."
    return "Under stain shifts (test parts re-stained), mean accuracy: " + ", ".join(
        f"{k} {_share(v)}" for k, v in means.items()) + "."


def paper_sentence(check: stats.PaperCheck | None = None) -> str:
    """The paper's pooled t-test numbers against each other; every derived number computed by scipy."""
    k = check or stats.paper_check()
    return (f"The paper reports t = {k.t:g}, p = {k.p:g} for its pooled t-test with df = {k.df}. These two numbers "
            f"are inconsistent: at df = {k.df}, |t| = {k.t:g} gives a two-sided p = {k.p_for_t:.3f}, and "
            f"p = {k.p:g} needs |t| = {k.t_for_p:.2f}. The pooled t column above is that test on these runs.")


def _labels_line(pairs: list[Pair]) -> str:
    """The label substitution: Aria's classes are B-ALL stages, not the paper's FAB classes."""
    names = next((p.class_names for p in pairs if p.class_names), ())
    if set(names) == ARIA_CLASSES:
        return ("- Labels: the Aria data's 4 classes are B-ALL development stages (Benign, Early Pre-B, Pre-B, "
                "Pro-B), not the paper's FAB classes (Normal, L1, L2, L3).")
    listed = f" ({', '.join(names)})" if names else ""
    return f"- Labels: the classes are the dataset's own{listed}, not the paper's FAB classes (Normal, L1, L2, L3)."


def _check(pair: Pair, arm: str, key: str) -> float:
    return pair.checks.get(arm, {}).get(key, math.nan)


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values (older runs lack some), nan when none is."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _share(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _reduction(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:+.1f}%"


def _test(t: stats.TestResult) -> str:
    return f"t = {t.statistic:.3f}, df = {t.df:.1f}, p = {t.p_value:.4g}"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"

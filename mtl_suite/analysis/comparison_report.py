"""The comparison's report: the paper's Table V (one row per paired run) and the Markdown that `mtl-suite compare`
writes under reports/ and logs to the comparison run. Text only: the statistics come in computed
(analysis/compare.py), the provenance (commit, dataset digests) comes in read from MLflow by the caller."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from mtl_suite.analysis import compare as stats
from mtl_suite.analysis.machine import machine_description
from mtl_suite.analysis.tables import markdown_table
from mtl_suite.catalog import Arm

if TYPE_CHECKING:  # the caller's types, for the reader; no import at run time (workflows/ sits above analysis/)
    from mtl_suite.workflows.compare import CompareRequest, Pair

METRICS = ("accuracy", "f1_macro")  # the test metrics both arms are compared on (Table V's columns)


def table_v(pairs: list[Pair]) -> pd.DataFrame:
    """The paper's Table V: one row per run, test accuracy of CTL and MTL (here with macro-F1 beside it)."""
    rows = []
    for p in pairs:
        row = {"run": p.index + 1, "seed": p.seed, "split_seed": p.data_seed}
        for arm in Arm:
            for m in METRICS:
                row[f"{arm}_{m}"] = p.metrics.get(arm, {}).get(m, math.nan)
        row["status"] = "excluded: " + p.excluded if p.excluded else "used"
        rows.append(row)
    return pd.DataFrame(rows)


def render_report(request: CompareRequest, pairs: list[Pair], comparisons: dict[str, stats.Comparison],
                  ratio: float, table: pd.DataFrame, plot_name: str, parent: str, uri: str,
                  experiment_id: str, *, dataset_digests: Sequence[str], commit: str) -> str:
    """`dataset_digests`: the used pairs' dataset digests (one, when all pairs read the same data)."""
    cfg = request.config
    used = [p for p in pairs if not p.excluded]
    digests = sorted(set(dataset_digests) - {""})
    lines = [f"# CTL vs MTL: {cfg.train.backbone}, {request.task} task", "",
             "Made by:", "", "```", request.command or "mtl-suite compare", "```", "",
             f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}; code: git {commit[:12]}",
             f"- Machine: {machine_description()}",
             f"- MLflow: `{uri}`, experiment id {experiment_id}, comparison run `{parent}`",
             f"- Data: `{cfg.data.path or 'bundled sample'}`, dataset digest "
             f"{', '.join(d[:16] for d in digests) or 'n/a'}; {cfg.data.image_size} px; outer test fraction "
             f"{cfg.data.test_fraction}; {cfg.data.folds} CV folds per run; n_test / n_train = {ratio:.3f}",
             f"- Budget per arm: {cfg.train.warmup_epochs} warm-up + {cfg.train.finetune_epochs} fine-tuning "
             f"epochs, batch {cfg.train.batch_size}, lr {cfg.train.learning_rate}, head {cfg.train.dense_units}, "
             f"weights {cfg.train.weights}" + (f", parameters from study {request.study}" if request.study else ""),
             "- Protocol: pair i trains both arms with seed base+i on the same split (split seed base+i; the split "
             "digests of the two arms are checked to be equal). CTL = ImageNet -> task. MTL = ImageNet -> stage 2 "
             "(single-cell crops of the same split's development images only; re-run per pair) -> stage 3 with the "
             "same budget as CTL. Scores are on the outer test part of each split, after refitting on all "
             "development images.", "",
             "## Verdict", ""]
    if comparisons:
        lines += [f"- {c.verdict}" for c in comparisons.values()]
    else:
        lines.append(f"- No verdict: only {len(used)} of {len(pairs)} pairs finished both arms; a t-test needs 2.")
    lines += ["", "The verdict uses the Nadeau-Bengio corrected resampled t-test: the runs reuse one data set, so "
              "their differences are correlated and the plain paired t-test overstates significance.", "",
              "## Table V: test scores per run (%)", ""]
    rows = []
    for _, r in table.iterrows():
        rows.append([int(r["run"]), int(r["seed"]), _pct(r["ctl_accuracy"]), _pct(r["mtl_accuracy"]),
                     _pct(r["mtl_accuracy"] - r["ctl_accuracy"]), _pct(r["ctl_f1_macro"]),
                     _pct(r["mtl_f1_macro"]), r["status"]])
    lines.append(markdown_table(["run", "seed", "CTL accuracy", "MTL accuracy", "MTL - CTL", "CTL macro-F1",
                                 "MTL macro-F1", "status"], rows))
    if comparisons:
        lines += ["## Statistics (MTL - CTL, percentage points)", ""]
        srows = []
        for c in comparisons.values():
            srows.append([c.metric, f"{100 * c.ctl.mean:.2f} ± {100 * c.ctl.std:.2f}",
                          f"{100 * c.mtl.mean:.2f} ± {100 * c.mtl.std:.2f}", f"{100 * c.mean_difference:+.2f}",
                          f"[{100 * c.ci95[0]:+.2f}, {100 * c.ci95[1]:+.2f}]",
                          f"[{100 * c.ci95_corrected[0]:+.2f}, {100 * c.ci95_corrected[1]:+.2f}]",
                          _test(c.paired), _test(c.welch), _test(c.corrected), f"{c.cohens_d:.2f}"])
        lines.append(markdown_table(["metric", "CTL mean ± sd", "MTL mean ± sd", "difference", "95% CI (paired)",
                                     "95% CI (corrected)", "paired t", "Welch t", "corrected t (Nadeau-Bengio)",
                                     "Cohen's d_z"], srows))
        lines.append(f"n = {len(used)} pairs; corrected test uses n_test / n_train = {ratio:.3f}. "
                     "All values computed by scipy from the runs above.\n")
    failed = [p for p in pairs if p.excluded]
    lines += ["## Failed or excluded pairs", ""]
    lines += [f"- run {p.index + 1} (seed {p.seed}): {p.excluded}" for p in failed] or ["- none"]
    lines += ["", "## Figure", "", f"![CTL vs MTL per run]({plot_name})", "",
              "Boxes: per-arm distribution; dots: runs; grey lines join the two arms of a pair.", "",
              "## Runs", ""]
    lines += [f"- run {p.index + 1}: " + ", ".join(f"{k} `{v}`" for k, v in sorted(p.runs.items())) for p in pairs]
    return "\n".join(lines) + "\n"


def _test(t: stats.TestResult) -> str:
    return f"t = {t.statistic:.3f}, df = {t.df:.1f}, p = {t.p_value:.4g}"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"

"""`mtl-suite report`: read finished stage runs from MLflow and build the paper's tables and figures (Tables I-IV,
Figs. 9-11; the metrics on the outer test part too, with n, 95% interval and per-class sensitivity and specificity),
a data section, and three checks the paper lacks: calibration, a colour-only shortcut baseline on the same split,
and Grad-CAM overlays. The reads are tracking/report_queries.py; the sections, statistics and
drawing analysis/report_sections.py and report_figures.py; this module chooses the runs and assembles.

Which runs: for every (stage, backbone, task) the newest FINISHED stage run is shown (with how many runs of that
kind exist). The figures follow the "headline" runs: the newest stage-3 (MTL) run per backbone and task, or the
newest classical run where a backbone/task has no stage-3 run."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import Run

from mtl_suite.analysis import report as rp
from mtl_suite.analysis import report_figures as figs
from mtl_suite.analysis import report_sections as sections
from mtl_suite.catalog import RunKind, Stage, Task
from mtl_suite.io_utils import write_text_atomic
from mtl_suite.tracking import report_queries as queries
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import record_in_launcher_run, resolve_tracking_uri

TABLES = {Task.BINARY: "Table II: binary classification (normal vs leukemia)",
          Task.MULTICLASS: "Table III: multiclass classification"}


def build_report(experiment: str, tracking_uri: str | None, out: Path | None, gradcam_per_class: int = 2,
                 comparisons: tuple[str, ...] = (), say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """`comparisons`: only the stage runs of these `compare` runs (empty: the experiment's every stage run)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars would interleave with our lines
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = queries.experiment_or_error(client, experiment, uri)
    out = out or Path("reports") / f"{experiment}-{dt.date.today().isoformat()}"
    runs = queries.finished_stage_runs(client, exp.experiment_id, comparisons)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        t = run.data.tags
        groups[(t.get("stage", ""), t.get("backbone", ""), t.get("task", ""))].append(run)
    scope = f" of comparison(s) {', '.join(comparisons)}" if comparisons else ""
    say(f"report on experiment {experiment!r}: {len(runs)} finished stage runs{scope} in {uri}")

    def histories(run_id: str) -> list[dict[str, list[float]]]:
        return queries.fold_histories(client, run_id)

    with tempfile.TemporaryDirectory(prefix="mtl-report-") as tmp:
        headline = [queries.run_data(client, r, Path(tmp)) for r in headline_runs(groups)]
        blocks = sections.report_header(experiment, uri, runs, out, tracking_uri, comparisons, git_commit())
        blocks += sections.data_section(headline)
        blocks += sections.hyperparameter_table(groups)
        for task, title in TABLES.items():
            blocks += sections.metric_table(groups, task, title)
        for task, title in TABLES.items():
            blocks += sections.test_metric_table(groups, task, f"{title}, outer test part: n and 95% interval")
        blocks += sections.confusion_tables(headline, sections.OOF_PART)
        blocks += sections.confusion_tables(headline, sections.TEST_PART)
        blocks += sections.rate_tables(headline)
        blocks += figs.convergence_section(histories, groups, headline, figures)
        blocks += figs.roc_section(headline, figures)
        blocks += figs.curves_section(histories, headline, figures)
        blocks += figs.calibration_section(headline, figures)
        blocks += sections.shortcut_section(headline)
        blocks += sections.reliability_section(headline)
        blocks += figs.gradcam_section(headline, figures, gradcam_per_class, say, queries.load_run_model)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, rp.to_markdown(blocks, out))
    write_text_atomic(html_path, rp.to_html(blocks, f"mtl-suite report: {experiment}"))
    say(f"report written: {md_path} and {html_path}")
    record_in_launcher_run(exp.experiment_id, {"run_kind": RunKind.REPORT, "mlflow.runName": f"report-{experiment}"},
                           (md_path, html_path))
    return md_path, html_path


def headline_runs(groups: dict[tuple[str, str, str], list[Run]]) -> list[Run]:
    """Per backbone and task: the newest stage-3 run, else the newest classical run."""
    chosen = {}
    for (stage, backbone, task), runs in sorted(groups.items()):
        if task not in sections.TABLE_METRICS:
            continue
        if stage == Stage.STAGE3 or (stage == Stage.CLASSICAL and (Stage.STAGE3, backbone, task) not in groups):
            chosen[(backbone, task)] = runs[0]
    return list(chosen.values())

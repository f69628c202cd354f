"""MLflow I/O of `mtl-suite compare`: the comparison parent run (found again by its key, so a rerun resumes it),
the finished stage runs of a pair, an arm's test scores, and what the comparison logs on its parent. The protocol
that decides what to run and what counts is workflows/compare.py."""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag

from mtl_suite.analysis.comparison_report import COLOUR, COLOUR_STAIN_SHIFT, STAIN_SHIFT
from mtl_suite.catalog import RunKind
from mtl_suite.config import ExperimentConfig, to_flat_dict
from mtl_suite.tracking.runs import git_commit

if TYPE_CHECKING:
    from mtl_suite.analysis.compare import Comparison

# what every stage run logs beside its scores (analysis/shortcut.py: ShortcutCheck.metrics, the best variant's;
# workflows/stage_checks.py: robustness/*), under the comparison's keys
CHECK_METRICS = {COLOUR: "shortcut/best/test_accuracy", STAIN_SHIFT: "robustness/stain_shift_accuracy",
                 COLOUR_STAIN_SHIFT: "robustness/shortcut_stain_shift_accuracy"}
CLASSES_TAG = "classes"  # tracking/stage_log.py:log_setup, comma-separated in label-index order
DAY_S = 86_400


def find_or_create_parent(client, experiment_id: str, key: str, config: ExperimentConfig, task: str, runs: int,
                          command: str, study: str | None, say: Callable[[str], None],
                          launcher_run: str | None = None) -> str:
    """The comparison run with this key (reopened, its run count raised to `runs`), else a new one: the run
    `mlflow run -e compare` made, when there is one."""
    found = client.search_runs([experiment_id],
                               f"tags.run_kind = '{RunKind.COMPARISON}' AND tags.comparison_key = '{key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        if launcher_run and launcher_run != run_id:  # `mlflow run`'s run points to the comparison it resumed
            client.set_tag(launcher_run, "comparison_run", run_id)
            client.set_terminated(launcher_run, "FINISHED")
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "comparison_runs", str(max(runs, int(found[0].data.tags.get(
            "comparison_runs", "0") or 0))))
        say(f"resuming comparison run {run_id} (same settings: key {key})")
        return run_id
    tags = {"run_kind": str(RunKind.COMPARISON), "comparison_key": key, "backbone": config.train.backbone,
            "task": task, "comparison_runs": str(runs), "folds": str(config.data.folds), "git_commit": git_commit(),
            "command": command[:5000], "mlflow.runName": f"compare-{config.train.backbone}-{task}"}
    if study:
        tags["study"] = study
    if launcher_run:
        client.log_batch(launcher_run, tags=[RunTag(k, v) for k, v in tags.items()])
        run_id = launcher_run
    else:
        run_id = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"]).info.run_id
    params = {k: str(v)[:500] for k, v in to_flat_dict(config).items()
              if k not in ("tracking.tracking_uri", "train.seed", "data.seed")}
    params.update({"base_seed": str(config.train.seed), "base_data_seed": str(config.data.seed), "task": task})
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    return run_id


def end_parent(client, parent: str, status: int, only_if_running: bool = False) -> None:
    """`status`: a RunStatus (FINISHED, FAILED, KILLED). `only_if_running`: leave a run another worker ended."""
    if only_if_running and client.get_run(parent).info.status != "RUNNING":
        return
    client.set_terminated(parent, RunStatus.to_string(status))


def run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def reopen(client, parent: str, runs: int) -> bool:
    """An ended comparison run RUNNING again, its run count raised to `runs`; False when it is running (another
    worker of the same command reopened it, or is still on it)."""
    run = client.get_run(parent)
    if int(run.data.tags.get("comparison_runs", "0") or 0) < runs:
        client.set_tag(parent, "comparison_runs", str(runs))
    if run.info.status == "RUNNING":
        return False
    client.update_run(parent, status="RUNNING")
    return True


def finished_stage_run(client, experiment_id: str, parent: str, index: int, stage: str,
                       parent_stage_run: str | None) -> str | None:
    """The newest FINISHED `stage` run of pair `index` that started from `parent_stage_run` (None: from no stage
    run), for a resumed comparison, or the redo of a unit whose worker died after its run finished, to reuse."""
    query = (f"tags.comparison_run = '{parent}' AND tags.comparison_pair = '{index}' AND tags.stage = '{stage}' "
             f"AND tags.run_kind = '{RunKind.STAGE}' AND attributes.status = 'FINISHED'")
    for run in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"]):
        if (run.data.tags.get("parent_stage_run") or None) == parent_stage_run:
            return run.info.run_id
    return None


def close_dead_worker_runs(client, experiment_id: str, worker: str, since: dt.datetime | None,
                           note: str) -> list[str]:
    """Close as KILLED, with the reason, every run a dead worker (`host:pid`, tracking/resume.py's owner tags) left
    RUNNING since its claim started, and their RUNNING nested runs (folds): its unit is redone, and the redo adopts
    them (their finished folds), which it would not while they look alive. Returns the runs closed."""
    host, _, pid = worker.partition(":")
    query = (f"tags.`mtl.host` = '{host}' AND tags.`mtl.pid` = '{pid}' AND attributes.status = 'RUNNING'")
    if since is not None:  # Optuna's start time is the claiming host's naive local time: a day's margin covers zones
        query += f" AND attributes.start_time >= {int((since.timestamp() - DAY_S) * 1000)}"
    closed = []
    for run in client.search_runs([experiment_id], query, max_results=1000):
        children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' "
                                      "AND attributes.status = 'RUNNING'", max_results=1000)
        for stopped in (*children, run):
            client.set_tag(stopped.info.run_id, "state_reason", f"worker {worker}: {note}"[:500])
            client.set_terminated(stopped.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(stopped.info.run_id)
    return closed


def log_unit_progress(client, parent: str, done: int, failed: int, running: int, workers: Sequence[str],
                      waiting: int, seconds_left: float | None) -> None:
    """Where the comparison's units are, on its run (any worker's last look): the MLflow UI shows it to everyone."""
    tags = {"units_done": str(done), "units_failed": str(failed), "units_running": str(running),
            "units_running_on": ", ".join(workers)[:5000], "units_waiting": str(waiting),
            "units_seconds_left": "" if seconds_left is None else f"{seconds_left:.0f}",
            "units_updated": dt.datetime.now().isoformat(timespec="seconds")}
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])


def read_test_scores(client, run_id: str, metrics: Sequence[str]) -> tuple[dict[str, float | None], str]:
    """A stage run's `test/<metric>` values (None where missing) and its split digest."""
    run = client.get_run(run_id)
    return {m: run.data.metrics.get(f"test/{m}") for m in metrics}, run.data.tags.get("split_digest", "")


def read_checks(client, run_id: str) -> tuple[dict[str, float], tuple[str, ...]]:
    """A stage run's colour-baseline and stain-shift accuracies (nan where an older run logged none) and its class
    names (empty without the tag)."""
    run = client.get_run(run_id)
    checks = {key: float(run.data.metrics.get(name, math.nan)) for key, name in CHECK_METRICS.items()}
    classes = run.data.tags.get(CLASSES_TAG, "")
    return checks, tuple(c for c in classes.split(",") if c)


def run_seconds(client, run_ids: Sequence[str]) -> float:
    """Wall time the runs took together (start to end as MLflow recorded them; nan if one has not ended)."""
    total = 0.0
    for run_id in run_ids:
        info = client.get_run(run_id).info
        if not info.end_time:
            return math.nan
        total += (info.end_time - info.start_time) / 1000
    return total


def read_test_train_ratio(client, stage_run_id: str) -> float | None:
    """From the nested 'final' run: trained on n_train development images, tested on n_validation test images."""
    run = client.get_run(stage_run_id)
    finals = client.search_runs([run.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{stage_run_id}' AND tags.fold = 'final'", max_results=1)
    if not finals:
        return None
    params = finals[0].data.params
    n_train, n_test = int(params.get("n_train", 0)), int(params.get("n_validation", 0))
    return n_test / n_train if n_train else None


def read_test_predictions(client, run_id: str) -> pd.DataFrame | None:
    """A stage run's per-image outer-test predictions (`test/predictions.csv`: path, sha256, label, p_<class>,
    predicted), None where the run logged none."""
    if "test/predictions.csv" not in {a.path for a in client.list_artifacts(run_id, "test")}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "test/predictions.csv", tmp)
        return pd.read_csv(path)


def read_dataset_digest(client, run_id: str | None) -> str:
    """The digest of the manifest a stage run read ("" without a run)."""
    return client.get_run(run_id).data.tags.get("dataset_digest", "") if run_id else ""


def log_to_parent(client, parent: str, pairs_used: int, pairs_excluded: int, comparisons: dict[str, Comparison],
                  table: pd.DataFrame, report: str, plot_path: Path, ratio: float,
                  beside: Sequence[Path] = ()) -> None:
    """`beside`: the files written next to the report (per-image predictions, the config's copy), logged with it."""
    now = int(dt.datetime.now().timestamp() * 1000)
    metrics = [Metric("compare/pairs_used", float(pairs_used), now, 0),
               Metric("compare/pairs_excluded", float(pairs_excluded), now, 0),
               Metric("compare/test_train_ratio", float(ratio), now, 0)]
    for name, c in comparisons.items():
        values = {"ctl_mean": c.ctl.mean, "mtl_mean": c.mtl.mean, "mean_difference": c.mean_difference,
                  "p_paired": c.paired.p_value, "p_welch": c.welch.p_value, "p_corrected": c.corrected.p_value,
                  "t_corrected": c.corrected.statistic, "t_pooled": c.pooled.statistic, "p_pooled": c.pooled.p_value,
                  "cohens_d": c.cohens_d, "error_reduction": c.error_reduction}
        metrics += [Metric(f"compare/{name}/{k}", float(v), now, 0) for k, v in values.items() if math.isfinite(v)]
    client.log_batch(parent, metrics=metrics)
    client.set_tag(parent, "verdict", (comparisons["accuracy"].verdict if comparisons else "no verdict")[:5000])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "comparison"
        folder.mkdir()
        table.to_csv(folder / "table_v.csv", index=False)
        (folder / "report.md").write_text(report, encoding="utf-8")
        (folder / "statistics.json").write_text(json.dumps({k: c.as_dict() for k, c in comparisons.items()},
                                                           indent=2, default=float), encoding="utf-8")
        for path in (plot_path, *beside):
            (folder / path.name).write_bytes(path.read_bytes())
        client.log_artifacts(parent, str(folder), artifact_path="comparison")

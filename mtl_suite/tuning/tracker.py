"""A study as MLflow runs, for either engine: one parent run per study (tags: study, storage, sampler, stage,
backbone ...), one nested run per trial with its params, value, state and fold metrics. Uses the client API with
explicit run ids, so trial runs never depend on which run is "active" in the process."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag

# Optuna-style trial states, shared by both engines, and the MLflow run status each ends with. A pruned trial
# ran as intended and stopped early: FINISHED, told apart by its `state` tag.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


class StudyTracker:
    def __init__(self, study_run_id: str, tags: Mapping[str, str],
                 run_params: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None):
        self.client = mlflow.MlflowClient()
        self.study_run_id = study_run_id
        self.experiment_id = self.client.get_run(study_run_id).info.experiment_id
        self.tags = dict(tags)  # stage, backbone, task, study, engine: copied onto every trial run
        self.run_params = run_params  # a trial's drawn values -> the params its run logs (study.trial_run_params)

    @staticmethod
    def find_study_run(experiment_id: str, study: str, engine: str) -> str | None:
        runs = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.run_kind = 'study' AND tags.study = '{study}' AND tags.engine = '{engine}'",
            order_by=["attributes.start_time ASC"], max_results=1, output_format="list")
        return runs[0].info.run_id if runs else None

    @staticmethod
    def run_exists(run_id: str) -> bool:
        try:
            mlflow.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    def open_trial_runs(self) -> list[mlflow.entities.Run]:
        """The study's trial runs still RUNNING (live workers' and killed workers' alike)."""
        return self.client.search_runs(
            [self.experiment_id], max_results=1000,
            filter_string=f"tags.`mlflow.parentRunId` = '{self.study_run_id}' AND tags.run_kind = 'trial' "
                          "AND attributes.status = 'RUNNING'")

    def start_trial(self, number: int, extra_tags: Mapping[str, str] | None = None) -> str:
        tags = {"mlflow.parentRunId": self.study_run_id, "run_kind": "trial", "trial": str(number),
                "state": "RUNNING", **self.tags, **(extra_tags or {})}
        run = self.client.create_run(self.experiment_id, tags=tags,
                                     run_name=f"{self.tags.get('study', 'study')}-trial-{number}")
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """A trial's drawn values, logged as `run_params` turns them into params (the same on every call, so
        logging them again at the end of the trial changes nothing)."""
        if params and self.run_params is not None:
            params = self.run_params(params)
        if params:
            self.client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()],
                                  synchronous=True)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        entities = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        if entities:
            self.client.log_batch(run_id, metrics=entities, synchronous=True)

    def finish_trial(self, run_id: str, state: str, value: float | None, params: Mapping[str, Any],
                     metric: str, note: str = "") -> None:
        """Record the outcome; idempotent, so the engine callback and an error path may both call it."""
        self.log_params(run_id, params)
        if value is not None and _finite(value):
            self.log_metrics(run_id, {"value": value, f"cv/{metric}_mean": value})
        tags = [RunTag("state", state)] + ([RunTag("state_reason", note[:500])] if note else [])
        self.client.log_batch(run_id, tags=tags, synchronous=True)
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    def mark_trial(self, run_id: str, state: str, note: str = "") -> None:
        """Close a trial run without params or value (a failed or interrupted trial, or one a worker left)."""
        tags = [RunTag("state", state)] + ([RunTag("state_reason", note[:500])] if note else [])
        self.client.log_batch(run_id, tags=tags, synchronous=True)
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    @contextmanager
    def closing_on_failure(self, run_id: str) -> Iterator[None]:
        """Whatever stops a trial's evaluation closes its run as KILLED (Ctrl-C, SIGTERM) or FAIL (an error), then
        goes on up; a pruned trial is left for the engine's own bookkeeping."""
        try:
            yield
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            self.mark_trial(run_id, "KILLED", "interrupted")
            raise
        except Exception as exc:
            self.mark_trial(run_id, "FAIL", f"{type(exc).__name__}: {exc}")
            raise

    @staticmethod
    def close_run(run_id: str, state: str, note: str = "") -> None:
        """Close a trial run left open by another process (a killed worker), if it is still open."""
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.log_batch(run_id, tags=[RunTag("state", state), RunTag("state_reason", note[:500])],
                             synchronous=True)
            client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    def log_study_progress(self, counts: Mapping[str, int], best: float | None, best_trial: int | None) -> None:
        step = sum(counts.values())
        metrics = {f"trials_{state.lower()}": n for state, n in counts.items()}
        if best is not None:
            metrics["best_value"] = best
        self.log_metrics(self.study_run_id, metrics, step=step)
        if best_trial is not None:
            self.client.set_tag(self.study_run_id, "best_trial", str(best_trial))

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.study_run_id, str(folder), artifact_path)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def mask_password(url: str) -> str:
    """A storage URL fit for a tag or a log line: postgresql://user:secret@host/db -> postgresql://user:***@host/db."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)

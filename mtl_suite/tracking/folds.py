"""Nested MLflow runs for the folds of a stage run (and its final refit): the training code reports to this
observer and never sees MLflow."""

from __future__ import annotations

import time

import mlflow

from mtl_suite.catalog import RunKind
from mtl_suite.tracking import resume
from mtl_suite.tracking.callbacks import MlflowEpochLogger, metric_key
from mtl_suite.training.cv import FoldResult


class MlflowFoldObserver:
    """Opens a nested run per fold (and one for the final refit), logs its epochs and final metrics, and marks it
    FAILED or KILLED when training stops with an error or an interrupt."""

    def __init__(self, parent_run_id: str, stage: str, backbone: str, quiet: bool = False):
        self.client = mlflow.MlflowClient()
        self.parent = self.client.get_run(parent_run_id)
        self.stage, self.backbone = stage, backbone
        self.runs: dict[str, str] = {}

    def fold_started(self, fold: str, n_train: int, n_val: int, resumed_history=None):
        tags = {"mlflow.parentRunId": self.parent.info.run_id, "run_kind": RunKind.FOLD, "stage": self.stage,
                "backbone": self.backbone, "fold": fold, "task": self.parent.data.tags.get("task", "")}
        if resumed_history:
            tags["resumed_epochs"] = str(len(resumed_history.get("loss", [])))
        run = self.client.create_run(self.parent.info.experiment_id, tags=tags,
                                     run_name=f"{self.stage}-{self.backbone}-{fold}")
        self.runs[fold] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param("n_train", str(n_train)),
                                                       mlflow.entities.Param("n_validation", str(n_val))])
        if resumed_history:  # the epochs an interrupted attempt finished: one unbroken curve per fold
            self._log_history(run.info.run_id, resumed_history)
        return lambda phase, first_epoch: [MlflowEpochLogger(run.info.run_id, step_offset=first_epoch)]

    def _log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        now = int(time.time() * 1000)
        entities = [mlflow.entities.Metric(metric_key(name), float(value), now, step)
                    for name, values in history.items() for step, value in enumerate(values)]
        for start in range(0, len(entities), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=entities[start:start + 1000])

    def fold_finished(self, result: FoldResult) -> None:
        run_id = self.runs[result.fold]
        prefix = "test/" if result.fold == "final" else "fold/"
        now = int(time.time() * 1000)
        entities = [mlflow.entities.Metric(prefix + k, float(v), now, 0) for k, v in result.metrics.items()]
        if entities:
            self.client.log_batch(run_id, metrics=entities)
        # Before FINISHED: a finished fold always carries what a resumed run needs to reuse it.
        self.client.log_dict(run_id, result.to_json(), resume.FOLD_RESULT)
        self.client.set_terminated(run_id, "FINISHED")

    def fold_failed(self, fold: str, error: BaseException) -> None:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(self.runs[fold], status)

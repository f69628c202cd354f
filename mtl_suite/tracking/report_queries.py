"""What `mtl-suite report` reads from MLflow: the experiment's finished stage runs, a run's artifacts (predictions,
split, class names) as `RunData`, per-fold training histories, and a run's logged model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Experiment, Run

from mtl_suite.analysis.report_sections import RunData
from mtl_suite.catalog import RunKind
from mtl_suite.errors import UserError
from mtl_suite.run_files import KERAS_MODEL, MODEL_INFO, ModelInfo


def experiment_or_error(client, experiment: str, uri: str) -> Experiment:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"--experiment {experiment!r}: no such experiment in {uri}. Expected one of: "
                        f"{', '.join(names) or '(none)'}")
    return found


def finished_stage_runs(client, experiment_id: str, comparisons: tuple[str, ...] = ()) -> list[Run]:
    """Newest first; with `comparisons`, only the stage runs those `compare` runs made (an unknown id is an error:
    an empty report would look like a finding)."""
    where = f"tags.run_kind = '{RunKind.STAGE}' AND attributes.status = 'FINISHED'"
    if not comparisons:
        return client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], max_results=5000)
    runs = []
    for comparison in comparisons:
        found = client.search_runs([experiment_id], f"{where} AND tags.comparison_run = '{comparison}'",
                                   max_results=5000)
        if not found:
            raise UserError(f"--comparison {comparison}: no finished stage runs of that comparison in this "
                            "experiment (expected the id of a `mtl-suite compare` run)")
        runs += found
    return sorted(runs, key=lambda run: run.info.start_time, reverse=True)


def run_data(client, run: Run, tmp: Path) -> RunData:
    run_id = run.info.run_id
    folder = tmp / run_id
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for d in ("cv", "test", "data")
                                                                for a in client.list_artifacts(run_id, d)}

    def get(path: str) -> Path | None:
        if path not in names:
            return None
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(folder)))

    info_path = get(MODEL_INFO)
    if info_path:
        info = ModelInfo.read(info_path, f"run {run_id}'s {MODEL_INFO}")
        class_names, image_size = list(info.class_names), info.image_size
    else:
        class_names, image_size = _described_by_tags(run)
    oof_path, test_path, split_path = get("cv/oof_predictions.csv"), get("test/predictions.csv"), get("data/split.json")
    dup_path = get("data/dropped_duplicates.txt")
    dropped = len([line for line in dup_path.read_text().splitlines() if line.strip()]) if dup_path else 0
    return RunData(run, class_names, image_size,
                   pd.read_csv(oof_path) if oof_path else None, pd.read_csv(test_path) if test_path else None,
                   json.loads(split_path.read_text()) if split_path else None, dropped)


def _described_by_tags(run: Run) -> tuple[list[str], int]:
    """Class names and input size of a run that logged no model, hence no model_info.json (stage 1 on ImageNet
    weights alone): the tags its stage set when it started (workflows/stage.py:_run_tags, tracking/stage_log.py:
    log_setup) say the same. A size is never guessed: every figure would read the images at it."""
    tags = run.data.tags
    size = tags.get("image_size", "")
    if not size.isdigit() or int(size) < 1:
        raise UserError(f"run {run.info.run_id} has no {MODEL_INFO} and its image_size tag is {size or 'missing'}: "
                        "its input size is unknown")
    return [c for c in tags.get("classes", "").split(",") if c], int(size)


def fold_histories(client, stage_run_id: str) -> list[dict[str, list[float]]]:
    """Per CV fold: {'loss', 'val_loss', 'accuracy', 'val_accuracy'} per epoch, from the nested fold runs."""
    run = client.get_run(stage_run_id)
    folds = client.search_runs([run.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{stage_run_id}' AND tags.run_kind = '{RunKind.FOLD}'")
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


def load_run_model(run_id: str):
    """The Keras model a stage run logged (safe mode: no arbitrary code from the artifact)."""
    import mlflow.keras

    import mtl_suite.models.serializable  # noqa: F401  registers the suite's layers for the safe-mode load

    return mlflow.keras.load_model(f"runs:/{run_id}/{KERAS_MODEL}", load_model_kwargs={"safe_mode": True})

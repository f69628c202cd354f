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

    info_path = get("model_info.json")
    info = json.loads(info_path.read_text()) if info_path else {}
    class_names = info.get("class_names") or run.data.tags.get("classes", "").split(",")
    oof_path, test_path, split_path = get("cv/oof_predictions.csv"), get("test/predictions.csv"), get("data/split.json")
    dup_path = get("data/dropped_duplicates.txt")
    dropped = len([line for line in dup_path.read_text().splitlines() if line.strip()]) if dup_path else 0
    return RunData(run, class_names, int(info.get("image_size") or run.data.tags.get("image_size", 128)),
                   pd.read_csv(oof_path) if oof_path else None, pd.read_csv(test_path) if test_path else None,
                   json.loads(split_path.read_text()) if split_path else None, dropped)


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

    return mlflow.keras.load_model(f"runs:/{run_id}/model", load_model_kwargs={"safe_mode": True})

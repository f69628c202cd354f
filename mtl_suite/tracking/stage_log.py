"""MLflow I/O of a stage run: lineage queries (which run a stage may start from), what a run records at its start
(tags, params, config, split), its artifacts, and the logged Keras model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import RunStatus
from mlflow.models import infer_signature

from mtl_suite.catalog import RunKind
from mtl_suite.config import ExperimentConfig
from mtl_suite.data.lineage import Exposure
from mtl_suite.data.splits import save_split
from mtl_suite.errors import UserError
from mtl_suite.run_files import BACKBONE_ARCHIVE, BACKBONE_DIR, CONFIG, EXPOSURE, KERAS_MODEL, MODEL_INFO, ModelInfo
from mtl_suite.tasks import TaskData
from mtl_suite.tracking.requirements import model_requirements
from mtl_suite.tracking.runs import config_params, git_commit, log_split

FINISHED = RunStatus.to_string(RunStatus.FINISHED)


def finished_stage_runs(experiment_id: str, stage: str, backbone: str) -> list[str]:
    """The finished stage runs of this backbone that a user launched, newest first: the runs that `compare` makes
    are left out (they belong to their comparison)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.stage = '{stage}' AND tags.backbone = '{backbone}' AND attributes.status = '{FINISHED}' "
                      f"AND tags.run_kind = '{RunKind.STAGE}'",
        order_by=["attributes.start_time DESC"], max_results=200, output_format="list",
    )
    # MLflow's filter language has no "tag is absent", so the comparison runs are dropped here.
    return [run.info.run_id for run in runs if "comparison_run" not in run.data.tags]


def newest_segmentation_run(experiment_id: str) -> str | None:
    """The newest finished `segment train` run of the experiment (its U-Net cuts stage 2's cells from smears
    without masks), or None. Its tags: stage=segmentation, task=train (workflows/segment.py)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.stage = 'segmentation' AND tags.task = 'train' AND attributes.status = '{FINISHED}'",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
    )
    return runs[0].info.run_id if runs else None


def log_exposure(exposure: Exposure) -> None:
    mlflow.log_dict(exposure.to_json(), EXPOSURE)


def read_exposure(run_id: str) -> Exposure | None:
    """None for a run that has no record (made before the suite kept one): what its weights saw is unknown."""
    try:
        return Exposure.from_json(mlflow.artifacts.load_dict(f"runs:/{run_id}/{EXPOSURE}"))
    except mlflow.exceptions.MlflowException:
        return None


def check_parent(run_id: str, stage: str, backbone: str) -> str:
    """An explicit --parent-run must be a finished run of the previous stage with the same backbone."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"--parent-run {run_id}: no such run in the tracking store") from None
    tags = run.data.tags
    if tags.get("stage") != stage:
        raise UserError(f"--parent-run {run_id} is a {tags.get('stage', 'non-stage')} run; expected a {stage} run")
    if tags.get("backbone") != backbone:
        raise UserError(f"--parent-run {run_id} used backbone {tags.get('backbone')!r}; this run uses "
                        f"{backbone!r}. Received: --backbone {backbone}")
    if run.info.status != FINISHED:
        raise UserError(f"--parent-run {run_id} did not finish (status {run.info.status}); pick a finished run")
    return run_id


def download_backbone(run_id: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BACKBONE_ARCHIVE,
                                                    dst_path=str(dst)))


def log_setup(tags: dict[str, str], config: ExperimentConfig, task_data: TaskData | None, workdir: Path) -> None:
    """What the run records before training: its tags, the resolved config as params and YAML, and the split."""
    mlflow.set_tags({"run_kind": RunKind.STAGE, "git_commit": git_commit(), **tags})
    mlflow.log_params(config_params(config))
    mlflow.log_text(yaml.safe_dump(_yaml_ready(dataclasses.asdict(config)), sort_keys=False), CONFIG)
    if task_data is None:
        return
    split_path, digest = save_split(task_data.split, workdir / "split.json")
    log_split(split_path, digest, task_data.split.to_json())
    mlflow.set_tags({"data": task_data.description[:250], "classes": ",".join(task_data.class_names)})
    if task_data.manifest.dropped_duplicates:
        mlflow.log_text("\n".join(task_data.manifest.dropped_duplicates) + "\n", "data/dropped_duplicates.txt")
    if task_data.manifest.skipped:
        mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in task_data.manifest.skipped), "data/skipped_images.tsv")


def log_metrics_and_folder(metrics: dict[str, float], folder: Path | None, artifact_path: str) -> None:
    mlflow.log_metrics(metrics)
    if folder is not None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def log_backbone(archive: Path) -> None:
    mlflow.log_artifact(str(archive), artifact_path=BACKBONE_DIR)


def log_keras_model(model, example, info: ModelInfo) -> None:
    """The classifier (raw pixels in, probabilities out) with a signature, and what serving needs to know."""
    signature = infer_signature(example, model.predict(example, verbose=0))
    # input_example is left out on purpose: mlflow 3.17.2's keras flavour fails on it (FileNotFoundError).
    # Requirements are given, not inferred: inference reloads the model in a subprocess (most of a minute).
    mlflow.keras.log_model(model, name=KERAS_MODEL, signature=signature, pip_requirements=model_requirements())
    mlflow.log_dict(info.to_dict(), MODEL_INFO)


def active_run_id() -> str:
    return mlflow.active_run().info.run_id


def _yaml_ready(value):
    if isinstance(value, dict):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    return value

"""Model registry and run I/O for promotion: the finished stage runs that compete, the version holding an alias,
the run's logged Keras model, the raw-image pyfunc (serving/pyfunc.py) logged next to it, and registering a version
with the aliases moved (`champion`, and `previous` for the version that held it). Registry stages are deprecated in
MLflow 3; aliases are what `models:/<name>@champion` resolves. Which run wins is workflows/promote.py's business."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mtl_suite.catalog import RunKind
from mtl_suite.config import CHAMPION_ALIAS, PREVIOUS_ALIAS
from mtl_suite.errors import UserError
from mtl_suite.run_files import KERAS_MODEL, MODEL_INFO, ModelInfo
from mtl_suite.tracking.requirements import serving_requirements

logger = logging.getLogger(__name__)

PYFUNC_NAME = "serving_model"
LINEAGE_TAGS = ("stage", "backbone", "task", "seed", "image_size", "dataset_digest", "split_digest", "stage1_run",
                "stage2_run", "parent_stage_run", "weights", "weights_sha256", "git_commit")


# --- runs -------------------------------------------------------------------------------------------------------

def finished_stage_runs(experiment_ids: list[str], stage: str, task: str | None = None) -> list[Run]:
    """Finished stage runs of `stage` (and `task`), newest first."""
    filters = [f"tags.run_kind = '{RunKind.STAGE}'", f"tags.stage = '{_quote(stage)}'",
               "attributes.status = 'FINISHED'"]
    if task:
        filters.append(f"tags.task = '{_quote(task)}'")
    return mlflow.search_runs(experiment_ids=experiment_ids, filter_string=" AND ".join(filters),
                              order_by=["attributes.start_time DESC"], max_results=5000, output_format="list")


def finished_stage_run(run_id: str, what: str | None = None) -> Run:
    """The run named by --run-id (or `what`, e.g. 'member run abc'); a user error unless it is a finished stage run."""
    what = what or f"run {run_id}"
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise UserError(f"{what}: no such run in the tracking store") from None
    if run.data.tags.get("run_kind") != RunKind.STAGE:
        raise UserError(f"{what} is not a stage run (tag run_kind={run.data.tags.get('run_kind')!r})")
    if run.info.status != "FINISHED":
        raise UserError(f"{what} did not finish (status {run.info.status}); pick a finished run")
    return run


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The metric as logged by the run the version came from; None if it has no run or no such metric."""
    if not version.run_id:
        return None
    try:
        return client.get_run(version.run_id).data.metrics.get(metric)
    except MlflowException:
        return None


def fetch_model(run_id: str, workdir: Path) -> tuple[Path, Path, ModelInfo]:
    """Download the run's Keras model folder and model_info.json (which must name class_names and image_size). The
    file itself is returned too: the pyfunc packs it as it was logged."""
    try:
        keras_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{KERAS_MODEL}",
                                                             dst_path=str(workdir / "keras")))
        info_path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_INFO,
                                                             dst_path=str(workdir / "info")))
    except (MlflowException, OSError) as exc:
        raise UserError(f"run {run_id} has no usable logged model (artifacts '{KERAS_MODEL}' and '{MODEL_INFO}'): "
                        f"{first_line(exc)}") from None
    return keras_dir, info_path, ModelInfo.read(info_path, f"run {run_id}'s {MODEL_INFO}")


def fetch_reliability(run_id: str, workdir: Path) -> Path:
    """The run's `reliability/` folder (OOD detector, conformal calibration: training/reliability.py)."""
    from mtl_suite.training.reliability import ARTIFACT, INFO_FILE

    try:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT,
                                                          dst_path=str(workdir / "reliability")))
    except (MlflowException, OSError):
        folder = None
    if folder is None or not (folder / INFO_FILE).is_file():
        raise UserError(f"run {run_id} has no '{ARTIFACT}/' artifact (the out-of-distribution detector and the "
                        "prediction sets' calibration that every served model carries): it was made by an older "
                        "mtl-suite; train it again, or combine such runs with `mtl-suite ensemble`, which fits them")
    return folder


# --- logging and registering ------------------------------------------------------------------------------------

def log_pyfunc(run: Run, keras_dir: Path, info_path: Path, info: ModelInfo, reliability_dir: Path,
               example: pd.DataFrame) -> str:
    """Log the raw-image pyfunc as a logged model linked to the stage run (without reopening that run)."""
    from mtl_suite.serving import pyfunc as serving

    signature = serving.signature()
    logged = mlflow.initialize_logged_model(name=PYFUNC_NAME, source_run_id=run.info.run_id,
                                            experiment_id=run.info.experiment_id,
                                            tags={"mtl_suite.kind": "raw-image-pyfunc"})
    try:
        with tempfile.TemporaryDirectory(prefix="mtl-suite-code-") as tmp:
            info_model = mlflow.pyfunc.log_model(
                name=PYFUNC_NAME, python_model=str(Path(serving.__file__).with_name("model_code.py")),
                model_id=logged.model_id, code_paths=[str(package_code(Path(tmp)))],
                artifacts={serving.KERAS_ARTIFACT: str(keras_dir), serving.INFO_ARTIFACT: str(info_path),
                           serving.RELIABILITY_ARTIFACT: str(reliability_dir)},
                signature=signature, input_example=example, pip_requirements=serving_requirements(),
                metadata={"mtl_suite": info.to_metadata()},
            )
    except Exception:
        mlflow.MlflowClient().finalize_logged_model(logged.model_id, "FAILED")
        raise
    return info_model.model_uri


def package_code(folder: Path) -> Path:
    """A copy of the mtl_suite package without its bundled data (sample images, weights) or caches, for the model's
    code_paths: MLflow stores it with the model and puts it on sys.path when the model loads, so the model serves
    from any environment that has its requirements, the suite installed or not."""
    import mtl_suite

    target = folder / "mtl_suite"
    shutil.copytree(Path(mtl_suite.__file__).parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "assets"))
    return target


def register(client: MlflowClient, name: str, run: Run, model_uri: str, *, extra_tags: dict[str, str],
             description: str, previous: ModelVersion | None) -> ModelVersion:
    """Register `model_uri` as a version of `name` carrying the run's lineage tags, give it the champion alias and
    `previous` (the version that held the champion alias until now) the previous alias."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=(
            "mtl-suite ALL classifier: raw images in (base64 file bytes or uint8 array), class probabilities out. "
            f"Load models:/{name}@{CHAMPION_ALIAS}."))
    tags = {k: v for k, v in run.data.tags.items() if k in LINEAGE_TAGS and v}
    tags.update(extra_tags)
    # Idempotent: a promotion interrupted after registering (before the aliases) left a version of this run;
    # rerunning reuses it rather than registering the same model twice.
    # A logged model's URI (models:/m-<id>) needs its model_id alongside: a tracking server refuses the source
    # otherwise ("The model_id request parameter must identify the resource that contains the source"); a local
    # store never checked it.
    version = _version_of_run(client, name, run.info.run_id, model_uri) or client.create_model_version(
        name, source=model_uri, run_id=run.info.run_id, model_id=logged_model_id(model_uri), tags=tags,
        description=description)
    version = _wait_ready(client, name, version)
    if previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, previous.version)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return client.get_model_version(name, version.version)


def logged_model_id(model_uri: str) -> str | None:
    """`m-<id>` of a logged model's URI `models:/m-<id>`; None for any other URI (a run path, a registered model)."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri.removeprefix("models:/")
    return ref if ref.startswith("m-") and "/" not in ref and "@" not in ref else None


def _version_of_run(client: MlflowClient, name: str, run_id: str, model_uri: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [v for v in versions if v.source == model_uri or v.tags.get("stage_run") == run_id]
    return max(same, key=lambda v: int(v.version)) if same else None


def _wait_ready(client: MlflowClient, name: str, version: ModelVersion) -> ModelVersion:
    import time

    deadline = time.monotonic() + 120
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(name, version.version)
    if version.status != "READY":
        raise UserError(f"model version {name}/{version.version} did not become ready (status {version.status})")
    return version


def first_line(exc: BaseException) -> str:
    """An exception's first line, short enough for a one-line user error."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

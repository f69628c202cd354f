"""MLflow I/O of `mtl-suite evaluate`: resolve a model URI to the model and what it is (class names, image size, the
logged model and run it came from, its registered name and version), and record one evaluation run linked to it:
tags naming the model and the data, the dataset as a run input, `eval/` metrics (on the logged model's page too when
there is one) and the evaluation files. Which labels map to which class and what the numbers are is decided in
workflows/evaluate.py and analysis/evaluation.py."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException

from mtl_suite.errors import UserError
from mtl_suite.run_files import MODEL_INFO, ModelInfo
from mtl_suite.serving.pyfunc import COVERAGE_PARAM
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.registry import fetch_reliability, first_line, logged_model_id
from mtl_suite.tracking.runs import log_input

METRIC_PREFIX = "eval/"
ARTIFACT_PATH = "eval"


@dataclass(frozen=True)
class EvaluatedModel:
    """A loaded model and where it came from."""

    uri: str
    # serving/pyfunc.py's contract: column `image` in, rows out; the prediction sets' coverage
    predict: Callable[[pd.DataFrame, float], pd.DataFrame]
    class_names: list[str]
    image_size: int
    kind: str  # "raw-image-pyfunc" (registered by promote) or "keras" (a stage run's model, wrapped alike here)
    model_id: str | None = None  # the MLflow 3 logged model (m-...), when there is one
    source_run_id: str | None = None  # the run that made the model
    registered_name: str | None = None
    registered_version: str | None = None

    @property
    def label(self) -> str:
        """How the evaluation run names the model: its registered name, else its logged model id, else its run."""
        if self.registered_name:
            return self.registered_name
        if self.model_id:
            return self.model_id
        if self.source_run_id:
            return self.source_run_id
        return Path(self.uri.rstrip("/")).name or self.uri

    def tags(self) -> dict[str, str]:
        out = {"evaluated_model_uri": self.uri, "evaluated_model_id": self.model_id,
               "evaluated_run_id": self.source_run_id, "evaluated_model_name": self.registered_name,
               "evaluated_model_version": self.registered_version, "evaluated_model_kind": self.kind}
        return {k: v for k, v in out.items() if v}


def load_model(model_uri: str, tracking_uri: str) -> EvaluatedModel:
    """The model behind `model_uri` (models:/name/version, models:/name@alias, models:/m-..., runs:/id/path or a
    local folder); a URI that names nothing, or a model that is not the suite's, is a one-line UserError."""
    import mlflow.pyfunc

    import mtl_suite.models.serializable  # noqa: F401  registers the suite's layers for the safe-mode load

    if model_uri.startswith(("models:/", "runs:/")):  # a local folder needs no store
        check_tracking_uri(tracking_uri)
    elif ":/" not in model_uri and not Path(model_uri).exists():
        raise UserError(f"MODEL {model_uri}: no such model folder; expected a models:/ or runs:/ URI or a folder")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # its bars would split our lines
    mlflow.set_tracking_uri(tracking_uri)
    name, version, model_id, run_id = _origin(model_uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load model {model_uri}: {first_line(exc)}") from None
    meta = pyfunc.metadata
    if model_id is None and getattr(meta, "model_id", None):
        # a folder's MLmodel may name a logged model of another store: linked only when it is in this one
        model_id, in_store, model_run = meta.model_id, *_logged_model(meta.model_id)
        model_id = model_id if in_store else None
        run_id = run_id or model_run
    run_id = run_id or getattr(meta, "run_id", None)
    described = (meta.metadata or {}).get("mtl_suite")  # what `promote` wrote into the MLmodel file
    if described:
        info, kind = ModelInfo.from_dict(described, f"{model_uri}: its MLmodel metadata"), "raw-image-pyfunc"

        def predict(frame: pd.DataFrame, coverage: float) -> pd.DataFrame:
            return pyfunc.predict(frame, params={COVERAGE_PARAM: coverage})
    elif "keras" in meta.flavors:
        info = _stage_model_info(model_uri, run_id)
        kind, predict = "keras", _raw_image_classifier(pyfunc.get_raw_model(), info, run_reliability(run_id))
    else:
        raise UserError(f"{model_uri} is not an mtl-suite model: neither the raw-image pyfunc of `mtl-suite "
                        f"promote` nor a stage run's Keras model (flavors: {', '.join(meta.flavors) or 'none'})")
    return EvaluatedModel(uri=model_uri, predict=predict, class_names=list(info.class_names),
                          image_size=info.image_size, kind=kind, model_id=model_id, source_run_id=run_id,
                          registered_name=name, registered_version=version)


def _raw_image_classifier(keras_model, info: ModelInfo,
                          reliability) -> Callable[[pd.DataFrame, float], pd.DataFrame]:
    """A stage run's Keras model behind the registered pyfunc's own class, so images are read, checked and resized
    exactly as `predict` and `serve` do (the class is set up by hand here instead of from a model's artifacts)."""
    from mtl_suite.serving.pyfunc import MtlImageClassifier

    classifier = MtlImageClassifier()
    classifier.use(info, keras_model, reliability)
    return lambda frame, coverage: classifier.predict(None, frame, {COVERAGE_PARAM: coverage})


def run_reliability(run_id: str | None):
    """The run's reliability parts (training/reliability.py), or None for a run made before the suite fitted them."""
    import tempfile

    from mtl_suite.training.reliability import Reliability

    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="mtl-reliability-") as tmp:
        try:
            return Reliability.load(fetch_reliability(run_id, Path(tmp)))
        except UserError:
            return None


def _origin(model_uri: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(registered name, version, logged model id, source run id) as far as the URI itself says."""
    client = mlflow.MlflowClient()
    if model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        return None, None, None, run_id or None
    if not model_uri.startswith("models:/"):
        return None, None, None, None
    model_id = logged_model_id(model_uri)
    if model_id:
        return None, None, model_id, _logged_model(model_id)[1]
    ref = model_uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise UserError(f"model URI {model_uri}: expected models:/<name>/<version>, models:/<name>@<alias> "
                            f"or models:/m-<id>")
    except MlflowException as exc:
        raise UserError(f"{model_uri} not found in {mlflow.get_tracking_uri()} (register one with `mtl-suite "
                        f"promote`): {first_line(exc)}") from None
    return version.name, str(version.version), getattr(version, "model_id", None) or None, version.run_id or None


def _logged_model(model_id: str) -> tuple[bool, str | None]:
    """(whether this store has the logged model, the run that made it)."""
    try:
        return True, mlflow.get_logged_model(model_id).source_run_id or None
    except MlflowException:
        return False, None


def _stage_model_info(model_uri: str, run_id: str | None) -> ModelInfo:
    """A stage run's Keras model carries no class names itself; its run's model_info.json does."""
    what = (f"{model_uri} is not an mtl-suite model: its metadata names no classes and "
            f"{'it has no run' if not run_id else f'its run {run_id} has no {MODEL_INFO}'}")
    if not run_id:
        raise UserError(what)
    try:
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{MODEL_INFO}")
    except (MlflowException, OSError, ValueError):
        raise UserError(what) from None
    return ModelInfo.from_dict(data, f"{model_uri}: run {run_id}'s {MODEL_INFO}")


def log_evaluation(experiment_id: str, run_id: str | None, run_name: str, tags: dict[str, str],
                   metrics: dict[str, float], folder: Path, dataset_rows: pd.DataFrame, dataset_source: str,
                   dataset_name: str, model_id: str | None) -> str:
    """One finished evaluation run: tags, the dataset (and the logged model) as inputs, `eval/` metrics linked to
    both, and the files under `eval/`. `run_id`: a run to use (the one `mlflow run` made), else a new one."""
    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow warns, harmlessly
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(dataset_rows, source=dataset_source, targets="label", name=dataset_name)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(tags)
        log_input(dataset, context="evaluation", model=LoggedModelInput(model_id) if model_id else None)
        # run_id given: MLflow reads the run afresh, so the inputs just logged are not logged a second time
        mlflow.log_metrics({f"{METRIC_PREFIX}{k}": v for k, v in metrics.items()}, run_id=run.info.run_id,
                           model_id=model_id, dataset=dataset)
        mlflow.log_artifacts(str(folder), artifact_path=ARTIFACT_PATH)
        return run.info.run_id

"""Promotion to the model registry: pick the best finished stage run by a metric, wrap its Keras model in the
raw-image pyfunc (serving/pyfunc.py), register it, and move the aliases (`champion`, and `previous` for the version
that held it). Registry stages are deprecated in MLflow 3; aliases are what `models:/<name>@champion` resolves."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mtl_suite.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_NAME = "mtl-all-classifier"
DEFAULT_METRIC = "cv/f1_macro_mean"
CHAMPION, PREVIOUS = "champion", "previous"
PYFUNC_NAME = "serving_model"
LINEAGE_TAGS = ("stage", "backbone", "task", "seed", "image_size", "dataset_digest", "split_digest", "stage1_run",
                "stage2_run", "parent_stage_run", "weights", "weights_sha256", "git_commit")
SHOWN_METRICS = ("cv/accuracy_mean", "cv/f1_macro_mean", "cv/f1_macro_std", "cv/auc_macro_mean", "test/accuracy",
                 "test/f1_macro", "test/auc_macro")


@dataclass(frozen=True)
class PromoteRequest:
    experiment_ids: list[str]
    stage: str = "stage3"
    task: str | None = None
    metric: str = DEFAULT_METRIC
    greater_is_better: bool = True
    name: str = DEFAULT_NAME
    run_id: str | None = None  # promote this run instead of searching
    dry_run: bool = False
    force: bool = False


@dataclass
class PromotePlan:
    candidate: Run
    value: float
    ranking: pd.DataFrame
    champion: ModelVersion | None = None
    champion_value: float | None = None
    action: str = "register"  # register | refuse | already
    reason: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PromoteOutcome:
    plan: PromotePlan
    version: ModelVersion | None
    model_uri: str | None


# --- choosing ---------------------------------------------------------------------------------------------------

def candidate_runs(request: PromoteRequest) -> list[Run]:
    if request.run_id:
        return [_explicit_run(request.run_id)]
    filters = [f"tags.run_kind = 'stage'", f"tags.stage = '{_quote(request.stage)}'",
               "attributes.status = 'FINISHED'"]
    if request.task:
        filters.append(f"tags.task = '{_quote(request.task)}'")
    runs = mlflow.search_runs(experiment_ids=request.experiment_ids, filter_string=" AND ".join(filters),
                              order_by=["attributes.start_time DESC"], max_results=5000, output_format="list")
    if not runs:
        task = f", task {request.task}" if request.task else ""
        raise UserError(f"no finished {request.stage} run (run_kind=stage{task}) in the experiment(s) searched; "
                        f"train one first, e.g. `mtl-suite {request.stage}`")
    return runs


def rank(runs: list[Run], metric: str, greater_is_better: bool = True) -> pd.DataFrame:
    """Runs that have the metric, best first; ties go to the newer run."""
    rows = [{"run_id": r.info.run_id, "value": r.data.metrics[metric], "start_time": r.info.start_time,
             "backbone": r.data.tags.get("backbone", ""), "task": r.data.tags.get("task", ""),
             "seed": r.data.tags.get("seed", ""), "run_name": r.info.run_name}
            for r in runs if metric in r.data.metrics]
    if not rows:
        known = sorted({k for r in runs for k in r.data.metrics if k.startswith(("cv/", "test/"))})
        raise UserError(f"no candidate run has the metric {metric!r}. Metrics they have: "
                        f"{', '.join(known[:30]) or 'none'}{' ...' if len(known) > 30 else ''}")
    frame = pd.DataFrame(rows)
    return frame.sort_values(["value", "start_time"], ascending=[not greater_is_better, False],
                             kind="mergesort").reset_index(drop=True)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def plan_promotion(request: PromoteRequest, client: MlflowClient) -> PromotePlan:
    runs = candidate_runs(request)
    ranking = rank(runs, request.metric, request.greater_is_better)
    by_id = {r.info.run_id: r for r in runs}
    best = by_id[ranking.loc[0, "run_id"]]
    plan = PromotePlan(candidate=best, value=float(ranking.loc[0, "value"]), ranking=ranking)
    plan.champion = current_champion(client, request.name)
    if plan.champion is None:
        plan.reason = f"no version of {request.name!r} holds the alias {CHAMPION!r} yet"
        return plan
    if plan.champion.run_id == best.info.run_id:
        plan.action = "already"
        plan.reason = f"run {best.info.run_id} is already {CHAMPION} (version {plan.champion.version})"
        return plan
    plan.champion_value = _champion_value(client, plan.champion, request.metric)
    better = "higher" if request.greater_is_better else "lower"
    if plan.champion_value is None:
        plan.action = "refuse" if not request.force else "register"
        plan.reason = (f"the {CHAMPION} (version {plan.champion.version}) has no {request.metric} to compare with"
                       + ("; replacing it (--force)" if request.force else "; use --force to replace it anyway"))
        return plan
    worse = (plan.value < plan.champion_value) if request.greater_is_better else (plan.value > plan.champion_value)
    if worse:
        plan.action = "register" if request.force else "refuse"
        plan.reason = (f"{request.metric} {plan.value:.4f} is worse than the {CHAMPION}'s "
                       f"{plan.champion_value:.4f} (version {plan.champion.version}; {better} is better)"
                       + ("; replacing it (--force)" if request.force else "; use --force to promote it anyway"))
    else:
        plan.reason = (f"{request.metric} {plan.value:.4f} vs {CHAMPION} {plan.champion_value:.4f} "
                       f"(version {plan.champion.version})")
    return plan


def _champion_value(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    if not version.run_id:
        return None
    try:
        return client.get_run(version.run_id).data.metrics.get(metric)
    except MlflowException:
        return None


def _explicit_run(run_id: str) -> Run:
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise UserError(f"--run-id {run_id}: no such run in the tracking store") from None
    if run.data.tags.get("run_kind") != "stage":
        raise UserError(f"--run-id {run_id} is not a stage run (tag run_kind={run.data.tags.get('run_kind')!r})")
    if run.info.status != "FINISHED":
        raise UserError(f"--run-id {run_id} did not finish (status {run.info.status}); pick a finished run")
    return run


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


# --- building and registering -----------------------------------------------------------------------------------

def promote(request: PromoteRequest, say: Callable[[str], None] = print) -> PromoteOutcome:
    client = MlflowClient()
    plan = plan_promotion(request, client)
    run_id = plan.candidate.info.run_id
    say(f"best {request.stage} run by {request.metric}: {run_id} ({plan.value:.4f}; "
        f"{len(plan.ranking)} candidate(s)). {plan.reason}")
    if plan.action == "already":
        return PromoteOutcome(plan, plan.champion, f"models:/{request.name}@{CHAMPION}")
    if plan.action == "refuse":
        raise UserError(f"not promoting run {run_id}: {plan.reason}")
    with tempfile.TemporaryDirectory(prefix="mtl-promote-") as tmp:
        keras_dir, info_path, info = fetch_model(run_id, Path(tmp))
        check_loads(run_id, keras_dir, info)  # a model that cannot be loaded never becomes champion
        if request.dry_run:
            say(f"dry run: would register run {run_id} as a new version of {request.name!r} with alias "
                f"{CHAMPION!r}" + (f" (version {plan.champion.version} would get {PREVIOUS!r})"
                                   if plan.champion else ""))
            return PromoteOutcome(plan, None, None)
        model_uri = log_pyfunc(plan.candidate, keras_dir, info_path, info, Path(tmp))
    version = register(client, request, plan, model_uri)
    say(f"registered {request.name} version {version.version} (run {run_id}) as {CHAMPION}"
        + (f"; version {plan.champion.version} is now {PREVIOUS}" if plan.champion else "")
        + f". Serve with: mtl-suite serve --model models:/{request.name}@{CHAMPION}")
    return PromoteOutcome(plan, version, model_uri)


def fetch_model(run_id: str, workdir: Path) -> tuple[Path, Path, dict]:
    try:
        keras_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model",
                                                             dst_path=str(workdir / "keras")))
        info_path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_info.json",
                                                             dst_path=str(workdir / "info")))
    except (MlflowException, OSError) as exc:
        raise UserError(f"run {run_id} has no usable logged model (artifacts 'model' and 'model_info.json'): "
                        f"{_first_line(exc)}") from None
    try:
        info = json.loads(info_path.read_text())
        info["class_names"], info["image_size"]  # noqa: B018 (both are required)
    except (ValueError, KeyError) as exc:
        raise UserError(f"run {run_id}: model_info.json lacks class_names/image_size ({exc})") from None
    if info.get("masks") or info.get("input_masking"):
        raise UserError(f"run {run_id} was trained on masked (segmented) images; the serving model applies only "
                        f"the resize, so it cannot be promoted yet")
    return keras_dir, info_path, info


def check_loads(run_id: str, keras_dir: Path, info: dict) -> None:
    """Load the Keras model and run one blank image through it: it must give one probability per class."""
    import numpy as np

    try:
        model = mlflow.keras.load_model(str(keras_dir), load_model_kwargs={"safe_mode": True})
        size = int(info["image_size"])
        out = np.asarray(model.predict_on_batch(np.zeros((1, size, size, 3), "float32")))
    except Exception as exc:  # any failure here means the artifact is unusable, which is the user's to fix
        raise UserError(f"the model of run {run_id} fails to load or predict: {_first_line(exc)}") from None
    classes = len(info["class_names"])
    if out.shape[-1] not in (classes, 1 if classes == 2 else classes):
        raise UserError(f"the model of run {run_id} gives {out.shape[-1]} outputs for {classes} classes")


def log_pyfunc(run: Run, keras_dir: Path, info_path: Path, info: dict, workdir: Path) -> str:
    """Log the raw-image pyfunc as a logged model linked to the stage run (without reopening that run)."""
    from mtl_suite.serving import pyfunc as serving

    signature = serving.signature()
    logged = mlflow.initialize_logged_model(name=PYFUNC_NAME, source_run_id=run.info.run_id,
                                            experiment_id=run.info.experiment_id,
                                            tags={"mtl_suite.kind": "raw-image-pyfunc"})
    example = pd.DataFrame({"image": [example_image(info)]})
    try:
        info_model = mlflow.pyfunc.log_model(
            name=PYFUNC_NAME, python_model=str(Path(serving.__file__).with_name("model_code.py")),
            model_id=logged.model_id,
            artifacts={serving.KERAS_ARTIFACT: str(keras_dir), serving.INFO_ARTIFACT: str(info_path)},
            signature=signature, input_example=example, pip_requirements=_requirements(),
            metadata={"mtl_suite": {k: info.get(k) for k in ("class_names", "image_size", "backbone")}},
        )
    except Exception:
        mlflow.MlflowClient().finalize_logged_model(logged.model_id, "FAILED")
        raise
    return info_model.model_uri


def example_image(info: dict) -> str:
    """A bundled sample image at the model's size, base64 PNG: small, and a real input the model accepts."""
    import base64
    import io

    from PIL import Image

    from mtl_suite.data.images import read_resized
    from mtl_suite.paths import SAMPLE_IMAGES

    files = sorted(SAMPLE_IMAGES.rglob("*.jpg"))
    size = min(int(info["image_size"]), 96)
    buffer = io.BytesIO()
    Image.fromarray(read_resized(files[0], size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _requirements() -> list[str]:
    """Pinned to what is installed; the model class itself comes from the mtl-suite package (installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow", "opencv-python-headless",
                    "scikit-learn", "mtl-suite"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return out


def _version_of_run(client: MlflowClient, name: str, run_id: str, model_uri: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [v for v in versions if v.source == model_uri or v.tags.get("stage_run") == run_id]
    return max(same, key=lambda v: int(v.version)) if same else None


def register(client: MlflowClient, request: PromoteRequest, plan: PromotePlan, model_uri: str) -> ModelVersion:
    run = plan.candidate
    try:
        client.get_registered_model(request.name)
    except MlflowException:
        client.create_registered_model(request.name, description=(
            "mtl-suite ALL classifier: raw images in (path, base64 bytes or uint8 array), class probabilities out. "
            f"Load models:/{request.name}@{CHAMPION}."))
    tags = {k: v for k, v in run.data.tags.items() if k in LINEAGE_TAGS and v}
    tags.update({"stage_run": run.info.run_id, "promotion_metric": request.metric,
                 "promotion_value": f"{plan.value:.6g}"})
    # Idempotent: a promotion interrupted after registering (before the aliases) left a version of this run;
    # rerunning reuses it rather than registering the same model twice.
    version = _version_of_run(client, request.name, run.info.run_id, model_uri) or client.create_model_version(
        request.name, source=model_uri, run_id=run.info.run_id, tags=tags,
        description=version_description(run, request, plan))
    version = _wait_ready(client, request.name, version)
    if plan.champion is not None:
        client.set_registered_model_alias(request.name, PREVIOUS, plan.champion.version)
    client.set_registered_model_alias(request.name, CHAMPION, version.version)
    return client.get_model_version(request.name, version.version)


def _wait_ready(client: MlflowClient, name: str, version: ModelVersion) -> ModelVersion:
    import time

    deadline = time.monotonic() + 120
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(name, version.version)
    if version.status != "READY":
        raise UserError(f"model version {name}/{version.version} did not become ready (status {version.status})")
    return version


def version_description(run: Run, request: PromoteRequest, plan: PromotePlan) -> str:
    tags, metrics = run.data.tags, run.data.metrics
    shown = [request.metric] + [k for k in SHOWN_METRICS if k != request.metric]
    lines = [f"Promoted by `mtl-suite promote`: best finished {request.stage} run by {request.metric} "
             f"({plan.value:.4f}, {len(plan.ranking)} candidate(s)).", "",
             f"- stage run: {run.info.run_id} ({run.info.run_name}), backbone {tags.get('backbone', '?')}, "
             f"task {tags.get('task', '?')}, image size {tags.get('image_size', '?')}, seed {tags.get('seed', '?')}",
             "- metrics: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics),
             f"- lineage: stage-2 run {tags.get('stage2_run') or '-'}, stage-1 run {tags.get('stage1_run') or '-'}, "
             f"weights {tags.get('weights') or '-'} sha256 {tags.get('weights_sha256') or '-'}",
             f"- data: dataset digest {tags.get('dataset_digest', '-')}, split digest {tags.get('split_digest', '-')}",
             f"- code: git commit {tags.get('git_commit', '-')}"]
    if plan.champion is not None:
        lines.append(f"- replaces version {plan.champion.version} (now '{PREVIOUS}'): {plan.reason}")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

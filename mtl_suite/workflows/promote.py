"""`mtl-suite promote`: pick the best finished stage run by a metric, compare it with the current champion, check
that its Keras model loads and predicts, wrap it in the raw-image pyfunc and register it with the champion alias.
The registry and run I/O is tracking/registry.py; this module decides."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from mtl_suite.analysis.intervals import context_from_metrics
from mtl_suite.analysis.machine import code_description
from mtl_suite.catalog import RunKind, Stage
from mtl_suite.config import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, PREVIOUS_ALIAS
from mtl_suite.errors import UserError
from mtl_suite.run_files import ModelInfo
from mtl_suite.tracking import registry
from mtl_suite.tracking.setup import record_in_launcher_run

logger = logging.getLogger(__name__)

DEFAULT_METRIC = "cv/f1_macro_mean"
# shown where the run has them (as_binary: a multiclass run read as normal vs leukemia, workflows/stage_checks.py)
SHOWN_METRICS = ("cv/accuracy_mean", "cv/f1_macro_mean", "cv/f1_macro_std", "cv/auc_macro_mean", "test/accuracy",
                 "test/f1_macro", "test/auc_macro", "cv/as_binary/accuracy_mean", "test/as_binary/accuracy")


@dataclass(frozen=True)
class PromoteRequest:
    experiment_ids: list[str]
    stage: Stage | str = Stage.STAGE3
    task: str | None = None
    metric: str = DEFAULT_METRIC
    greater_is_better: bool = True
    name: str = DEFAULT_MODEL_NAME
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
        return [registry.finished_stage_run(request.run_id)]
    runs = registry.finished_stage_runs(request.experiment_ids, request.stage, request.task)
    if not runs:
        task = f", task {request.task}" if request.task else ""
        raise UserError(f"no finished {request.stage} run (run_kind={RunKind.STAGE}{task}) in the experiment(s) "
                        f"searched; train one first, e.g. `mtl-suite {request.stage}`")
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


def plan_promotion(request: PromoteRequest, client: MlflowClient) -> PromotePlan:
    runs = candidate_runs(request)
    ranking = rank(runs, request.metric, request.greater_is_better)
    by_id = {r.info.run_id: r for r in runs}
    best = by_id[ranking.loc[0, "run_id"]]
    plan = PromotePlan(candidate=best, value=float(ranking.loc[0, "value"]), ranking=ranking)
    plan.champion = registry.current_champion(client, request.name)
    if plan.champion is None:
        plan.reason = f"no version of {request.name!r} holds the alias {CHAMPION_ALIAS!r} yet"
        return plan
    if plan.champion.run_id == best.info.run_id:
        plan.action = "already"
        plan.reason = f"run {best.info.run_id} is already {CHAMPION_ALIAS} (version {plan.champion.version})"
        return plan
    plan.champion_value = registry.version_metric(client, plan.champion, request.metric)
    better = "higher" if request.greater_is_better else "lower"
    if plan.champion_value is None:
        plan.action = "refuse" if not request.force else "register"
        plan.reason = (f"the {CHAMPION_ALIAS} (version {plan.champion.version}) has no {request.metric} to compare "
                       f"with" + ("; replacing it (--force)" if request.force else "; use --force to replace it anyway"))
        return plan
    worse = (plan.value < plan.champion_value) if request.greater_is_better else (plan.value > plan.champion_value)
    if worse:
        plan.action = "register" if request.force else "refuse"
        plan.reason = (f"{request.metric} {plan.value:.4f} is worse than the {CHAMPION_ALIAS}'s "
                       f"{plan.champion_value:.4f} (version {plan.champion.version}; {better} is better)"
                       + ("; replacing it (--force)" if request.force else "; use --force to promote it anyway"))
    else:
        plan.reason = (f"{request.metric} {plan.value:.4f} vs {CHAMPION_ALIAS} {plan.champion_value:.4f} "
                       f"(version {plan.champion.version})")
    return plan


# --- building and registering -----------------------------------------------------------------------------------

def promote(request: PromoteRequest, say: Callable[[str], None] = print,
            plan: PromotePlan | None = None) -> PromoteOutcome:
    """Carry out `plan` (plan_promotion's for `request`; made here when not given)."""
    client = MlflowClient()
    plan = plan or plan_promotion(request, client)
    run_id = plan.candidate.info.run_id
    # a test accuracy is said with its n, 95% interval and majority class (runs logged before those: the bare value)
    context = context_from_metrics(plan.candidate.data.metrics) if request.metric == "test/accuracy" else None
    say(f"best {request.stage} run by {request.metric}: {run_id} ({context.text() if context else f'{plan.value:.4f}'}"
        f"; {len(plan.ranking)} candidate(s)). {plan.reason}")
    if plan.action == "already":
        return PromoteOutcome(plan, plan.champion, f"models:/{request.name}@{CHAMPION_ALIAS}")
    if plan.action == "refuse":
        raise UserError(f"not promoting run {run_id}: {plan.reason}")
    with tempfile.TemporaryDirectory(prefix="mtl-promote-") as tmp:
        keras_dir, info_path, info = registry.fetch_model(run_id, Path(tmp))
        check_servable(run_id, info)
        check_loads(run_id, keras_dir, info)  # a model that cannot be loaded never becomes champion
        reliability_dir = registry.fetch_reliability(run_id, Path(tmp))
        check_reliability(run_id, reliability_dir, info)  # nor one that cannot say when an image is unlike its own
        if request.dry_run:
            say(f"dry run: would register run {run_id} as a new version of {request.name!r} with alias "
                f"{CHAMPION_ALIAS!r}" + (f" (version {plan.champion.version} would get {PREVIOUS_ALIAS!r})"
                                         if plan.champion else ""))
            return PromoteOutcome(plan, None, None)
        example = pd.DataFrame({"image": [example_image(info)]})
        model_uri = registry.log_pyfunc(plan.candidate, keras_dir, info_path, info, reliability_dir, example)
    version = registry.register(
        client, request.name, plan.candidate, model_uri, previous=plan.champion,
        extra_tags={"stage_run": run_id, "promotion_metric": request.metric, "promotion_value": f"{plan.value:.6g}"},
        description=version_description(plan.candidate, request, plan))
    say(f"registered {request.name} version {version.version} (run {run_id}) as {CHAMPION_ALIAS}"
        + (f"; version {plan.champion.version} is now {PREVIOUS_ALIAS}" if plan.champion else "")
        + f". Serve with: mtl-suite serve --model models:/{request.name}@{CHAMPION_ALIAS}")
    record_in_launcher_run(plan.candidate.info.experiment_id, {  # `mlflow run . -e promote`'s run
        "run_kind": RunKind.PROMOTION, "mlflow.runName": f"promote-{request.name}-v{version.version}",
        "registered_model": request.name, "registered_version": str(version.version), "stage_run": run_id})
    return PromoteOutcome(plan, version, model_uri)


def check_servable(run_id: str, info: ModelInfo) -> None:
    """The serving pyfunc applies only the resize: a model trained on masked (segmented) images would be fed
    unmasked ones."""
    if info.input_masking:
        raise UserError(f"run {run_id} was trained on masked (segmented) images; the serving model applies only "
                        f"the resize, so it cannot be promoted yet")


def check_loads(run_id: str, keras_dir: Path, info: ModelInfo) -> None:
    """Load the Keras model and run one blank image through it: it must give one probability per class."""
    import mlflow
    import numpy as np

    import mtl_suite.models.serializable  # noqa: F401  registers the suite's layers for the safe-mode load

    try:
        model = mlflow.keras.load_model(str(keras_dir), load_model_kwargs={"safe_mode": True})
        size = info.image_size
        out = np.asarray(model.predict_on_batch(np.zeros((1, size, size, 3), "float32")))
    except Exception as exc:  # any failure here means the artifact is unusable, which is the user's to fix
        raise UserError(f"the model of run {run_id} fails to load or predict: {registry.first_line(exc)}") from None
    classes = len(info.class_names)
    if out.shape[-1] not in (classes, 1 if classes == 2 else classes):
        raise UserError(f"the model of run {run_id} gives {out.shape[-1]} outputs for {classes} classes")


def check_reliability(run_id: str, folder: Path, info: ModelInfo) -> None:
    """The detector loads, is made for the model's input size, and flags a blank image (nothing like a smear)."""
    import numpy as np

    from mtl_suite.training.reliability import Reliability

    try:
        reliability = Reliability.load(folder)
        blank = reliability.scores(np.zeros((1, reliability.image_size, reliability.image_size, 3), "uint8"))
    except Exception as exc:  # an unusable artifact is the user's to fix (train again), as in check_loads
        raise UserError(f"the reliability parts of run {run_id} fail to load or score: "
                        f"{registry.first_line(exc)}") from None
    if reliability.image_size != info.image_size:
        raise UserError(f"run {run_id}: its detector reads {reliability.image_size} px images, its model "
                        f"{info.image_size} px")
    if not blank[0] > reliability.threshold:
        logger.warning("run %s: the detector does not flag a blank image (score %.1f, threshold %.1f)", run_id,
                       blank[0], reliability.threshold)


def example_image(info: ModelInfo) -> str:
    """A bundled sample image at the model's size, base64 PNG: small, and a real input the model accepts."""
    import base64
    import io

    from PIL import Image

    from mtl_suite.data.images import read_resized
    from mtl_suite.paths import SAMPLE_IMAGES

    files = sorted(SAMPLE_IMAGES.rglob("*.jpg"))
    size = min(info.image_size, 96)
    buffer = io.BytesIO()
    Image.fromarray(read_resized(files[0], size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def model_line(tags: dict[str, str], metrics: dict[str, float]) -> str:
    """What the registered model averages, and how it holds up on re-stained images beside colour alone: a model
    with colour fusion reads stain as well as cells, which whoever serves it should know."""
    line = (f"- model: {tags.get('final_model', 'refit')}, test-time {tags.get('tta', 'none')}, colour fusion "
            f"{tags.get('colour_fusion', 'none')}")
    shifted = metrics.get("robustness/stain_shift_accuracy")
    if shifted is not None:
        line += f"; on re-stained test images {shifted:.4f}"
        colour = metrics.get("robustness/shortcut_stain_shift_accuracy")
        line += f" (colour alone {colour:.4f})" if colour is not None else ""
    return line


def reliability_line(tags: dict[str, str], metrics: dict[str, float]) -> str:
    """What the served model's flags and sets did on the run's test part, and on another lab's images if it was
    scored on them: whoever serves it should know both."""
    line = "- reliability: "
    if "test/ood/flagged_share" not in metrics:
        return line + "not measured on a test part"
    line += (f"{metrics['test/ood/flagged_share']:.1%} of the test part flagged as unlike the training images"
             + (f" (accuracy on the rest {metrics['test/ood/unflagged_accuracy']:.4f})"
                if "test/ood/unflagged_accuracy" in metrics else ""))
    if "test/conformal_99/coverage" in metrics:
        line += f"; 99% prediction sets covered {metrics['test/conformal_99/coverage']:.4f}"
    if "external/called_expected_share" in metrics:
        line += (f"; on {tags.get('external_data', 'external images')} (all {tags.get('external_class', '?')}): "
                 f"{metrics['external/called_expected_share']:.1%} called so, {metrics['external/flagged_share']:.1%} "
                 f"flagged, {metrics['external/confident_wrong_share']:.1%} called otherwise without a flag")
    return line


def version_description(run: Run, request: PromoteRequest, plan: PromotePlan) -> str:
    tags, metrics = run.data.tags, run.data.metrics
    shown = [request.metric] + [k for k in SHOWN_METRICS if k != request.metric]
    lines = [f"Promoted by `mtl-suite promote`: best finished {request.stage} run by {request.metric} "
             f"({plan.value:.4f}, {len(plan.ranking)} candidate(s)).", "",
             f"- stage run: {run.info.run_id} ({run.info.run_name}), backbone {tags.get('backbone', '?')}, "
             f"task {tags.get('task', '?')}, image size {tags.get('image_size', '?')}, seed {tags.get('seed', '?')}",
             "- metrics: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics),
             model_line(tags, metrics),
             reliability_line(tags, metrics),
             f"- lineage: stage-2 run {tags.get('stage2_run') or '-'}, stage-1 run {tags.get('stage1_run') or '-'}, "
             f"weights {tags.get('weights') or '-'} sha256 {tags.get('weights_sha256') or '-'}",
             f"- data: dataset digest {tags.get('dataset_digest', '-')}, split digest {tags.get('split_digest', '-')}",
             f"- code: {code_description(tags.get('git_commit', ''))}"]
    if plan.champion is not None:
        lines.append(f"- replaces version {plan.champion.version} (now '{PREVIOUS_ALIAS}'): {plan.reason}")
    return "\n".join(lines)

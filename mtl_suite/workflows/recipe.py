"""`mtl-suite train RECIPE`: everything a recipe (recipes.py) needs, in order: each member's final stage (running the
stages it stands on when missing; a member whose run finished in an earlier attempt is reused), the ensemble of the
members when there are several, then `promote` of the final run. A recipe run (run_kind recipe) records what was
made: the recipe file, its runs, the final run and the registered version; under `mlflow run . -e train` it is the
run MLflow made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlflow import MlflowClient

from mtl_suite.catalog import RunKind
from mtl_suite.config import CHAMPION_ALIAS, DEFAULT_MODEL_NAME
from mtl_suite.recipes import Recipe
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.workflows.ensemble import EnsembleRequest, make_ensemble
from mtl_suite.workflows.promote import PromoteOutcome, PromoteRequest, plan_promotion, promote
from mtl_suite.workflows.reliability import ExternalCheck
from mtl_suite.workflows.stage import StageRequest, run_stage


@dataclass(frozen=True)
class TrainRequest:
    recipe: Recipe
    model_name: str = DEFAULT_MODEL_NAME
    normal_class: str | None = None  # multiclass data: also read the calls as this class vs leukemia
    external: ExternalCheck | None = None  # the final model also scored on another lab's images
    force: bool = False  # make it the champion even when the current one scores better
    quiet: bool = False
    # train every member again; by default a rerun reuses each member whose run with the same settings, data, split
    # and parent finished, and resumes one that was interrupted, so a recipe of hours survives a crash
    fresh: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    member_runs: tuple[str, ...]
    final_run: str
    promotion: PromoteOutcome | None  # None: the champion scores better and stays (no --force)
    recipe_run: str
    tracking_uri: str
    experiment_id: str

    @property
    def model_uri(self) -> str | None:
        version = self.promotion and self.promotion.version
        return f"models:/{version.name}/{version.version}" if version else None


def train_recipe(request: TrainRequest, say: Callable[[str], None] = print) -> TrainOutcome:
    recipe = request.recipe
    tracking = recipe.config.tracking
    uri, experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)
    launcher_run = take_launcher_run(experiment_id)  # `mlflow run . -e train`'s run becomes the recipe run
    say(f"recipe {recipe.path}: {_describe(recipe)}")
    members = tuple(_train_member(request, index, say) for index in range(len(recipe.members)))
    final = _ensemble(request, members, say) if recipe.is_ensemble else members[0]
    MlflowClient().log_artifact(final, str(recipe.path), "recipe")
    promotion = _promote(request, final, experiment_id, say)
    recipe_run = _record(request, launcher_run, experiment_id, members, final, promotion)
    outcome = TrainOutcome(members, final, promotion, recipe_run, uri, experiment_id)
    _say_where(outcome, request, say)
    return outcome


def _describe(recipe: Recipe) -> str:
    train, data = recipe.config.train, recipe.config.data
    size = f"{data.image_size} px" if data.image_size else "its own size"
    models = f"an ensemble of {len(recipe.members)} runs" if recipe.is_ensemble else "one model"
    return f"{recipe.stage} {recipe.task}, {train.backbone} at {size}, {models}, then promote"


def _train_member(request: TrainRequest, index: int, say: Callable[[str], None]) -> str:
    recipe = request.recipe
    label = f"member {index + 1} of {len(recipe.members)}" if recipe.is_ensemble else "the model"
    say(f"recipe {recipe.name}: training {label}")
    outcome = run_stage(StageRequest(
        stage=recipe.stage, config=recipe.members[index], task=recipe.task, normal_class=request.normal_class,
        quiet=request.quiet, extra_tags=tuple(recipe.tags().items()),
        name_prefix=f"{recipe.name}-m{index + 1}-" if recipe.is_ensemble else f"{recipe.name}-",
        external=None if recipe.is_ensemble else request.external,
        resume="never" if request.fresh else "auto", reuse_finished=not request.fresh), say=say)
    return outcome.run_id


def _ensemble(request: TrainRequest, members: tuple[str, ...], say: Callable[[str], None]) -> str:
    tracking = request.recipe.config.tracking
    outcome = make_ensemble(EnsembleRequest(members, tracking.tracking_uri, tracking.experiment, request.normal_class,
                                            request.quiet, request.external,
                                            extra_tags=tuple(request.recipe.tags().items())), say=say)
    return outcome.run_id


def _promote(request: TrainRequest, final: str, experiment_id: str,
             say: Callable[[str], None]) -> PromoteOutcome | None:
    """The final run becomes the champion unless the current champion scores better on the promotion metric (then
    it stays, and the user is told how to replace it anyway)."""
    promote_request = PromoteRequest(experiment_ids=[experiment_id], stage=request.recipe.stage,
                                     task=str(request.recipe.task), name=request.model_name, run_id=final,
                                     force=request.force)
    plan = plan_promotion(promote_request, MlflowClient())
    if plan.action == "refuse":
        say(f"not promoted: {plan.reason}. Replace the {CHAMPION_ALIAS} anyway with: mtl-suite promote "
            f"{final} --name {request.model_name} --force")
        return None
    return promote(promote_request, say=say, plan=plan)  # the plan just made, not a second search


def _record(request: TrainRequest, launcher_run: str | None, experiment_id: str, members: tuple[str, ...],
            final: str, promotion: PromoteOutcome | None) -> str:
    """The recipe run: made once the work is done (a mistake found on the way leaves no run), or `mlflow run`'s."""
    recipe, client = request.recipe, MlflowClient()
    run_id = launcher_run or client.create_run(experiment_id, run_name=f"recipe-{recipe.name}").info.run_id
    version = promotion.version if promotion else None
    tags = {"run_kind": RunKind.RECIPE, **recipe.tags(), "stage": recipe.stage, "task": recipe.task,
            "member_runs": ",".join(members), "final_run": final, "registered_model": request.model_name,
            "registered_version": str(version.version) if version else "",
            "mlflow.note.content": _note(recipe, members, final, request.model_name, version)}
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    client.log_artifact(run_id, str(recipe.path), "recipe")
    for run in members if recipe.is_ensemble else ():
        client.set_tag(run, "recipe_run", run_id)
    client.set_tag(final, "recipe_run", run_id)
    if launcher_run is None:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _note(recipe: Recipe, members: tuple[str, ...], final: str, name: str, version) -> str:
    made = f"ensemble run {final} of member runs {', '.join(members)}" if recipe.is_ensemble else f"run {final}"
    registered = (f"registered as {name} version {version.version} ({CHAMPION_ALIAS})" if version else
                  f"not registered: the {CHAMPION_ALIAS} of {name} scores better")
    return f"Recipe {recipe.path.name} (digest {recipe.digest}): {made}; {registered}."


def _say_where(outcome: TrainOutcome, request: TrainRequest, say: Callable[[str], None]) -> None:
    say(f"recipe run {outcome.recipe_run}, final run {outcome.final_run} in {outcome.tracking_uri}")
    if outcome.promotion is not None:
        uri_option = f" --tracking-uri {outcome.tracking_uri}"
        say(f"serve the champion with: mtl-suite serve --model models:/{request.model_name}@{CHAMPION_ALIAS}"
            f"{uri_option}  (or: MLFLOW_TRACKING_URI={outcome.tracking_uri} mlflow models serve -m "
            f"models:/{request.model_name}@{CHAMPION_ALIAS} --env-manager local)")


"""`mtl-suite train RECIPE`: everything a recipe (recipes.py) needs, in order: each member's final stage (running the
stages it stands on when missing; a member whose run finished in an earlier attempt is reused), the ensemble of the
members when there are several, then `promote` of the final run. A recipe run (run_kind recipe) records what was
made: the recipe file, its runs, the final run and the registered version; under `mlflow run . -e train` it is the
run MLflow made.

Shared by workers (`--storage`): the same command on several machines splits the recipe into units
(catalog.training_units, claimed through the Optuna storage as assess and compare do, tuning/units.py): the first
member's stage chain, then every other member's final stage side by side, the ensemble once every member is done, then
the promotion and the recipe run, made by whichever worker is free. A unit whose worker died is run again by another
(its stage run closed KILLED, then adopted by the redo). Every worker ends with the same registered version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient, get_tracking_uri

from mtl_suite import progress
from mtl_suite.catalog import (
    PROMOTE_STEP, RunKind, Stage, Unit, UnitSharing, recipe_unit_key, training_units, unit_member,
)
from mtl_suite.config import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, ExperimentConfig, keyed_settings
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_file, sha256_text
from mtl_suite.recipes import Recipe
from mtl_suite.tracking.comparison_runs import close_dead_worker_runs, run_exists
from mtl_suite.tracking.reachability import mask_password
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.tuning.units import BLOCKED, DONE, FAILED, BoardView, UnitBoard, run_result
from mtl_suite.workflows.ensemble import EnsembleRequest, make_ensemble
from mtl_suite.workflows.promote import PromoteOutcome, PromoteRequest, plan_promotion, promote
from mtl_suite.workflows.reliability import ExternalCheck
from mtl_suite.workflows.stage import StageOutcome, StageRequest, run_stage


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
    sharing: UnitSharing = UnitSharing()  # where the members' units are shared by workers (default: member by member)


@dataclass(frozen=True)
class TrainOutcome:
    member_runs: tuple[str, ...]
    final_run: str
    model_uri: str | None  # models:/<name>/<version>; None: the champion scores better and stays (no --force)
    recipe_run: str
    tracking_uri: str
    experiment_id: str


def train_recipe(request: TrainRequest, say: Callable[[str], None] = print) -> TrainOutcome:
    recipe = request.recipe
    tracking = recipe.config.tracking
    storage = request.sharing.storage
    if storage:
        from mtl_suite.tuning.storage_check import check_storage

        check_storage(storage)  # one line naming it, before the tracking store, any run or unit exists
    uri, experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)
    launcher_run = take_launcher_run(experiment_id)  # `mlflow run . -e train`'s run becomes the recipe run
    say(f"recipe {recipe.path}: {_describe(recipe)}")
    if storage:
        outcome = _train_shared(request, uri, experiment_id, launcher_run, say)
    else:
        display = progress.current()
        with display.level("stages", len(recipe.members) + (1 if recipe.is_ensemble else 0)) as stages:
            members = tuple(_member_stage(request, index, Stage(recipe.stage), None, say).run_id
                            for index in range(len(recipe.members)))
            final = _ensemble(request, members, say) if recipe.is_ensemble else members[0]
            if recipe.is_ensemble:
                display.advance(stages, "ensemble")
            outcome = _finish(request, launcher_run, experiment_id, uri, members, final, say)
    _say_where(outcome, request, say)
    return outcome


def _finish(request: TrainRequest, launcher_run: str | None, experiment_id: str, uri: str, members: tuple[str, ...],
            final: str, say: Callable[[str], None]) -> TrainOutcome:
    """The recipe file on the final run, its promotion, and the recipe run that records them."""
    MlflowClient().log_artifact(final, str(request.recipe.path), "recipe")
    promotion = _promote(request, final, experiment_id, say)
    recipe_run = _record(request, launcher_run, experiment_id, members, final, promotion)
    version = promotion.version if promotion else None
    return TrainOutcome(members, final, f"models:/{version.name}/{version.version}" if version else None, recipe_run,
                        uri, experiment_id)


def _describe(recipe: Recipe) -> str:
    train, data = recipe.config.train, recipe.config.data
    size = f"{data.image_size} px" if data.image_size else "its own size"
    models = f"an ensemble of {len(recipe.members)} runs" if recipe.is_ensemble else "one model"
    return f"{recipe.stage} {recipe.task}, {train.backbone} at {size}, {models}, then promote"


def _member_stage(request: TrainRequest, index: int, stage: Stage, parent: str | None, say: Callable[[str], None],
                  claim: tuple[tuple[str, str], ...] = ()) -> StageOutcome:
    """One member's `stage` from the `parent` run (None: found in the experiment, and the stages it stands on run
    first when missing; stage 1 and classical start from ImageNet). The recipe's final stage of a one-model recipe
    is also scored on the external images."""
    recipe = request.recipe
    label = f"member {index + 1} of {len(recipe.members)}" if recipe.is_ensemble else "the model"
    last = stage == Stage(recipe.stage)
    say(f"recipe {recipe.name}: training {label}" + ("" if last else f", {stage}"))
    outcome = run_stage(StageRequest(
        stage=stage, config=recipe.members[index], task=recipe.task, normal_class=request.normal_class,
        quiet=request.quiet, extra_tags=tuple(recipe.tags().items()), claim_tags=claim, parent_run=parent,
        name_prefix=f"{recipe.name}-m{index + 1}-" if recipe.is_ensemble else f"{recipe.name}-",
        external=request.external if last and not recipe.is_ensemble else None,
        resume="never" if request.fresh else "auto", reuse_finished=not request.fresh), say=say)
    return outcome


def _ensemble(request: TrainRequest, members: tuple[str, ...], say: Callable[[str], None],
              claim: tuple[tuple[str, str], ...] = ()) -> str:
    tracking = request.recipe.config.tracking
    outcome = make_ensemble(EnsembleRequest(members, tracking.tracking_uri, tracking.experiment, request.normal_class,
                                            request.quiet, request.external,
                                            extra_tags=(*request.recipe.tags().items(), *claim)), say=say)
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
    if outcome.model_uri is not None:
        uri_option = f" --tracking-uri {outcome.tracking_uri}"
        say(f"serve the champion with: mtl-suite serve --model models:/{request.model_name}@{CHAMPION_ALIAS}"
            f"{uri_option}  (or: MLFLOW_TRACKING_URI={outcome.tracking_uri} mlflow models serve -m "
            f"models:/{request.model_name}@{CHAMPION_ALIAS} --env-manager local)")


# --- shared by workers (--storage): the recipe's units, claimed through the Optuna storage (tuning/units.py) -------

UNIT_TAG = "recipe_unit"  # on every run a unit makes: `<study>#<claim>`


def _train_shared(request: TrainRequest, uri: str, experiment_id: str, launcher_run: str | None,
                  say: Callable[[str], None]) -> TrainOutcome:
    client = MlflowClient()
    board = _open_board(client, experiment_id, request, say)
    shared = mask_password(request.sharing.storage)
    say(f"recipe {request.recipe.name}: {len(board.units)} units shared through {shared}")
    with progress.current().level("units", len(board.units)) as level:
        def shown(view: BoardView) -> None:  # after each unit of this worker, and when another's settles
            level.total, level.done = len(view.statuses), view.count(DONE, FAILED, BLOCKED)
            say(f"recipe {request.recipe.name}: {view.summary()}")

        view = board.work(lambda unit, now, tag: _run_unit(request, unit, now, tag, experiment_id, launcher_run,
                                                            uri, say), shown)
    return _shared_outcome(client, request, view, launcher_run, uri, experiment_id)


def training_key(request: TrainRequest) -> str:
    """The recipe file's bytes, every member's settings as the command resolved them, the data folder, the model
    name, the normal class and the external images: the same command on every worker finds the same units."""
    def settings(config: ExperimentConfig) -> dict[str, str]:
        flat = {k: str(v) for k, v in keyed_settings(config).items() if not k.startswith("tracking.")}
        flat["data.path"] = str(Path(config.data.path).resolve()) if config.data.path else "bundled sample"
        return flat

    recipe, external = request.recipe, request.external
    fields = {"recipe_sha256": sha256_file(recipe.path), "members": [settings(m) for m in recipe.members],
              "model": request.model_name, "normal_class": request.normal_class,
              "external": [str(Path(external.path).resolve()), external.expected] if external else None}
    return sha256_text(json.dumps(fields, sort_keys=True))[:16]


def _open_board(client, experiment_id: str, request: TrainRequest, say: Callable[[str], None]) -> UnitBoard:
    """The recipe's units in the storage (a study named after the training key, so every worker of the same command
    finds it); a command that finds them all settled (an earlier command's) starts a new round: failed units are
    tried again and the promotion is done again, finished members stand. A dead worker's runs are closed KILLED
    before its unit is queued again."""
    def closed(unit_key: str, worker: str, since, note: str) -> None:
        for run in close_dead_worker_runs(client, experiment_id, worker, since, note):
            say(f"unit {unit_key}: closed run {run} of dead worker {worker} as KILLED ({note})")

    recipe = request.recipe
    board = UnitBoard.for_sharing(f"train-{recipe.name}-{training_key(request)}",
                                  training_units(len(recipe.members), recipe.stage), request.sharing, on_dead=closed,
                                  say=say)
    if board.open():
        return board
    view = board.view()
    _check_same_store(client, view, request)
    if view.settled:
        say(f"recipe {recipe.name}: its units in {mask_password(request.sharing.storage)} were settled by an earlier "
            "command; a new round (failed units tried again, the final run promoted again)")
        board.new_round()
    return board


def _check_same_store(client, view: BoardView, request: TrainRequest) -> None:
    """Units finished by workers of another tracking store cannot be built on: one line, before anything runs."""
    for status in view.statuses.values():
        run_id = status.results.get("run_id") or status.results.get("recipe_run")
        if status.state == DONE and run_id and not run_exists(client, run_id):
            raise UserError(f"the recipe's units in {mask_password(request.sharing.storage or '')} hold run {run_id} "
                            f"({status.unit.key}), which tracking store {get_tracking_uri()} does not have: give every "
                            "worker the same tracking store, or use another --storage")


def _run_unit(request: TrainRequest, unit: Unit, view: BoardView, tag: str, experiment_id: str,
              launcher_run: str | None, uri: str, say: Callable[[str], None]) -> dict[str, str]:
    """One unit: a member's stage (from the run of the unit before it), the ensemble of the members' final runs, or
    the promotion of the final run with the recipe run that records it."""
    before = [view.statuses[key].results["run_id"] for key in unit.after]
    if unit.step == PROMOTE_STEP:
        members = _member_finals(request.recipe, view)
        outcome = _finish(request, launcher_run, experiment_id, uri, members, before[0], say)
        return {"recipe_run": outcome.recipe_run, "final_run": outcome.final_run,
                "member_runs": ",".join(outcome.member_runs), "model_uri": outcome.model_uri or ""}
    claim = ((UNIT_TAG, tag),)
    member = unit_member(unit.key)
    if member is None:
        return run_result(_ensemble(request, tuple(before), say, claim))
    outcome = _member_stage(request, member, Stage(unit.step), before[0] if before else None, say, claim)
    return run_result(outcome.run_id, outcome.reused)


def _member_finals(recipe: Recipe, view: BoardView) -> tuple[str, ...]:
    return tuple(view.statuses[recipe_unit_key(index, recipe.stage)].results["run_id"]
                 for index in range(len(recipe.members)))


def _shared_outcome(client, request: TrainRequest, view: BoardView, launcher_run: str | None, uri: str,
                    experiment_id: str) -> TrainOutcome:
    """Every worker's outcome: what the promotion unit recorded (whichever worker ran it). A worker started by
    `mlflow run` whose run did not become the recipe run says in its note where the recipe run is."""
    promotion = view.statuses[PROMOTE_STEP]
    if promotion.state != DONE:
        notes = [f"{s.unit.key}: {s.note}" for s in view.statuses.values() if s.state in (FAILED, BLOCKED) and s.note]
        raise UserError(f"recipe {request.recipe.name} did not finish: {'; '.join(notes) or promotion.state}. Rerun "
                        "the same command to try the failed units again")
    results = promotion.results
    if launcher_run and launcher_run != results["recipe_run"]:
        client.set_tag(launcher_run, "mlflow.note.content", f"A worker of recipe run {results['recipe_run']}.")
    return TrainOutcome(tuple(results["member_runs"].split(",")), results["final_run"],
                        results["model_uri"] or None, results["recipe_run"], uri, experiment_id)

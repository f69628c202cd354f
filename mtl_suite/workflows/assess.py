"""`mtl-suite assess RECIPE`: the headline figures of a recipe from a protocol fixed before anything trains. The
recipe file (fixed, copied beside the report with its sha256) is trained from nothing on each of N fresh outer
splits (data seeds S..S+N-1, grouped as the data needs), each model scored once on its split's test part beside
colour alone on the same split; then the figures (analysis/assessment.py) over splits and pooled over their test
images. Nothing is promoted or registered: an assessment measures the recipe, it does not ship a model.

Each split runs the recipe as `train` does (the first member's stage chain, stage 1 -> 2 -> 3 or classical alone;
every other member's final stage from the first member's stage before it; then the ensemble of the members), but
every stage is run here with this split's data seed and an explicit parent, so no run from outside the assessment is
started from; every run of a split is nested under the assessment run.

Units: the assessment is catalog.assessment_units, claimed by any number of workers running the same command with
the same --storage (tuning/units.py: trials of one Optuna study named after the assessment's key): per split each
member's stages (catalog.member_stages; a stage waits for the one before it) and, with several members, their
ensemble (waiting for every member); the report waits for every split, and the worker that finds them settled
writes it. A unit whose worker died is run again by another (its stage run closed KILLED, then adopted by the redo);
bad input in any unit stops every worker with the same one-line error. Without a storage this process runs every
unit in turn, in memory, split by split and member by member, as the command did before it had units.

Resume: the assessment run is found again by a key over the recipe file's bytes, the settings the command changes,
the data, the seeds and the grouping; a split's runs that FINISHED are reused, an interrupted stage run is adopted
by the stage itself (tracking/resume.py), anything else is (re)run."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient, get_tracking_uri
from mlflow.entities import RunStatus

from mtl_suite import progress
from mtl_suite.analysis import assessment as figures
from mtl_suite.analysis.assessment_report import (
    JSON_REPORT, PREDICTIONS, REPORT, Provenance, render_json, render_report,
)
from mtl_suite.catalog import (
    REPORT_STEP, Stage, Task, Unit, UnitSharing, assessment_unit_key, assessment_units, chain, member_stages,
    shared_stage, unit_member,
)
from mtl_suite.config import ExperimentConfig, keyed_settings
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_file, sha256_text, write_text_atomic
from mtl_suite.recipes import Recipe
from mtl_suite.run_files import COLOUR_TEST_PREDICTIONS, TEST_PREDICTIONS
from mtl_suite.tasks import normal_class_of
from mtl_suite.tracking import assessment_runs as runs_io
from mtl_suite.tracking.comparison_runs import close_dead_worker_runs, log_unit_progress, run_exists
from mtl_suite.tracking.reachability import mask_password
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.tuning.units import (
    BLOCKED, DONE, FAILED, PENDING, READY, RUNNING, SETTLED, WAITING, BoardView, UnitBoard, run_result,
)

ENSEMBLE_ROLE = "ensemble"
PARENT_ATTR = "assessment_run"  # the study's: the assessment's MLflow run, opened by the worker that made the study


@dataclass(frozen=True)
class AssessRequest:
    recipe: Recipe
    seeds: tuple[int, ...]  # the outer splits' data seeds
    out: Path  # the report's folder
    command: str  # as typed, for the report
    normal_class: str | None = None  # multiclass data: the class read as normal (default: the data's own)
    quiet: bool = False
    sharing: UnitSharing = UnitSharing()  # where the splits' units are shared by workers (default: alone, in order)


@dataclass(frozen=True)
class AssessOutcome:
    run_id: str
    split_runs: dict[int, str]  # data seed -> the split's final run
    reused: tuple[int, ...]  # seeds whose final run an earlier attempt had finished
    assessment: figures.Assessment
    report: Path
    json_report: Path
    predictions: Path
    recipe_copy: Path
    tracking_uri: str
    experiment_id: str


def assess_recipe(request: AssessRequest, say: Callable[[str], None] = print) -> AssessOutcome:
    if len(request.seeds) < figures.MIN_SPLITS:
        raise UserError(f"--splits must be at least {figures.MIN_SPLITS}: a t-interval needs two or more splits (the "
                        f"headline protocol uses at least {figures.HEADLINE_SPLITS}). Received: {len(request.seeds)}")
    from mtl_suite.tuning.storage_check import check_storage
    from mtl_suite.workflows.stage import pinned_segmentation

    recipe = request.recipe
    tracking = recipe.config.tracking
    uri, experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)
    if request.sharing.storage:
        check_storage(request.sharing.storage)  # one line naming it, before any run or unit exists
    # every split's stage 2 cuts its cells one way, chosen now (as compare does): a U-Net trained meanwhile cannot
    # give later splits other cells, and a rerun after one is a new assessment (the key holds it)
    segmentation = pinned_segmentation(recipe.config.data, None, experiment_id) if _has_stage2(recipe) else None
    client = MlflowClient()
    key = assessment_key(request, segmentation)
    board = _open_board(client, experiment_id, key, request, say)
    run_id = _assessment_run(client, experiment_id, board, key, request, say)
    where = f"; units shared through {mask_password(request.sharing.storage)}" if board.shared_by_workers else ""
    say(f"assessment run {run_id}: recipe {recipe.path} on {len(request.seeds)} outer splits (data seeds "
        f"{request.seeds[0]}..{request.seeds[-1]}) in {uri}{where}")
    reported: list[AssessOutcome] = []  # this worker's outcome, when it is the one that writes the report
    display = progress.current()
    try:
        with display.level("units", len(board.units)) as level:
            def shown(view: BoardView) -> None:  # after each unit of this worker, and when another's settles
                level.total, level.done = len(view.statuses), view.count(*SETTLED)
                if board.shared_by_workers:
                    log_unit_progress(client, run_id, view.count(DONE), view.count(FAILED, BLOCKED),
                                      view.count(RUNNING), view.workers(), view.count(WAITING, READY, PENDING),
                                      view.seconds_left())
                    say(f"assessment {run_id}: {view.summary()}")

            view = board.work(lambda unit, now, tag: _run_unit(client, experiment_id, run_id, request, segmentation,
                                                                unit, now, tag, uri, reported, say), shown)
        return reported[0] if reported else _outcome(client, experiment_id, run_id, request, view, uri, say)
    except KeyboardInterrupt:
        _end_on_error(client, run_id, board, RunStatus.KILLED)
        raise
    except BaseException:
        _end_on_error(client, run_id, board, RunStatus.FAILED)
        raise


# --- the units, shared by workers through the Optuna storage (tuning/units.py) ------------------------------------

def _open_board(client, experiment_id: str, key: str, request: AssessRequest, say) -> UnitBoard:
    """The assessment's units in the storage (a study named after the assessment's key, so every worker of the same
    command finds it; without a storage, in memory and in list order: split by split, as before); a dead worker's
    stage runs are closed KILLED before its unit is queued again."""
    def closed(unit_key: str, worker: str, since, note: str) -> None:
        for run in close_dead_worker_runs(client, experiment_id, worker, since, note):
            say(f"unit {unit_key}: closed run {run} of dead worker {worker} as KILLED ({note})")

    recipe = request.recipe
    board = UnitBoard.for_sharing(f"assess-{key}", assessment_units(request.seeds, len(recipe.members), recipe.stage),
                                  request.sharing, on_dead=closed, say=say, in_order=True)
    board.open()
    return board


def _assessment_run(client, experiment_id: str, board: UnitBoard, key: str, request: AssessRequest, say) -> str:
    """The assessment's MLflow run: found again by its key or opened by the worker that made the study; the others
    wait for it. A worker that finds it ended (an earlier command's) reopens it and starts a new round of its units
    (failed units tried again, the report redone)."""
    parent = board.awaited(PARENT_ATTR, "the assessment's MLflow run")
    if parent is not None:
        if not run_exists(client, parent):
            raise UserError(f"the assessment's units in {mask_password(request.sharing.storage or '')} belong to "
                            f"assessment run {parent}, which tracking store {get_tracking_uri()} does not have: give "
                            "every worker the same tracking store, or use another --storage")
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")
            say(f"resuming assessment run {parent} (same recipe file, settings, data and seeds: key {key}; a new "
                "round of its units)")
            board.new_round()
        return parent
    parent = runs_io.find_or_create(client, experiment_id, key, _tags(request), _params(request),
                                    take_launcher_run(experiment_id), say)
    board.share(PARENT_ATTR, parent)
    return parent


def _end_on_error(client, run_id: str, board: UnitBoard, status: int) -> None:
    """This worker stops: the assessment's run ends KILLED (interrupt) or FAILED, unless other workers are still
    running units (they carry it on, or the last of them to stop ends it)."""
    try:
        others = board.shared_by_workers and board.view().count(RUNNING) > 0
    except Exception:  # noqa: BLE001 - the storage itself may be what failed
        others = False
    if not others:
        runs_io.end(client, run_id, status)


def assessment_key(request: AssessRequest, segmentation: str | None) -> str:
    """The recipe file's bytes, every member's settings as the command resolved them (but the split's data seed),
    the data folder, the seeds, the normal class and how stage 2 cuts cells: the same command finds its run again."""
    def settings(config: ExperimentConfig) -> dict[str, str]:
        flat = {k: str(v) for k, v in keyed_settings(config).items()
                if not k.startswith("tracking.") and k != "data.seed"}
        flat["data.path"] = str(Path(config.data.path).resolve()) if config.data.path else "bundled sample"
        return flat

    fields = {"recipe_sha256": sha256_file(request.recipe.path), "members": [settings(m) for m in
                                                                           request.recipe.members],
              "seeds": list(request.seeds), "normal_class": request.normal_class, "segmentation": segmentation}
    return sha256_text(json.dumps(fields, sort_keys=True))[:16]


def split_config(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """A member's settings on one outer split: only the data seed changes; training is as the recipe states it."""
    return replace(config, data=replace(config.data, seed=seed))


def _has_stage2(recipe: Recipe) -> bool:
    return any(plan.stage is Stage.STAGE2 for plan in chain(recipe.stage))


def _tags(request: AssessRequest) -> dict[str, str]:
    recipe = request.recipe
    return {**recipe.tags(), "stage": str(recipe.stage), "task": str(recipe.task),
            "assessment_splits": str(len(request.seeds)), "git_commit": git_commit(),
            "command": request.command[:5000], "mlflow.runName": f"assess-{recipe.name}"}


def _params(request: AssessRequest) -> dict[str, str]:
    data = request.recipe.config.data
    return {"recipe_file": str(request.recipe.path), "recipe_sha256": sha256_file(request.recipe.path),
            "splits": str(len(request.seeds)), "first_seed": str(request.seeds[0]), "data.path": str(data.path),
            "data.group_by": str(data.group_by), "members": str(len(request.recipe.members))}


# --- one unit -----------------------------------------------------------------------------------------------------

def _run_unit(client, experiment_id: str, parent: str, request: AssessRequest, segmentation: str | None,
              unit: Unit, view: BoardView, tag: str, uri: str, reported: list, say: Callable[[str], None]
              ) -> dict[str, str]:
    """One unit: a member's stage on one split (from the run of the stage before it, or ImageNet), the split's
    ensemble, or the report. What an earlier attempt finished is reused (every unit of a split whose final run
    stands on its own members' chains); errors go up and stop this worker, as they stopped the command before."""
    if unit.step == REPORT_STEP:
        return _report_unit(client, experiment_id, parent, request, view, uri, reported, say)
    recipe = request.recipe
    seed = request.seeds[unit.group]
    kept = _reusable(client, runs_io.finished_split_runs(client, experiment_id, parent, seed), recipe)
    final = (ENSEMBLE_ROLE if recipe.is_ensemble else _member_role(0), str(recipe.stage))
    member = unit_member(unit.key)
    this = (ENSEMBLE_ROLE, str(recipe.stage)) if member is None else (_member_role(member), unit.step)
    if final in kept:  # the split's final run finished earlier: every unit of the split is reused
        if this == final:
            say(f"split {seed}: reusing finished run {kept[final]}")
        return run_result(kept.get(this, ""), reused=True)
    tags = (("mlflow.parentRunId", parent), (runs_io.RUN, parent), (runs_io.SPLIT, str(seed)),
            *recipe.tags().items(), (runs_io.ROLE, this[0]))
    claim = ((runs_io.UNIT, tag),)
    before = [view.statuses[key].results.get("run_id", "") for key in unit.after]
    if member is None:
        return run_result(_ensemble(request, seed, before, tags + claim, say))
    return _stage(client, request, seed, member, unit.step, before[0] if before else None, kept.get(this), tags,
                  claim, segmentation, say)


def _stage(client, request: AssessRequest, seed: int, member: int, stage: str, previous: str | None,
           found: str | None, tags: tuple, claim: tuple, segmentation: str | None,
           say: Callable[[str], None]) -> dict[str, str]:
    """One stage of a member's chain on the split, from `previous` (None: ImageNet); a finished run of it that
    stands on `previous` is reused. The unit's results: the run, and whether it was reused."""
    from mtl_suite.workflows.stage import StageRequest, run_stage  # looked up per call: tests may replace it

    recipe = request.recipe
    what = f"member {member + 1} of {len(recipe.members)}, " if recipe.is_ensemble else ""
    if found and (previous is None or runs_io.parent_stage_run(client, found) == previous):
        say(f"split {seed}: {what}reusing finished {stage} run {found}")
        return run_result(found, reused=True)
    prefix = f"assess-s{seed}-" + (f"m{member + 1}-" if recipe.is_ensemble else "")
    say(f"split {seed} (data seed {seed}): {what}{stage}")
    outcome = run_stage(StageRequest(
        stage=Stage(stage), config=split_config(recipe.members[member], seed), task=recipe.task,
        normal_class=request.normal_class, segmentation=segmentation, parent_run=previous, quiet=request.quiet,
        extra_tags=tags, claim_tags=claim, name_prefix=prefix,
        shift_probe=False),  # the folds' shift figures choose among models; the headlines need none
        say=say)
    return run_result(outcome.run_id, outcome.reused)


def _ensemble(request: AssessRequest, seed: int, members: list[str], tags: tuple, say: Callable[[str], None]) -> str:
    """The split's ensemble of its members' final runs (a finished one of exactly these members is the split's
    final run, reused by _run_unit before it gets here)."""
    from mtl_suite.workflows.ensemble import EnsembleRequest, make_ensemble

    tracking = request.recipe.config.tracking
    say(f"split {seed}: the ensemble of its {len(members)} members")
    return make_ensemble(EnsembleRequest(tuple(members), tracking.tracking_uri, tracking.experiment,
                                         request.normal_class, request.quiet, extra_tags=tags), say=say).run_id


def _finals(request: AssessRequest, view: BoardView) -> tuple[dict[int, str], tuple[int, ...]]:
    """Each split's final run, and the splits whose final run an earlier attempt had finished."""
    recipe, finals, reused = request.recipe, {}, []
    for seed in request.seeds:
        key = assessment_unit_key(seed, None if recipe.is_ensemble else 0, recipe.stage)
        results = view.statuses[key].results
        finals[seed] = results["run_id"]
        reused += [seed] if results.get("reused") else []
    return finals, tuple(reused)


def _report_unit(client, experiment_id: str, parent: str, request: AssessRequest, view: BoardView, uri: str,
                 reported: list, say: Callable[[str], None]) -> dict[str, str]:
    """The last unit, run by whichever worker is free once every split is settled: the figures and the report (in
    this worker's --out, and on the assessment's run); the assessment's run ends here."""
    finals, reused = _finals(request, view)
    try:
        outcome = _summarise(client, experiment_id, parent, request, finals, reused, uri, say)
    except BaseException:
        runs_io.end(client, parent, RunStatus.FAILED)
        raise
    runs_io.end(client, parent, RunStatus.FINISHED)
    reported.append(outcome)
    return {"report": str(outcome.report.resolve()), "json_report": str(outcome.json_report.resolve()),
            "predictions": str(outcome.predictions.resolve()), "recipe_copy": str(outcome.recipe_copy.resolve()),
            "written_by": _worker()}


def _outcome(client, experiment_id: str, run_id: str, request: AssessRequest, view: BoardView, uri: str,
             say: Callable[[str], None]) -> AssessOutcome:
    """What a worker that did not write the report returns: the figures (recomputed from the same runs) and where
    the reporting worker wrote the files; a report that could not run (a split's unit failed) is one line."""
    report = view.statuses[REPORT_STEP]
    if report.state != DONE:
        notes = [f"{s.unit.key}: {s.note}" for s in view.statuses.values() if s.state in (FAILED, BLOCKED) and s.note]
        raise UserError(f"assessment run {run_id} did not finish: {'; '.join(notes) or report.state}. Rerun the "
                        "same command to try the failed units again")
    finals, reused = _finals(request, view)
    _, assessment, _ = _figures(client, request, finals)
    files = report.results
    say(f"report written by worker {files.get('written_by')}: {files.get('report')} (and on MLflow run {run_id}, "
        "artifacts assessment/)")
    return AssessOutcome(run_id, finals, reused, assessment, Path(files.get("report", "")),
                         Path(files.get("json_report", "")), Path(files.get("predictions", "")),
                         Path(files.get("recipe_copy", "")), uri, experiment_id)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _member_role(index: int) -> str:
    return f"member-{index + 1}"


def _reusable(client, found: dict[tuple[str, str], str], recipe: Recipe) -> dict[tuple[str, str], str]:
    """The finished runs that still stand on each other: a stage whose parent is not the reused run of the stage
    before it, or an ensemble of other member runs, is run again (with everything after it)."""
    kept: dict[tuple[str, str], str] = {}
    finals = []
    before_final = shared_stage(recipe.stage)
    for index in range(len(recipe.members)):
        role, previous = _member_role(index), None
        if index and before_final:  # a later member's final stage stands on the first member's stage before it
            previous = kept.get((_member_role(0), before_final.name))
            if previous is None:
                finals.append(None)
                continue
        for plan in member_stages(recipe.stage, index):
            run_id = found.get((role, plan.name))
            if run_id is None or (previous is not None and runs_io.parent_stage_run(client, run_id) != previous):
                break
            kept[(role, plan.name)] = previous = run_id
        finals.append(kept.get((role, str(recipe.stage))))
    ensemble = found.get((ENSEMBLE_ROLE, str(recipe.stage)))
    if recipe.is_ensemble and ensemble and runs_io.ensemble_members(client, ensemble) == finals:
        kept[(ENSEMBLE_ROLE, str(recipe.stage))] = ensemble
    return kept


# --- figures, files, report ---------------------------------------------------------------------------------------

def _summarise(client, experiment_id: str, run_id: str, request: AssessRequest, finals: dict[int, str],
               reused: tuple[int, ...], uri: str, say: Callable[[str], None]) -> AssessOutcome:
    recipe = request.recipe
    table, assessment, ratio = _figures(client, request, finals)
    request.out.mkdir(parents=True, exist_ok=True)
    predictions, copy = request.out / PREDICTIONS, request.out / recipe.path.name
    table.to_csv(predictions, index=False)
    if copy.resolve() != recipe.path.resolve():
        shutil.copyfile(recipe.path, copy)
    facts = {seed: runs_io.split_facts(client, final) for seed, final in finals.items()}
    provenance = _provenance(request, copy, run_id, uri, experiment_id, ratio, len(table), facts)
    report, json_report = request.out / REPORT, request.out / JSON_REPORT
    write_text_atomic(report, render_report(assessment, provenance))
    write_text_atomic(json_report, render_json(assessment, provenance))
    runs_io.log_results(client, run_id, _metrics(assessment), _result_tags(assessment, finals),
                        [report, json_report, predictions, copy])
    _say_where(assessment, run_id, finals, reused, request.out, uri, say)
    return AssessOutcome(run_id, dict(finals), reused, assessment, report, json_report, predictions, copy, uri,
                         experiment_id)


def _figures(client, request: AssessRequest, finals: dict[int, str]):
    """The per-image predictions table of the splits' final runs, the figures computed from it, and the test/train
    ratio they correct by."""
    recipe = request.recipe
    table = figures.predictions_table([(seed, final, _predictions(client, final, TEST_PREDICTIONS),
                                        runs_io.read_csv_artifact(client, final, COLOUR_TEST_PREDICTIONS))
                                       for seed, final in finals.items()])
    normal = _normal_class(recipe.task, figures.classes_of(table), request.normal_class)
    ratio = _test_train_ratio(client, finals, recipe)
    return table, figures.assess(table, normal, ratio), ratio


def _predictions(client, run_id: str, path: str):
    frame = runs_io.read_csv_artifact(client, run_id, path)
    if frame is None or not len(frame):
        raise UserError(f"run {run_id} logged no {path}: its split has no test part (data.test_fraction 0?); an "
                        "assessment scores every split's test part")
    return frame


def _normal_class(task: Task, classes: tuple[str, ...], given: str | None) -> str | None:
    """A binary task's calls are normal vs leukemia already (its class 'normal'); a multiclass one's are read with
    the data's normal class."""
    return "normal" if task == Task.BINARY else normal_class_of(list(classes), given)


def _test_train_ratio(client, finals: dict[int, str], recipe: Recipe) -> float:
    """n_test / n_train of the refits (an ensemble's: its members'), else from the test fraction."""
    runs = list(finals.values())
    if recipe.is_ensemble:
        runs = [m for run in runs for m in runs_io.ensemble_members(client, run)]
    ratio = runs_io.test_train_ratio(client, runs)
    fraction = recipe.config.data.test_fraction
    return ratio if ratio is not None else fraction / (1 - fraction)


def _provenance(request: AssessRequest, copy: Path, run_id: str, uri: str, experiment_id: str, ratio: float,
                rows: int, facts: dict[int, tuple[str, int | None]]) -> Provenance:
    recipe, config = request.recipe, request.recipe.config
    size = f"{config.data.image_size} px" if config.data.image_size else "its own size"
    models = f"an ensemble of {len(recipe.members)} models" if recipe.is_ensemble else "one model"
    stain = "" if config.train.stain == "none" else f", stain control {config.train.stain}"
    return Provenance(
        command=request.command, recipe=str(recipe.path), recipe_copy=copy.name, recipe_sha256=sha256_file(copy),
        recipe_description=f"{recipe.stage} {recipe.task}, {config.train.backbone} at {size}{stain}, {models}",
        commit=git_commit(), tracking_uri=uri, experiment_id=experiment_id, run_id=run_id,
        data=str(config.data.path or "bundled sample"),
        dataset_digests=tuple(sorted({digest for digest, _ in facts.values() if digest})),
        grouping=str(config.data.group_by), seeds=tuple(request.seeds), test_fraction=config.data.test_fraction,
        folds=config.data.folds, train_seed=config.train.seed, test_train_ratio=ratio, predictions_rows=rows,
        earlier_looks={seed: earlier for seed, (_, earlier) in facts.items()})


def _metrics(a: figures.Assessment) -> dict[str, float]:
    out = {"assess/accuracy_mean": a.accuracy.mean, "assess/accuracy_sd": a.accuracy.sd,
           "assess/accuracy_ci_low": a.accuracy.low, "assess/accuracy_ci_high": a.accuracy.high,
           "assess/ece": a.calibration.ece, "assess/brier": a.calibration.brier}
    if a.colour_accuracy:
        out.update({"assess/colour_accuracy_mean": a.colour_accuracy.mean,
                    "assess/colour_accuracy_sd": a.colour_accuracy.sd})
    if a.difference:
        out.update({"assess/difference_mean": a.difference.spread.mean,
                    "assess/difference_p_corrected": a.difference.corrected.p_value})
    if a.binary:
        out.update({"assess/sensitivity": a.binary.sensitivity.value, "assess/specificity": a.binary.specificity.value})
    if a.colour_binary:
        out.update({"assess/colour_sensitivity": a.colour_binary.sensitivity.value,
                    "assess/colour_specificity": a.colour_binary.specificity.value})
    if a.colour_calibration:
        out.update({"assess/colour_ece": a.colour_calibration.ece, "assess/colour_brier": a.colour_calibration.brier})
    return out


def _result_tags(a: figures.Assessment, finals: dict[int, str]) -> dict[str, str]:
    return {"verdict": a.difference.verdict if a.difference else "no verdict: colour alone missing on some splits",
            "split_runs": ",".join(f"{seed}:{run}" for seed, run in finals.items())}


def _say_where(a: figures.Assessment, run_id: str, finals: dict[int, str], reused: tuple[int, ...], out: Path,
               uri: str, say: Callable[[str], None]) -> None:
    colour = f" (colour alone {_pct(a.colour_accuracy.mean)})" if a.colour_accuracy else ""
    say(f"test accuracy over {a.accuracy.n} splits: mean {_pct(a.accuracy.mean)}, sd {_pct(a.accuracy.sd)}, "
        f"95% interval {_pct(a.accuracy.low)}-{_pct(a.accuracy.high)}{colour}")
    if a.difference:
        say(a.difference.verdict)
    if reused:
        say(f"reused the finished runs of split{'s' if len(reused) > 1 else ''} {', '.join(map(str, reused))}")
    say("split runs: " + ", ".join(f"{seed}: {run}" for seed, run in finals.items()))
    say(f"assessment run {run_id} in {uri}; report {out / REPORT}, {out / JSON_REPORT}, per-image predictions "
        f"{out / PREDICTIONS}")


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def default_out(recipe: Recipe) -> Path:
    return Path("reports") / f"assess-{recipe.name}-{dt.date.today().isoformat()}"

"""`mtl-suite compare` as MLflow runs: one comparison parent run; per pair i a classical (CTL) run and a
stage1 -> stage2 -> stage3 (MTL) chain, all tagged with the comparison and nested under it.

Pairing: pair i sets both `train.seed` and `data.seed` to base + i, so both arms train from the same seed on the
same freshly drawn split (checked: both runs must carry the same split digest). Stages 1 and 2 are re-run per pair
with the pair's data seed, because stage 2 trains on cell crops of the split's development images: a stage-2 model
shared across pairs would have seen other pairs' test images. Stage 1 without a source data set only saves the
ImageNet backbone, so re-running it costs nothing. The CTL arm and stage 3 get the same budget (epochs, head,
optimiser); stages 1-2 are MTL's extra pre-training, which is the method under test.

Units: the comparison is catalog.comparison_units, claimed by any number of workers running the same command with
the same --storage (tuning/units.py: trials of one Optuna study named after the comparison's key). Pair i's CTL
arm and its MTL chain run side by side (stage 3 waits for stage 2, stage 2 for stage 1); the MTL chain is not
started once the pair's CTL arm has failed (the pair is excluded anyway); the worker that finds every pair settled
writes the report. A unit whose worker died is run again by another (its stage run closed KILLED, then adopted by
the redo: tracking/resume.py); bad input in any unit stops every worker with the same one-line error. Without a
storage this process runs every unit in turn, in memory.

Resume: the parent run is found again by a key over everything but the number of runs; a pair's stage runs that
FINISHED (with the same predecessor) are reused, anything else is (re)run. A failed arm is recorded and its pair
excluded from the statistics, and the report lists it.

The MLflow I/O is tracking/comparison_runs.py, the statistics analysis/compare.py, the Markdown
analysis/comparison_report.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import RunStatus

from mtl_suite import progress
from mtl_suite.analysis import compare as stats
from mtl_suite.analysis.comparison_report import (
    CONFIG_SUFFIX, METRICS, PREDICTIONS_SUFFIX, predictions_table, render_report, table_v,
)
from mtl_suite.analysis.figures import paired_box_strip_png
from mtl_suite.catalog import (
    REPORT_STEP, Arm, CompareRequest, Pair, Stage, Unit, arm_stage, chain, comparison_unit_key, comparison_units,
    get_stage,
)
from mtl_suite.config import ExperimentConfig, keyed_settings
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import with_backbone_sizes
from mtl_suite.io_utils import atomic_path, sha256_file, sha256_text, write_text_atomic
from mtl_suite.tracking import comparison_runs as runs_io
from mtl_suite.tracking.reachability import mask_password
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.tuning.units import (
    BLOCKED, DONE, FAILED, PENDING, READY, RUNNING, SETTLED, WAITING, BoardView, UnitBoard, run_result,
)


@dataclass
class CompareOutcome:
    parent_run_id: str
    pairs: list[Pair]
    comparisons: dict[str, stats.Comparison]
    report_path: Path
    plot_path: Path


PARENT_ATTR = "comparison_run"  # the study's: the comparison's MLflow run, opened by the worker that made the study
RUNS_ATTR = "comparison_runs"  # the study's: the most pairs any worker asked for


def run_comparison(request: CompareRequest, say: Callable[[str], None] = print) -> CompareOutcome:
    if request.runs < 2:
        raise UserError(f"--runs must be at least 2: a t-test needs two or more paired runs. Received: {request.runs}")
    from mtl_suite.tuning.storage_check import check_storage
    from mtl_suite.workflows.stage import pinned_segmentation

    request = replace(request, config=with_backbone_sizes(request.config))
    cfg = request.config
    uri, experiment_id = use_tracking(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    if request.sharing.storage:
        check_storage(request.sharing.storage)  # one line naming it, before any run or unit exists
    check_inputs(request)  # before the comparison's run opens: a user error leaves no FAILED run
    # every pair's stage 2 cuts its cells with one segmentation, chosen now: a U-Net trained while the comparison
    # runs cannot give later pairs other cells, and a resume after one is a new comparison (the key holds it)
    request = replace(request, segmentation=pinned_segmentation(cfg.data, request.cells, experiment_id))
    client = mlflow.MlflowClient()
    board = _open_board(client, experiment_id, request, say)
    request = replace(request, runs=max(request.runs, int(board.shared(RUNS_ATTR) or 0)))
    board.use(comparison_units(request.runs))
    if board.shared_by_workers and board.shared(RUNS_ATTR) != request.runs:
        board.share(RUNS_ATTR, request.runs)
    parent = _comparison_run(client, experiment_id, board, request, say)
    where = f"; units shared through {mask_password(request.sharing.storage)}" if board.shared_by_workers else ""
    say(f"comparison run {parent} ({request.runs} pairs, backbone {cfg.train.backbone}, task {request.task}) in "
        f"{uri}{where}")
    display = progress.current()
    try:
        with display.level("units", len(board.units)) as level:
            def shown(view: BoardView) -> None:  # after each unit of this worker, and when another's settles
                level.total, level.done = len(view.statuses), view.count(*SETTLED)
                runs_io.log_unit_progress(client, parent, view.count(DONE), view.count(FAILED, BLOCKED),
                                          view.count(RUNNING), view.workers(), view.count(WAITING, READY, PENDING),
                                          view.seconds_left())
                say(f"comparison {parent}: {view.summary()}")

            view = board.work(lambda unit, now, tag: _run_unit(client, experiment_id, parent, request, unit, now,
                                                                 tag, uri, say), shown)
    except BaseException as exc:
        _end_on_error(client, parent, board, exc)
        raise
    return _outcome(client, parent, view, request, say)


def _open_board(client, experiment_id: str, request: CompareRequest, say) -> UnitBoard:
    """The comparison's units in the storage (a study named after the comparison's key, so every worker of the same
    command finds it); a dead worker's stage runs are closed KILLED before its unit is queued again."""
    def closed(key: str, worker: str, since, note: str) -> None:
        for run_id in runs_io.close_dead_worker_runs(client, experiment_id, worker, since, note):
            say(f"unit {key}: closed run {run_id} of dead worker {worker} as KILLED ({note})")

    board = UnitBoard.for_sharing(f"compare-{comparison_key(request)}", comparison_units(request.runs),
                                  request.sharing, on_dead=closed, say=say)
    board.open()
    return board


def _comparison_run(client, experiment_id: str, board: UnitBoard, request: CompareRequest, say) -> str:
    """The comparison's MLflow run: opened (or found again by its key) by the worker that made the study; the others
    wait for it. A worker that finds the comparison ended (an earlier command's) starts a new round of its units."""
    parent = board.awaited(PARENT_ATTR, "the comparison's MLflow run")
    if parent is not None:
        if not runs_io.run_exists(client, parent):
            raise UserError(f"the comparison's units in {mask_password(request.sharing.storage or '')} belong to "
                            f"comparison run {parent}, which tracking store {mlflow.get_tracking_uri()} does not have: "
                            "give every worker the same tracking store, or use another --storage")
        if runs_io.reopen(client, parent, request.runs):
            say(f"resuming comparison run {parent} (same settings: a new round of its units)")
            board.new_round()
        return parent
    parent = runs_io.find_or_create_parent(client, experiment_id, comparison_key(request), request.config,
                                           request.task, request.runs, request.command, request.study, say,
                                           take_launcher_run(experiment_id))  # `mlflow run . -e compare`'s run
    board.share(PARENT_ATTR, parent)
    return parent


def _end_on_error(client, parent: str, board: UnitBoard, error: BaseException) -> None:
    """This worker stops: the comparison's run ends KILLED (interrupt) or FAILED, unless other workers are still
    running units (they carry it on, or the last of them to stop ends it) or another worker ended it already."""
    try:
        others = board.shared_by_workers and board.view().count(RUNNING) > 0
    except Exception:  # noqa: BLE001 - the storage itself may be what failed
        others = False
    if others:
        return
    status = RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED
    runs_io.end_parent(client, parent, status, only_if_running=True)


def check_inputs(request: CompareRequest) -> None:
    """What every pair's stages read from the user (data, task, normal class, cells, weights), for pair 0."""
    import tempfile

    from mtl_suite.workflows.stage import StageRequest, check_stage_inputs

    cfg = pair_config(request.config, 0)
    plans = {plan.name: plan for plan in (arm_stage(Arm.CTL), *chain(arm_stage(Arm.MTL).stage))}
    with tempfile.TemporaryDirectory(prefix="mtl-compare-check-") as tmp:
        for name in plans:
            check_stage_inputs(StageRequest(stage=name, config=cfg, task=request.task,
                                            normal_class=request.normal_class, cells=request.cells, quiet=True),
                               Path(tmp) / name)


def comparison_key(request: CompareRequest) -> str:
    """Everything that defines the comparison except the number of runs (so a rerun with more runs extends it)."""
    flat = keyed_settings(request.config)
    flat.pop("tracking.tracking_uri", None)
    fields = {"config": {k: str(v) for k, v in sorted(flat.items())}, "task": request.task,
              "normal_class": request.normal_class, "cells": request.cells, "study": request.study}
    if request.segmentation:  # only then: keys of comparisons whose cells need no segmentation stay as they were
        fields["segmentation"] = request.segmentation
    return sha256_text(json.dumps(fields, sort_keys=True))[:16]


# --- one pair ---------------------------------------------------------------------------------------------------

def pair_config(config: ExperimentConfig, index: int) -> ExperimentConfig:
    return replace(config, data=replace(config.data, seed=config.data.seed + index),
                   train=replace(config.train, seed=config.train.seed + index))


def _run_unit(client, experiment_id: str, parent: str, request: CompareRequest, unit: Unit, view: BoardView,
              tag: str, uri: str, say) -> dict[str, str]:
    """One unit: a stage run of one pair (reused when a FINISHED one with the same predecessor exists: a worker
    killed after its run finished), or the report. An arm's failure is the unit's result (its pair is excluded);
    bad input (UserError) and interrupts go up: every pair would fail the same way."""
    if unit.step == REPORT_STEP:
        return _report_unit(client, experiment_id, parent, request, view, uri, say)
    from mtl_suite.workflows.stage import StageRequest, run_stage  # looked up per call: tests replace run_stage

    index, plan = unit.group, get_stage(unit.step)
    arm = plan.arm or Arm.MTL  # stages 1 and 2 are MTL's pre-training
    ctl = view.statuses.get(comparison_unit_key(index, Arm.CTL, arm_stage(Arm.CTL).stage))
    if arm is Arm.MTL and not unit.after and ctl is not None and ctl.state == FAILED:
        return {"failure": "MTL not run: the pair is excluded because its CTL arm failed"}
    cfg = pair_config(request.config, index)
    parent_run = view.statuses[unit.after[0]].results["run_id"] if unit.after else None
    found = runs_io.finished_stage_run(client, experiment_id, parent, index, plan.name, parent_run)
    if found:
        say(f"pair {index}: reusing finished {plan.name} run {found}")
        return run_result(found, reused=True)
    tags = (("mlflow.parentRunId", parent), ("comparison_run", parent), ("comparison_pair", str(index)),
            ("comparison_arm", str(arm)), ("comparison_role", "arm" if plan.arm else "pretrain"))
    say(f"pair {index} (seed {cfg.train.seed}, split seed {cfg.data.seed}): {arm.upper()} {plan.name}")
    try:
        outcome = run_stage(StageRequest(stage=plan.name, config=cfg, task=request.task,
                                         normal_class=request.normal_class, cells=request.cells,
                                         segmentation=request.segmentation, parent_run=parent_run,
                                         quiet=request.quiet, extra_tags=tags, claim_tags=(("comparison_unit", tag),),
                                         name_prefix=f"pair{index}-",
                                         shift_probe=False),
                            say=say)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as exc:  # noqa: BLE001 - an arm's failure is recorded and its pair excluded, not fatal
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        message = f"{arm.upper()} {plan.name} failed: {type(exc).__name__}: {first_line}"
        traceback.print_exc(file=sys.stderr)
        say(f"pair {index}: {message}")
        return {"failure": message}
    return run_result(outcome.run_id, outcome.reused)


def _pairs(client, request: CompareRequest, view: BoardView) -> list[Pair]:
    """Every pair as its units left it: run ids, failures (in the order of the units), and its figures."""
    pairs = []
    for index in range(request.runs):
        cfg = pair_config(request.config, index)
        pair = Pair(index, cfg.train.seed, cfg.data.seed)
        for status in view.statuses.values():
            if status.unit.group != index:
                continue
            if status.results.get("run_id"):
                pair.runs[status.unit.step] = status.results["run_id"]
            failure = status.results.get("failure") or (status.note if status.state == FAILED else "")
            if failure:
                pair.failures.append(failure)
        _collect(client, pair)
        pairs.append(pair)
    return pairs


def _report_unit(client, experiment_id: str, parent: str, request: CompareRequest, view: BoardView, uri: str,
                 say) -> dict[str, str]:
    """The last unit, run by whichever worker is free once every pair's units are settled: statistics, report and
    plot (in this worker's --out, and on the comparison's run); the comparison's run ends here."""
    try:
        outcome = _summarise(client, experiment_id, parent, _pairs(client, request, view), request, uri, say)
    except BaseException:
        runs_io.end_parent(client, parent, RunStatus.FAILED)
        raise
    runs_io.end_parent(client, parent, RunStatus.FINISHED)
    return {"report": str(outcome.report_path.resolve()), "plot": str(outcome.plot_path.resolve()),
            "written_by": f"{socket.gethostname()}:{os.getpid()}"}


def _outcome(client, parent: str, view: BoardView, request: CompareRequest, say) -> CompareOutcome:
    """What this worker returns: the report's paths (wherever the reporting worker wrote them) and the statistics."""
    report = view.statuses[REPORT_STEP].results
    pairs = _pairs(client, request, view)
    comparisons, _ = _statistics([p for p in pairs if not p.excluded], request)
    if report.get("written_by") != f"{socket.gethostname()}:{os.getpid()}":
        say(f"report written by worker {report.get('written_by')}: {report.get('report')} (and on MLflow run "
            f"{parent}, artifacts comparison/)")
    return CompareOutcome(parent, pairs, comparisons, Path(report.get("report", "")), Path(report.get("plot", "")))


def _collect(client, pair: Pair) -> None:
    """Test metrics of both arms, their colour-baseline and stain-shift checks, the pairing check (same split) and
    n_test / n_train of the split."""
    arms = {arm: pair.runs.get(arm_stage(arm).name) for arm in Arm}
    if pair.failures or not all(arms.values()):
        pair.excluded = "; ".join(pair.failures) or "an arm did not finish"
        return
    digests = set()
    for arm, run_id in arms.items():
        values, digest = runs_io.read_test_scores(client, run_id, METRICS)
        if any(v is None for v in values.values()):
            pair.excluded = f"{arm.upper()} run {run_id} has no test metrics (empty test part?)"
            return
        pair.metrics[str(arm)] = values
        pair.checks[str(arm)], classes = runs_io.read_checks(client, run_id)
        pair.class_names = pair.class_names or classes  # the CTL run's (read first), the MTL run's if it has none
        digests.add(digest)
    if len(digests) != 1:
        pair.excluded = f"the two arms used different splits ({', '.join(sorted(digests))}): not a pair"
        return
    pair.split_digest = digests.pop()
    pair.test_train_ratio = runs_io.read_test_train_ratio(client, arms[Arm.CTL])
    for arm in Arm:
        stages = [plan.name for plan in chain(arm_stage(arm).stage)] if arm is Arm.MTL else [arm_stage(arm).name]
        pair.seconds[str(arm)] = runs_io.run_seconds(client, [pair.runs[name] for name in stages])


# --- statistics, artifacts, report ------------------------------------------------------------------------------

def _statistics(used: list[Pair], request: CompareRequest) -> tuple[dict[str, stats.Comparison], float]:
    """The t-tests of every metric over the used pairs (none under 2), and the test/train ratio they correct by."""
    ratios = [p.test_train_ratio for p in used if p.test_train_ratio is not None]
    ratio = sum(ratios) / len(ratios) if ratios else request.config.data.test_fraction / (
        1 - request.config.data.test_fraction)
    comparisons: dict[str, stats.Comparison] = {}
    if len(used) >= 2:
        for metric in METRICS:
            comparisons[metric] = stats.compare_arms([p.metrics[Arm.CTL][metric] for p in used],
                                                     [p.metrics[Arm.MTL][metric] for p in used], ratio, metric)
    return comparisons, ratio


def _summarise(client, experiment_id: str, parent: str, pairs: list[Pair], request: CompareRequest, uri: str,
               say) -> CompareOutcome:
    used = [p for p in pairs if not p.excluded]
    for p in pairs:
        if p.excluded:
            say(f"pair {p.index} excluded from the statistics: {p.excluded}")
    comparisons, ratio = _statistics(used, request)
    cfg = request.config
    date = dt.date.today().isoformat()
    stem = f"compare-{cfg.train.backbone}-{request.task}-{date}"
    request.report_dir.mkdir(parents=True, exist_ok=True)
    plot_path = request.report_dir / f"{stem}.png"
    report_path = request.report_dir / f"{stem}.md"
    values = {m: ([p.metrics[Arm.CTL][m] for p in used], [p.metrics[Arm.MTL][m] for p in used]) for m in METRICS}
    paired_box_strip_png(values, plot_path, f"CTL vs MTL, {cfg.train.backbone}, {request.task} "
                                            f"({len(used)} paired runs)")
    table = table_v(pairs)
    digests = [runs_io.read_dataset_digest(client, p.runs.get(Stage.CLASSICAL)) for p in used]
    beside, config_copy, predictions = [], None, None
    if request.config_file is not None and request.config_file.is_file():  # the path may not outlive the command
        copy_path = request.report_dir / f"{stem}{CONFIG_SUFFIX}"
        copy_path.write_bytes(request.config_file.read_bytes())
        beside.append(copy_path)
        config_copy = (copy_path.name, sha256_file(copy_path))
    frames = {}  # (pair, arm) -> the arm run's per-image test predictions, so a reader recomputes without the store
    for p in pairs:
        for arm in Arm:
            run_id = p.runs.get(arm_stage(arm).name)
            frame = runs_io.read_test_predictions(client, run_id) if run_id else None
            if frame is not None:
                frames[(p.index, str(arm))] = frame
    if frames:
        predictions_path = request.report_dir / f"{stem}{PREDICTIONS_SUFFIX}"
        with atomic_path(predictions_path) as tmp:
            predictions_table(pairs, frames).to_csv(tmp, index=False)
        beside.append(predictions_path)
        predictions = (predictions_path.name, len(frames))
    text = render_report(request, pairs, comparisons, ratio, table, plot_path.name, parent, uri, experiment_id,
                         dataset_digests=digests, commit=git_commit(), config_copy=config_copy,
                         predictions=predictions)
    write_text_atomic(report_path, text)
    runs_io.log_to_parent(client, parent, len(used), len(pairs) - len(used), comparisons, table, text, plot_path,
                          ratio, beside)
    if len(used) < 2:
        raise UserError(f"only {len(used)} of {len(pairs)} pairs finished both arms; a t-test needs at least 2 "
                        f"(see {report_path}). Rerun the same command to retry the failed arms")
    for c in comparisons.values():
        say(c.verdict)
    say(f"report: {report_path}; plot: {plot_path}")
    return CompareOutcome(parent, pairs, comparisons, report_path, plot_path)

"""`mtl-suite compare` as MLflow runs: one comparison parent run; per pair i a classical (CTL) run and a
stage1 -> stage2 -> stage3 (MTL) chain, all tagged with the comparison and nested under it.

Pairing: pair i sets both `train.seed` and `data.seed` to base + i, so both arms train from the same seed on the
same freshly drawn split (checked: both runs must carry the same split digest). Stages 1 and 2 are re-run per pair
with the pair's data seed, because stage 2 trains on cell crops of the split's development images: a stage-2 model
shared across pairs would have seen other pairs' test images. Stage 1 without a source data set only saves the
ImageNet backbone, so re-running it costs nothing. The CTL arm and stage 3 get the same budget (epochs, head,
optimiser); stages 1-2 are MTL's extra pre-training, which is the method under test.

Resume: the parent run is found again by a key over everything but the number of runs; a pair's stage runs that
FINISHED are reused, anything else is (re)run. A failed arm is recorded and its pair excluded from the
statistics, and the report lists it.

The MLflow I/O is tracking/comparison_runs.py, the statistics analysis/compare.py, the Markdown
analysis/comparison_report.py."""

from __future__ import annotations

import datetime as dt
import json
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
from mtl_suite.catalog import Arm, CompareRequest, Pair, Stage, StagePlan, arm_stage, chain
from mtl_suite.config import ExperimentConfig, keyed_settings
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import with_backbone_sizes
from mtl_suite.io_utils import atomic_path, sha256_file, sha256_text, write_text_atomic
from mtl_suite.tracking import comparison_runs as runs_io
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import take_launcher_run, use_tracking


@dataclass
class CompareOutcome:
    parent_run_id: str
    pairs: list[Pair]
    comparisons: dict[str, stats.Comparison]
    report_path: Path
    plot_path: Path


def run_comparison(request: CompareRequest, say: Callable[[str], None] = print) -> CompareOutcome:
    if request.runs < 2:
        raise UserError(f"--runs must be at least 2: a t-test needs two or more paired runs. Received: {request.runs}")
    from mtl_suite.workflows.stage import pinned_segmentation

    request = replace(request, config=with_backbone_sizes(request.config))
    cfg = request.config
    uri, experiment_id = use_tracking(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    check_inputs(request)  # before the comparison's run opens: a user error leaves no FAILED run
    # every pair's stage 2 cuts its cells with one segmentation, chosen now: a U-Net trained while the comparison
    # runs cannot give later pairs other cells, and a resume after one is a new comparison (the key holds it)
    request = replace(request, segmentation=pinned_segmentation(cfg.data, request.cells, experiment_id))
    client = mlflow.MlflowClient()
    parent = runs_io.find_or_create_parent(client, experiment_id, comparison_key(request), cfg, request.task,
                                           request.runs, request.command, request.study, say,
                                           take_launcher_run(experiment_id))  # `mlflow run . -e compare`'s run
    say(f"comparison run {parent} ({request.runs} pairs, backbone {cfg.train.backbone}, task {request.task}) in {uri}")
    pairs = []
    try:
        display = progress.current()
        with display.level("pairs", request.runs) as pair_level:
            for i in range(request.runs):
                pairs.append(_run_pair(client, experiment_id, parent, request, i, say))
                display.advance(pair_level, f"pair {i}")
    except KeyboardInterrupt:
        runs_io.end_parent(client, parent, RunStatus.KILLED)
        raise
    except BaseException:
        runs_io.end_parent(client, parent, RunStatus.FAILED)
        raise
    try:
        outcome = _summarise(client, experiment_id, parent, pairs, request, uri, say)
    except BaseException:
        runs_io.end_parent(client, parent, RunStatus.FAILED)
        raise
    runs_io.end_parent(client, parent, RunStatus.FINISHED)
    return outcome


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


def _run_pair(client, experiment_id: str, parent: str, request: CompareRequest, index: int, say) -> Pair:
    from mtl_suite.workflows.stage import StageRequest, run_stage  # looked up per call: tests replace run_stage

    cfg = pair_config(request.config, index)
    pair = Pair(index, cfg.train.seed, cfg.data.seed)
    pair.runs = runs_io.finished_stage_runs(client, experiment_id, parent, index)

    def stage(plan: StagePlan, arm: Arm, parent_run: str | None) -> str | None:
        name = plan.name
        if name in pair.runs:
            say(f"pair {index}: reusing finished {name} run {pair.runs[name]}")
            return pair.runs[name]
        tags = (("mlflow.parentRunId", parent), ("comparison_run", parent), ("comparison_pair", str(index)),
                ("comparison_arm", str(arm)), ("comparison_role", "arm" if plan.arm else "pretrain"))
        say(f"pair {index} (seed {cfg.train.seed}, split seed {cfg.data.seed}): {arm.upper()} {name}")
        try:
            outcome = run_stage(StageRequest(stage=name, config=cfg, task=request.task,
                                             normal_class=request.normal_class, cells=request.cells,
                                             segmentation=request.segmentation, parent_run=parent_run,
                                             quiet=request.quiet, extra_tags=tags, name_prefix=f"pair{index}-",
                                             shift_probe=False),
                                say=say)
        except (KeyboardInterrupt, UserError):
            raise  # an interrupt, or the user's input (bad path, value): every pair would fail the same way
        except Exception as exc:  # noqa: BLE001 - an arm's failure is recorded and its pair excluded, not fatal
            first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
            message = f"{arm.upper()} {name} failed: {type(exc).__name__}: {first_line}"
            traceback.print_exc(file=sys.stderr)
            say(f"pair {index}: {message}")
            pair.failures.append(message)
            return None
        pair.runs[name] = outcome.run_id
        return outcome.run_id

    if stage(arm_stage(Arm.CTL), Arm.CTL, None) is None:
        pair.failures.append("MTL not run: the pair is excluded because its CTL arm failed")
    else:
        previous = None
        for plan in chain(arm_stage(Arm.MTL).stage):
            previous = stage(plan, Arm.MTL, previous)
            if previous is None:
                break
    _collect(client, pair)
    return pair


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

def _summarise(client, experiment_id: str, parent: str, pairs: list[Pair], request: CompareRequest, uri: str,
               say) -> CompareOutcome:
    used = [p for p in pairs if not p.excluded]
    for p in pairs:
        if p.excluded:
            say(f"pair {p.index} excluded from the statistics: {p.excluded}")
    ratios = [p.test_train_ratio for p in used if p.test_train_ratio is not None]
    ratio = sum(ratios) / len(ratios) if ratios else request.config.data.test_fraction / (
        1 - request.config.data.test_fraction)
    comparisons: dict[str, stats.Comparison] = {}
    if len(used) >= 2:
        for metric in METRICS:
            comparisons[metric] = stats.compare_arms([p.metrics[Arm.CTL][metric] for p in used],
                                                     [p.metrics[Arm.MTL][metric] for p in used], ratio, metric)
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

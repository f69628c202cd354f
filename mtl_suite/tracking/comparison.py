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
statistics, and the report lists it."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus

from mtl_suite.analysis import compare as stats
from mtl_suite.analysis.figures import paired_box_strip_png
from mtl_suite.analysis.tables import markdown_table
from mtl_suite.config import ExperimentConfig, to_flat_dict
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text, write_text_atomic
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import use_tracking

METRICS = ("accuracy", "f1_macro")
MTL_CHAIN = ("stage1", "stage2", "stage3")


@dataclass(frozen=True)
class CompareRequest:
    config: ExperimentConfig  # base config; pair i uses seeds base + i
    task: str
    runs: int
    normal_class: str | None = None
    cells: str | None = None
    report_dir: Path = Path("reports")
    command: str = ""
    study: str | None = None
    quiet: bool = False


@dataclass
class Pair:
    index: int
    seed: int
    data_seed: int
    runs: dict[str, str] = field(default_factory=dict)  # stage -> finished run id
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> metric -> value
    split_digest: str = ""
    test_train_ratio: float | None = None
    excluded: str = ""  # why the pair is left out of the statistics ("" = used)


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
    cfg = request.config
    from mtl_suite.data import default_masks_for

    if request.cells is None and cfg.data.masks is None and default_masks_for(cfg.data.path) is None:
        raise UserError("the MTL arm's stage 2 trains on single cells: pass --masks PATH (segmentations of the "
                        "smears, same relative names) or --cells PATH (a single-cell dataset)")
    uri, experiment_id = use_tracking(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    client = mlflow.MlflowClient()
    parent = _find_or_create_parent(client, experiment_id, request, say)
    say(f"comparison run {parent} ({request.runs} pairs, backbone {cfg.train.backbone}, task {request.task}) in {uri}")
    pairs = []
    try:
        for i in range(request.runs):
            pairs.append(_run_pair(client, experiment_id, parent, request, i, say))
    except KeyboardInterrupt:
        client.set_terminated(parent, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FAILED))
        raise
    try:
        outcome = _summarise(client, parent, pairs, request, uri, say)
    except BaseException:
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(parent, "FINISHED")
    return outcome


# --- the parent run ---------------------------------------------------------------------------------------------

def comparison_key(request: CompareRequest) -> str:
    """Everything that defines the comparison except the number of runs (so a rerun with more runs extends it)."""
    flat = to_flat_dict(request.config)
    flat.pop("tracking.tracking_uri", None)
    body = json.dumps({"config": {k: str(v) for k, v in sorted(flat.items())}, "task": request.task,
                       "normal_class": request.normal_class, "cells": request.cells, "study": request.study},
                      sort_keys=True)
    return sha256_text(body)[:16]


def _find_or_create_parent(client, experiment_id: str, request: CompareRequest, say) -> str:
    key = comparison_key(request)
    found = client.search_runs([experiment_id], f"tags.run_kind = 'comparison' AND tags.comparison_key = '{key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "comparison_runs", str(max(request.runs, int(found[0].data.tags.get(
            "comparison_runs", "0") or 0))))
        say(f"resuming comparison run {run_id} (same settings: key {key})")
        return run_id
    cfg = request.config
    tags = {"run_kind": "comparison", "comparison_key": key, "backbone": cfg.train.backbone, "task": request.task,
            "comparison_runs": str(request.runs), "folds": str(cfg.data.folds), "git_commit": git_commit(),
            "command": request.command[:5000], "mlflow.runName": f"compare-{cfg.train.backbone}-{request.task}"}
    if request.study:
        tags["study"] = request.study
    run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    params = {k: str(v)[:500] for k, v in to_flat_dict(cfg).items()
              if k not in ("tracking.tracking_uri", "train.seed", "data.seed")}
    params.update({"base_seed": str(cfg.train.seed), "base_data_seed": str(cfg.data.seed), "task": request.task})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


# --- one pair ---------------------------------------------------------------------------------------------------

def pair_config(config: ExperimentConfig, index: int) -> ExperimentConfig:
    return replace(config, data=replace(config.data, seed=config.data.seed + index),
                   train=replace(config.train, seed=config.train.seed + index))


def _run_pair(client, experiment_id: str, parent: str, request: CompareRequest, index: int, say) -> Pair:
    from mtl_suite.tracking.stage_runs import StageRequest, run_stage

    cfg = pair_config(request.config, index)
    pair = Pair(index, cfg.train.seed, cfg.data.seed)
    pair.runs = _finished_stage_runs(client, experiment_id, parent, index)

    def stage(name: str, arm: str, parent_run: str | None) -> str | None:
        if name in pair.runs:
            say(f"pair {index}: reusing finished {name} run {pair.runs[name]}")
            return pair.runs[name]
        tags = (("mlflow.parentRunId", parent), ("comparison_run", parent), ("comparison_pair", str(index)),
                ("comparison_arm", arm), ("comparison_role", "arm" if name in ("classical", "stage3") else "pretrain"))
        say(f"pair {index} (seed {cfg.train.seed}, split seed {cfg.data.seed}): {arm.upper()} {name}")
        try:
            outcome = run_stage(StageRequest(stage=name, config=cfg, task=request.task,
                                             normal_class=request.normal_class, cells=request.cells,
                                             parent_run=parent_run, quiet=request.quiet, extra_tags=tags), say=say)
        except (KeyboardInterrupt, UserError):
            raise  # an interrupt, or the user's input (bad path, value): every pair would fail the same way
        except Exception as exc:  # noqa: BLE001 - an arm's failure is recorded and its pair excluded, not fatal
            message = f"{arm.upper()} {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
            say(f"pair {index}: {message}")
            pair.failures.append(message)
            return None
        pair.runs[name] = outcome.run_id
        return outcome.run_id

    if stage("classical", "ctl", None) is None:
        pair.failures.append("MTL not run: the pair is excluded because its CTL arm failed")
    else:
        previous = None
        for name in MTL_CHAIN:
            previous = stage(name, "mtl", previous)
            if previous is None:
                break
    _collect(client, pair)
    return pair


def _finished_stage_runs(client, experiment_id: str, parent: str, index: int) -> dict[str, str]:
    runs = client.search_runs([experiment_id], f"tags.comparison_run = '{parent}' AND tags.comparison_pair = '{index}' "
                                               f"AND tags.run_kind = 'stage' AND attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    found: dict[str, str] = {}
    for run in runs:
        found.setdefault(run.data.tags["stage"], run.info.run_id)
    # a stage run only counts if its own predecessor in this pair is the one we reuse
    if "stage3" in found and found.get("stage2") and \
            client.get_run(found["stage3"]).data.tags.get("parent_stage_run") != found["stage2"]:
        found.pop("stage3")
    return found


def _collect(client, pair: Pair) -> None:
    """Test metrics of both arms, the pairing check (same split) and n_test / n_train of the split."""
    arms = {"ctl": pair.runs.get("classical"), "mtl": pair.runs.get("stage3")}
    if pair.failures or not all(arms.values()):
        pair.excluded = "; ".join(pair.failures) or "an arm did not finish"
        return
    digests = set()
    for arm, run_id in arms.items():
        run = client.get_run(run_id)
        values = {m: run.data.metrics.get(f"test/{m}") for m in METRICS}
        if any(v is None for v in values.values()):
            pair.excluded = f"{arm.upper()} run {run_id} has no test metrics (empty test part?)"
            return
        pair.metrics[arm] = values
        digests.add(run.data.tags.get("split_digest", ""))
    if len(digests) != 1:
        pair.excluded = f"the two arms used different splits ({', '.join(sorted(digests))}): not a pair"
        return
    pair.split_digest = digests.pop()
    pair.test_train_ratio = _test_train_ratio(client, arms["ctl"])


def _test_train_ratio(client, stage_run_id: str) -> float | None:
    """From the nested 'final' run: trained on n_train development images, tested on n_validation test images."""
    run = client.get_run(stage_run_id)
    finals = client.search_runs([run.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{stage_run_id}' AND tags.fold = 'final'", max_results=1)
    if not finals:
        return None
    params = finals[0].data.params
    n_train, n_test = int(params.get("n_train", 0)), int(params.get("n_validation", 0))
    return n_test / n_train if n_train else None


# --- statistics, artifacts, report ------------------------------------------------------------------------------

def _summarise(client, parent: str, pairs: list[Pair], request: CompareRequest, uri: str, say) -> CompareOutcome:
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
            comparisons[metric] = stats.compare_arms([p.metrics["ctl"][metric] for p in used],
                                                     [p.metrics["mtl"][metric] for p in used], ratio, metric)
    cfg = request.config
    date = dt.date.today().isoformat()
    stem = f"compare-{cfg.train.backbone}-{request.task}-{date}"
    request.report_dir.mkdir(parents=True, exist_ok=True)
    plot_path = request.report_dir / f"{stem}.png"
    report_path = request.report_dir / f"{stem}.md"
    values = {m: ([p.metrics["ctl"][m] for p in used], [p.metrics["mtl"][m] for p in used]) for m in METRICS}
    paired_box_strip_png(values, plot_path, f"CTL vs MTL, {cfg.train.backbone}, {request.task} "
                                            f"({len(used)} paired runs)")
    table = table_v(pairs)
    run = client.get_run(parent)
    text = render_report(request, pairs, comparisons, ratio, table, plot_path.name, parent, uri,
                         run.info.experiment_id)
    write_text_atomic(report_path, text)
    _log_to_parent(client, parent, pairs, comparisons, table, text, plot_path, ratio)
    if len(used) < 2:
        raise UserError(f"only {len(used)} of {len(pairs)} pairs finished both arms; a t-test needs at least 2 "
                        f"(see {report_path}). Rerun the same command to retry the failed arms")
    for c in comparisons.values():
        say(c.verdict)
    say(f"report: {report_path}; plot: {plot_path}")
    return CompareOutcome(parent, pairs, comparisons, report_path, plot_path)


def table_v(pairs: list[Pair]) -> pd.DataFrame:
    """The paper's Table V: one row per run, test accuracy of CTL and MTL (here with macro-F1 beside it)."""
    rows = []
    for p in pairs:
        row = {"run": p.index + 1, "seed": p.seed, "split_seed": p.data_seed}
        for arm in ("ctl", "mtl"):
            for m in METRICS:
                row[f"{arm}_{m}"] = p.metrics.get(arm, {}).get(m, math.nan)
        row["status"] = "excluded: " + p.excluded if p.excluded else "used"
        rows.append(row)
    return pd.DataFrame(rows)


def render_report(request: CompareRequest, pairs: list[Pair], comparisons: dict[str, stats.Comparison],
                  ratio: float, table: pd.DataFrame, plot_name: str, parent: str, uri: str,
                  experiment_id: str) -> str:
    cfg = request.config
    used = [p for p in pairs if not p.excluded]
    digests = sorted({_tag(p, "dataset_digest") for p in used} - {""})
    lines = [f"# CTL vs MTL: {cfg.train.backbone}, {request.task} task", "",
             "Made by:", "", "```", request.command or "mtl-suite compare", "```", "",
             f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}; code: git {git_commit()[:12]}",
             f"- Machine: {machine_description()}",
             f"- MLflow: `{uri}`, experiment id {experiment_id}, comparison run `{parent}`",
             f"- Data: `{cfg.data.path or 'bundled sample'}`, dataset digest "
             f"{', '.join(d[:16] for d in digests) or 'n/a'}; {cfg.data.image_size} px; outer test fraction "
             f"{cfg.data.test_fraction}; {cfg.data.folds} CV folds per run; n_test / n_train = {ratio:.3f}",
             f"- Budget per arm: {cfg.train.warmup_epochs} warm-up + {cfg.train.finetune_epochs} fine-tuning "
             f"epochs, batch {cfg.train.batch_size}, lr {cfg.train.learning_rate}, head {cfg.train.dense_units}, "
             f"weights {cfg.train.weights}" + (f", parameters from study {request.study}" if request.study else ""),
             "- Protocol: pair i trains both arms with seed base+i on the same split (split seed base+i; the split "
             "digests of the two arms are checked to be equal). CTL = ImageNet -> task. MTL = ImageNet -> stage 2 "
             "(single-cell crops of the same split's development images only; re-run per pair) -> stage 3 with the "
             "same budget as CTL. Scores are on the outer test part of each split, after refitting on all "
             "development images.", "",
             "## Verdict", ""]
    if comparisons:
        lines += [f"- {c.verdict}" for c in comparisons.values()]
    else:
        lines.append(f"- No verdict: only {len(used)} of {len(pairs)} pairs finished both arms; a t-test needs 2.")
    lines += ["", "The verdict uses the Nadeau-Bengio corrected resampled t-test: the runs reuse one data set, so "
              "their differences are correlated and the plain paired t-test overstates significance.", "",
              "## Table V: test scores per run (%)", ""]
    rows = []
    for _, r in table.iterrows():
        rows.append([int(r["run"]), int(r["seed"]), _pct(r["ctl_accuracy"]), _pct(r["mtl_accuracy"]),
                     _pct(r["mtl_accuracy"] - r["ctl_accuracy"]), _pct(r["ctl_f1_macro"]),
                     _pct(r["mtl_f1_macro"]), r["status"]])
    lines.append(markdown_table(["run", "seed", "CTL accuracy", "MTL accuracy", "MTL - CTL", "CTL macro-F1",
                                 "MTL macro-F1", "status"], rows))
    if comparisons:
        lines += ["## Statistics (MTL - CTL, percentage points)", ""]
        srows = []
        for c in comparisons.values():
            srows.append([c.metric, f"{100 * c.ctl.mean:.2f} ± {100 * c.ctl.std:.2f}",
                          f"{100 * c.mtl.mean:.2f} ± {100 * c.mtl.std:.2f}", f"{100 * c.mean_difference:+.2f}",
                          f"[{100 * c.ci95[0]:+.2f}, {100 * c.ci95[1]:+.2f}]",
                          f"[{100 * c.ci95_corrected[0]:+.2f}, {100 * c.ci95_corrected[1]:+.2f}]",
                          _test(c.paired), _test(c.welch), _test(c.corrected), f"{c.cohens_d:.2f}"])
        lines.append(markdown_table(["metric", "CTL mean ± sd", "MTL mean ± sd", "difference", "95% CI (paired)",
                                     "95% CI (corrected)", "paired t", "Welch t", "corrected t (Nadeau-Bengio)",
                                     "Cohen's d_z"], srows))
        lines.append(f"n = {len(used)} pairs; corrected test uses n_test / n_train = {ratio:.3f}. "
                     "All values computed by scipy from the runs above.\n")
    failed = [p for p in pairs if p.excluded]
    lines += ["## Failed or excluded pairs", ""]
    lines += [f"- run {p.index + 1} (seed {p.seed}): {p.excluded}" for p in failed] or ["- none"]
    lines += ["", "## Figure", "", f"![CTL vs MTL per run]({plot_name})", "",
              "Boxes: per-arm distribution; dots: runs; grey lines join the two arms of a pair.", "",
              "## Runs", ""]
    lines += [f"- run {p.index + 1}: " + ", ".join(f"{k} `{v}`" for k, v in sorted(p.runs.items())) for p in pairs]
    return "\n".join(lines) + "\n"


def _tag(pair: Pair, key: str) -> str:
    run_id = pair.runs.get("classical")
    return mlflow.MlflowClient().get_run(run_id).data.tags.get(key, "") if run_id else ""


def _test(t: stats.TestResult) -> str:
    return f"t = {t.statistic:.3f}, df = {t.df:.1f}, p = {t.p_value:.4g}"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"


def _log_to_parent(client, parent: str, pairs: list[Pair], comparisons: dict[str, stats.Comparison],
                   table: pd.DataFrame, report: str, plot_path: Path, ratio: float) -> None:
    now = int(dt.datetime.now().timestamp() * 1000)
    metrics = [Metric("compare/pairs_used", float(sum(not p.excluded for p in pairs)), now, 0),
               Metric("compare/pairs_excluded", float(sum(bool(p.excluded) for p in pairs)), now, 0),
               Metric("compare/test_train_ratio", float(ratio), now, 0)]
    for name, c in comparisons.items():
        values = {"ctl_mean": c.ctl.mean, "mtl_mean": c.mtl.mean, "mean_difference": c.mean_difference,
                  "p_paired": c.paired.p_value, "p_welch": c.welch.p_value, "p_corrected": c.corrected.p_value,
                  "t_corrected": c.corrected.statistic, "cohens_d": c.cohens_d}
        metrics += [Metric(f"compare/{name}/{k}", float(v), now, 0) for k, v in values.items() if math.isfinite(v)]
    client.log_batch(parent, metrics=metrics)
    client.set_tag(parent, "verdict", (comparisons["accuracy"].verdict if comparisons else "no verdict")[:5000])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "comparison"
        folder.mkdir()
        table.to_csv(folder / "table_v.csv", index=False)
        (folder / "report.md").write_text(report, encoding="utf-8")
        (folder / "statistics.json").write_text(json.dumps({k: c.as_dict() for k, c in comparisons.items()},
                                                           indent=2, default=float), encoding="utf-8")
        (folder / plot_path.name).write_bytes(plot_path.read_bytes())
        client.log_artifacts(parent, str(folder), artifact_path="comparison")


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        tf_version = tf.__version__
    except Exception:  # noqa: BLE001 - only for the description
        gpus, tf_version = [], "unknown"
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU cores, "
            f"{'GPU: ' + ', '.join(gpus) if gpus else 'no GPU'}; Python {platform.python_version()}, "
            f"TensorFlow {tf_version}, MLflow {mlflow.__version__}")



"""Fault injection (issue 8): kill a tiny-backbone stage-3 CV run with SIGKILL at random moments, rerun the same
command after each kill, and check the final results against an uninterrupted run with the same seed; then the
same for a 4-trial tuning study (benchmarks/faults_study.py).

    python benchmarks/bench_faults.py --kills 5 --out /tmp/faults          # both parts
    python benchmarks/bench_faults.py --part stage --kills 5                # the stage run only
    python benchmarks/bench_faults.py --quick                               # one kill, smallest run (smoke)

The stage command runs stages 1, 2 and 3 (stage 3 runs the missing earlier stages first), so the kills land in any
of them: while loading data, in a fold, between folds, during the refit or while logging the model. Each kill time
is drawn (seeded) from the start-up time plus a share of the uninterrupted run's duration, so five kills spread over
the work. Checked after the last rerun: every kill was survived (the rerun exited 0), the finished stage runs'
cv/* and test/* metrics equal the uninterrupted run's exactly, no stage or fold run is left RUNNING, and each
finished stage run has exactly one finished nested run per fold (no duplicates).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, add_quick, emit, quick_defaults

STAGE_ARGS = ["stage3", "--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "3",
              "--epochs", "4", "--finetune-epochs", "2", "--unfreeze-layers", "2", "--batch-size", "16",
              "--early-stopping-patience", "1", "--quiet"]


def stage_command(uri: str, experiment: str) -> list[str]:
    return [sys.executable, "-m", "mtl_suite", *STAGE_ARGS, "--tracking-uri", uri, "--experiment", experiment]


def run_to_end(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def run_with_kill(command: list[str], env: dict[str, str], log: Path, delay: float) -> bool:
    """Start the command, SIGKILL it after `delay` seconds; True if it was killed (False: it finished first)."""
    with log.open("a") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}) before its kill; see {log}")
    return False


def store_state(uri: str, experiment: str) -> dict:
    """Finished stage runs' metrics by stage, and the checks on nested runs."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=5000) if found else []
    stages = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    finished = {r.data.tags["stage"]: r for r in stages if r.info.status == "FINISHED"}
    folds_ok = True
    for stage, run in finished.items():
        if stage == "stage1":  # ImageNet weights saved as they are: no folds
            continue
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        names = sorted(r.data.tags.get("fold") for r in children)
        expected = sorted([f"fold-{k}" for k in range(int(run.data.params.get("data.folds", 0)))] + ["final"])
        folds_ok &= names == expected and all(r.info.status == "FINISHED" for r in children)
    return {
        "metrics": {stage: {k: v for k, v in run.data.metrics.items() if k.startswith(("cv/", "test/"))}
                    for stage, run in finished.items()},
        "stage_runs": {status: sum(r.info.status == status for r in stages)
                       for status in ("FINISHED", "KILLED", "FAILED", "RUNNING")},
        "left_running": sum(r.info.status == "RUNNING" for r in runs),
        "one_finished_run_per_fold": folds_ok,
    }


def run_stage_faults(kills: int, seed: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{workdir}/mlflow.db"
    env = {**os.environ, "MTL_SUITE_CACHE": str(workdir / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = workdir / "stage.log"
    print(f"uninterrupted reference run (log: {log}) ...", flush=True)
    reference_s = run_to_end(stage_command(uri, "reference"), env, log)
    startup_s = _startup_seconds(env)
    print(f"  {reference_s:.0f} s (start-up about {startup_s:.0f} s)", flush=True)
    rng = random.Random(seed)
    work_s = max(1.0, reference_s - startup_s)
    delays, delivered, attempts = [], 0, 0
    while delivered < kills and attempts < 4 * kills:
        attempts += 1
        delay = startup_s + rng.uniform(0.1, 0.6) * work_s / kills * 2
        killed = run_with_kill(stage_command(uri, "faults"), env, log, delay)
        delays.append(round(delay, 1))
        print(f"  attempt {attempts}: {'killed' if killed else 'finished'} after {delay:.1f} s", flush=True)
        if not killed:
            break  # the run completed: no more points to kill it at
        delivered += 1
    final_s = run_to_end(stage_command(uri, "faults"), env, log)
    reference, faulted = store_state(uri, "reference"), store_state(uri, "faults")
    equal = bool(reference["metrics"]) and faulted["metrics"] == reference["metrics"]
    return {
        "kills_asked": kills, "kills_delivered": delivered, "kill_delays_s": delays,
        "kills_survived": delivered,  # a rerun that failed would have stopped this script
        "resumed_equals_uninterrupted": equal,
        "runs_left_running": faulted["left_running"],
        "one_finished_run_per_fold": faulted["one_finished_run_per_fold"],
        "stage_runs": faulted["stage_runs"],
        "reference_s": round(reference_s, 1), "last_rerun_s": round(final_s, 1),
        "metrics_reference": reference["metrics"], "metrics_resumed": faulted["metrics"],
    }


def _startup_seconds(env: dict[str, str]) -> float:
    """How long the command takes to start (imports) before it does any work: kills before then test nothing."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mtl_suite.workflows.stage"], env=env, cwd=REPO,
                   capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill times")
    parser.add_argument("--part", choices=["stage", "study", "both"], default="both")
    parser.add_argument("--out", type=Path, default=None, help="folder for the stores, logs and faults.json")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), kills=1, part="stage")
    out = args.out or Path(tempfile.mkdtemp(prefix="mtl-faults-"))
    figures: dict = {}
    if args.part in ("stage", "both"):
        figures["stage"] = run_stage_faults(args.kills, args.seed, out / "stage")
    if args.part in ("study", "both"):
        sys.path.insert(0, str(Path(__file__).parent))
        from faults_study import run_study_faults

        figures["study"] = run_study_faults(kills=args.kills, seed=args.seed, workdir=out / "study", quick=args.quick)
    (out / "faults.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps({part: {k: v for k, v in f.items() if not k.startswith("metrics_")}
                      for part, f in figures.items()}, indent=2, default=str))
    print(f"figures: {out / 'faults.json'}")
    emit({part: {k: v for k, v in f.items() if not isinstance(v, (dict, list))} for part, f in figures.items()})


if __name__ == "__main__":
    main()

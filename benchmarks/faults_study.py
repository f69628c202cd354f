"""Fault injection (not a test) for `mtl-suite tune`: a small study is run once without interruption, then again
from scratch while SIGKILLs land at seeded random moments (start-up, mid-trial, between trials), each kill followed
by the same command until it completes. The two studies are compared slot by slot (parameters, state, value), and
the killed one is checked for lost trials, leftover RUNNING trials and duplicate MLflow trial runs.

    python benchmarks/faults_study.py --out /tmp/faults-study                 # 5 kills, 4 trials
    python benchmarks/faults_study.py --kills 10 --trials 6 --out /tmp/f     # more
    python benchmarks/faults_study.py --quick                                # 1 kill, 2 trials, small space

Setting: stage 3, backbone `tiny` (no weights), 64 px, the bundled sample (95 smears, 19 held out), 2-fold CV,
TPE seed --seed, no pruning, `studies/stage3.yaml` (tiny: 1 warm-up epoch, augmentation none|paper), a journal
file storage (the default kind: no heartbeats), one MLflow sqlite store and one $MTL_SUITE_CACHE under the work
dir, shared by both studies (so both start from the same stage-2 parent run). Kill moments: uniform in
[0.1, 1.1] x the expected remaining time of the attempt (start-up + remaining trials x mean trial time, both
measured on the uninterrupted study), from random.Random(--seed).

`run_study_faults(kills, seed, workdir, quick)` is the importable entry (benchmarks/bench_faults.py); it returns
the figures and writes them to <workdir>/faults_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUICK_SPACE = REPO / "benchmarks" / "tuning_space_quick.yaml"
EXPERIMENT = "faults"
COMMON = ["--stage", "stage3", "--backbone", "tiny", "--weights", "none", "--image-size", "64", "--folds", "2",
          "--pruner", "none", "--sampler", "tpe", "--quiet"]
STARTUP_S = 25.0
ATTEMPT_LIMIT_S = 1800  # one command (the uninterrupted study includes making the stage 1-2 parent runs)


def run_study_faults(kills: int, seed: int, workdir: Path, quick: bool, trials: int | None = None) -> dict[str, Any]:
    trials = trials or (2 if quick else 4)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MTL_SUITE_OPTUNA_STORAGE",
                                                            "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MTL_SUITE_CACHE"] = str(workdir / "cache")
    tracking = f"sqlite:///{workdir}/mlflow.db"
    _experiment(tracking, workdir)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def command(study: str) -> list[str]:
        return [sys.executable, "-m", "mtl_suite", "tune", *COMMON, "--trials", str(trials), "--seed", str(seed),
                "--study-name", study, "--storage", str(workdir / f"{study}.log"), "--tracking-uri", tracking,
                "--experiment", EXPERIMENT, "--max-retry", str(kills + 1),
                *(["--space", str(QUICK_SPACE)] if quick else [])]

    # 1. uninterrupted (it also makes the stage 1 and 2 parent runs both studies start from)
    reference = f"uninterrupted-{stamp}"
    started = time.time()
    code, _ = _attempt(command(reference), env, workdir / "logs" / "uninterrupted.log", None)
    if code != 0:
        raise RuntimeError(f"the uninterrupted study failed ({code}): see {workdir / 'logs' / 'uninterrupted.log'}")
    reference_s = time.time() - started
    ref_trials = _trials(workdir / f"{reference}.log", reference)
    startup_s, trial_s = _timings(ref_trials)

    # 2. the same study from scratch, killed `kills` times at random moments, rerun until it completes
    killed = f"killed-{stamp}"
    journal = workdir / f"{killed}.log"
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    attempts, started = 0, time.time()
    while True:
        attempts += 1
        log = workdir / "logs" / f"killed-{attempts}.log"
        kill_at = None
        if sum(e["killed"] for e in events) < kills:
            done = _finished(journal, killed)
            expected = startup_s + max(trials - done, 1) * trial_s
            kill_at = rng.uniform(0.1, 1.1) * expected
        attempt_started, finished_at_start = time.time(), _finished(journal, killed)
        code, pid = _attempt(command(killed), env, log, kill_at)
        event = {"attempt": attempts, "seconds": round(time.time() - attempt_started, 1), "exit_code": code,
                 "killed": code == -signal.SIGKILL, "kill_at_s": round(kill_at, 1) if kill_at else None}
        if event["killed"]:
            event.update(_snapshot(journal, killed, pid, finished_at_start))
        events.append(event)
        if code == 0:
            break
        if not event["killed"]:
            raise RuntimeError(f"attempt {attempts} failed on its own (exit {code}): see {log}")
        if attempts > kills + 5:
            raise RuntimeError(f"no completion after {attempts} attempts: see {workdir / 'logs'}")
    killed_s = time.time() - started

    figures = compare(workdir, tracking, reference, killed, trials)
    applied = [e for e in events if e["killed"]]
    # a kill is survived when the command after it ran without an error of its own and the study ended whole
    figures.update({
        "kills_requested": kills, "kills_applied": len(applied),
        "kills_survived": len(applied) if figures["study_whole"] else 0,
        **{f"kills_{moment.replace(' ', '_').replace('-', '_')}": sum(e["moment"] == moment for e in applied)
           for moment in ("start-up", "trial start", "mid-trial", "between trials")},
        "attempts": attempts, "uninterrupted_s": round(reference_s, 1), "killed_total_s": round(killed_s, 1),
        "startup_s": round(startup_s, 1), "trial_s": round(trial_s, 1),
    })
    result = {"figures": figures, "events": events, "settings": {
        "trials": trials, "seed": seed, "quick": quick, "command": command(killed)[1:], "workdir": str(workdir),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()}}}
    (workdir / "faults_study.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _attempt(command: list[str], env: dict[str, str], log: Path, kill_at: float | None) -> tuple[int, int]:
    """Run one command (its own process group); SIGKILL it after `kill_at` seconds. Returns its exit code
    (-9 when killed) and pid."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=kill_at if kill_at is not None else ATTEMPT_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            out.write(f"\n[faults_study] SIGKILL after {kill_at} s\n")
    return process.returncode, process.pid


def compare(workdir: Path, tracking: str, reference: str, killed: str, target: int) -> dict[str, Any]:
    """The killed study against the uninterrupted one, slot by slot, and its Optuna and MLflow leftovers."""
    ref = _trials(workdir / f"{reference}.log", reference)
    got = _trials(workdir / f"{killed}.log", killed)
    ref_slots, got_slots = _by_slot(ref), _by_slot(got)
    slots = sorted(set(ref_slots) | set(got_slots))
    params_equal = [s for s in slots if s in ref_slots and s in got_slots and ref_slots[s]["params"] ==
                    got_slots[s]["params"]]
    values_equal = [s for s in params_equal if ref_slots[s]["state"] == got_slots[s]["state"]
                    and ref_slots[s]["value"] == got_slots[s]["value"]]
    finished = [t for t in got if t["state"] in ("COMPLETE", "PRUNED")]
    runs = _mlflow_runs(tracking, killed)
    parents = [r for r in runs if r["kind"] == "study"]
    trial_runs = [r for r in runs if r["kind"] == "trial"]
    finished_runs = [r for r in trial_runs if r["status"] == "FINISHED"]
    numbers = [r["trial"] for r in finished_runs]
    best_ref = max((t["value"] for t in ref if t["state"] == "COMPLETE"), default=None)
    best_got = max((t["value"] for t in got if t["state"] == "COMPLETE"), default=None)
    figures = {
        "trials_target": target,
        "trials_finished": len(finished),
        "trials_lost": max(0, target - len(finished)),
        "trials_running_left": sum(t["state"] in ("RUNNING", "WAITING") for t in got),
        "trials_failed_killed": sum(t["state"] == "FAIL" for t in got),
        "slots_params_equal": f"{len(params_equal)} of {len(ref_slots)}",
        "slots_values_equal": f"{len(values_equal)} of {len(ref_slots)}",
        "resumed_params_equal_uninterrupted": len(params_equal) == len(ref_slots) == len(got_slots),
        "resumed_equals_uninterrupted": len(values_equal) == len(ref_slots) == len(got_slots),
        "best_value_uninterrupted": best_ref, "best_value_resumed": best_got,
        "mlflow_study_runs": len(parents),
        "mlflow_study_run_finished": len(parents) == 1 and parents[0]["status"] == "FINISHED",
        "mlflow_finished_trial_runs": len(finished_runs),
        "mlflow_duplicate_finished_runs": len(numbers) - len(set(numbers)),
        "mlflow_finished_runs_match_trials": sorted(numbers) == sorted(t["number"] for t in finished),
        "mlflow_running_trial_runs": sum(r["status"] == "RUNNING" for r in trial_runs),
        "mlflow_killed_or_failed_trial_runs": sum(r["status"] in ("KILLED", "FAILED") for r in trial_runs),
    }
    figures["study_whole"] = (figures["trials_lost"] == 0 and figures["trials_running_left"] == 0
                              and figures["mlflow_study_run_finished"]
                              and figures["mlflow_duplicate_finished_runs"] == 0
                              and figures["mlflow_finished_runs_match_trials"]
                              and figures["mlflow_running_trial_runs"] == 0)
    figures["slots"] = {str(s): {"uninterrupted": ref_slots.get(s), "resumed": got_slots.get(s)} for s in slots}
    return figures


# --- reading the studies ----------------------------------------------------------------------------------------

def _storage(journal: Path):
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def _trials(journal: Path, study: str) -> list[dict[str, Any]]:
    import optuna

    from mtl_suite.tuning.resume import SLOT_ATTR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=_storage(journal)).trials
    return [{"number": t.number, "slot": t.system_attrs.get(SLOT_ATTR), "state": t.state.name, "value": t.value,
             "params": t.params, "retry_of": t.system_attrs.get("failed_trial"),
             "start": t.datetime_start.timestamp() if t.datetime_start else None,
             "end": t.datetime_complete.timestamp() if t.datetime_complete else None} for t in trials]


def _by_slot(trials: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {t["slot"]: {k: t[k] for k in ("number", "state", "value", "params")}
            for t in trials if t["state"] in ("COMPLETE", "PRUNED")}


def _finished(journal: Path, study: str) -> int:
    if not journal.is_file() or journal.stat().st_size == 0:
        return 0
    try:
        return sum(t["state"] in ("COMPLETE", "PRUNED") for t in _trials(journal, study))
    except KeyError:  # the study was not created yet
        return 0


def _snapshot(journal: Path, study: str, pid: int, finished_at_start: int) -> dict[str, Any]:
    """Where the kill landed: in start-up (the killed command had not begun a trial: imports, data, recovering the
    trials of the command killed before it), at a trial's start (before its first epoch report), mid-trial, or
    between trials (it had finished one and not begun the next)."""
    from mtl_suite.tuning.resume import OWNER_ATTR

    finished, own = 0, []
    if journal.is_file() and journal.stat().st_size > 0:
        try:
            import optuna

            trials = optuna.load_study(study_name=study, storage=_storage(journal)).trials
        except KeyError:  # the study was not created yet
            trials = []
        owner = f"{socket.gethostname()}:{pid}:"
        own = [t for t in trials if t.state.name == "RUNNING" and
               str(t.system_attrs.get(OWNER_ATTR, "")).startswith(owner)]
        finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    if own:
        moment = "mid-trial" if any(t.intermediate_values for t in own) else "trial start"
    else:
        moment = "between trials" if finished > finished_at_start else "start-up"
    return {"finished_before": finished, "moment": moment,
            "killed_trials": [{"number": t.number, "reports": len(t.intermediate_values)} for t in own]}


def _timings(trials: list[dict[str, Any]]) -> tuple[float, float]:
    """Start-up of a command (imports, data, parent run lookup: about 25 s on 2 cores) and the mean trial time of
    the uninterrupted study."""
    durations = [t["end"] - t["start"] for t in trials if t["start"] and t["end"]]
    return STARTUP_S, (sum(durations) / len(durations) if durations else 30.0)


def _mlflow_runs(tracking: str, study: str) -> list[dict[str, Any]]:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study}'", max_results=5000)
    return [{"id": r.info.run_id, "kind": r.data.tags.get("run_kind"), "status": r.info.status,
             "trial": int(r.data.tags["trial"]) if "trial" in r.data.tags else None,
             "state": r.data.tags.get("state")} for r in runs]


def _experiment(tracking: str, workdir: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    if client.get_experiment_by_name(EXPERIMENT) is None:  # artifacts under the work dir, not ./mlruns
        client.create_experiment(EXPERIMENT, artifact_location=(workdir / "artifacts").as_uri())


# --- command line -----------------------------------------------------------------------------------------------

def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import add_quick, emit, quick_defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="work dir and results (default: a tmp dir, removed)")
    add_quick(parser)  # 2 trials of a 2-parameter space, 1 kill
    args = quick_defaults(parser, parser.parse_args(), kills=1, trials=2)
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="faults-study-"))
    try:
        result = run_study_faults(args.kills, args.seed, workdir, args.quick, args.trials)
    finally:
        if not args.out:
            shutil.rmtree(workdir, ignore_errors=True)
    figures = {k: v for k, v in result["figures"].items() if k != "slots"}
    for event in result["events"]:
        print(json.dumps(event))
    for slot, pair in result["figures"]["slots"].items():
        ref, got = pair["uninterrupted"] or {}, pair["resumed"] or {}
        print(f"slot {slot}: uninterrupted trial {ref.get('number')} {ref.get('value')} | resumed trial "
              f"{got.get('number')} {got.get('value')} | params equal: {ref.get('params') == got.get('params')}")
    print(json.dumps(figures, indent=1))
    if args.out:
        print(f"wrote {workdir / 'faults_study.json'}")
    emit({k: v for k, v in figures.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()

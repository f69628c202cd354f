"""Benchmark (not a test) of the scale-out setup of docs/scaling-out.md: an MLflow tracking server with a
PostgreSQL backend store and proxied artifacts, Optuna studies on PostgreSQL, `mtl-suite tune` workers as separate
processes.

    export MTL_SUITE_TEST_POSTGRES_URL=$(.ci/start-postgres.sh)      # a role that may create databases
    python benchmarks/bench_server.py                                  # about 3 minutes on 2 CPU cores
    python benchmarks/bench_server.py --quick                          # the whole path, under a minute or two

Two figures:
1. Per-run logging overhead, server store against SQLite: the same sequence of client calls a stage run makes
   (create a run, 25 tags, 60 params, per-epoch metrics of 3 folds x 5 epochs x 4 metrics as single calls, 8
   small artifacts, end the run), timed per run, against `sqlite:///<tmp>/mlflow.db` and against the server.
2. Tuning throughput, 1 worker against 2 on one shared study through the server: `mtl-suite tune --stage
   classical --backbone tiny --weights none --image-size 64 --folds 2` (no pruning) with --trials N, the same
   command in one process, then in two processes started together; trials per hour from start to last exit
   (startup included) and between the first trial's start and the last trial's end (steady state).
The server and PostgreSQL run on the same machine as the workers (as in CI), so they take CPU from them.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from benchlib import add_quick, emit, quick_defaults, skip  # noqa: E402
from mlflow_server import POSTGRES_ENV, fresh_database, mlflow_server, postgres_problem  # noqa: E402

EXPERIMENT = "bench-server"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV), help=f"default: ${POSTGRES_ENV}")
    parser.add_argument("--runs", type=int, default=20, help="logged runs per store")
    parser.add_argument("--trials", type=int, default=8, help="trials per study")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), runs=4, trials=2)
    problem = postgres_problem(args.postgres)
    if problem:
        skip(f"bench_server: {problem}")
    os.environ.setdefault("MTL_SUITE_CACHE", tempfile.mkdtemp(prefix="bench-server-cache-"))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; work folder {root}")

    with fresh_database(args.postgres) as backend, \
            mlflow_server(backend, root / "artifacts", root / "server.log") as url:
        sqlite_ms = logging_ms(f"sqlite:///{root}/mlflow.db", args.runs, root / "files")
        server_ms = logging_ms(url, args.runs, root / "files")
        print(f"per-run logging: SQLite {statistics.median(sqlite_ms):.0f} ms, server "
              f"{statistics.median(server_ms):.0f} ms (median of {args.runs} runs; "
              f"{statistics.median(server_ms) / statistics.median(sqlite_ms):.2f}x)")
        one = tuning(url, args.postgres, args.trials, workers=1, root=root)
        two = tuning(url, args.postgres, args.trials, workers=2, root=root)
    for name, figures in (("1 worker", one), ("2 workers", two)):
        print(f"{name}: {figures['finished']} trials in {figures['wall_s']:.0f} s -> "
              f"{figures['trials_per_hour']:.0f} trials/h ({figures['steady_trials_per_hour']:.0f} trials/h between "
              f"first trial start and last trial end); CPU {figures['cpu_s']:.0f} s")
    speedup = two["trials_per_hour"] / one["trials_per_hour"]
    steady = two["steady_trials_per_hour"] / one["steady_trials_per_hour"]
    print(f"2 workers / 1 worker: {speedup:.2f}x (steady state {steady:.2f}x)")
    emit({"logging_ms_per_run": {"sqlite": statistics.median(sqlite_ms), "server": statistics.median(server_ms),
                                 "server_over_sqlite": statistics.median(server_ms) / statistics.median(sqlite_ms)},
          "tuning": {"one_worker": one, "two_workers": two, "speedup": speedup, "steady_speedup": steady}})


def logging_ms(uri: str, runs: int, files: Path) -> list[float]:
    """Milliseconds per run for the client calls a stage run makes (single calls, as the Keras callback does)."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after mlflow's own setup: no "View run" line per run
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=(files / "sqlite-artifacts").as_uri() if uri.startswith("sqlite") else None)
    files.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (files / f"file{i}.csv").write_text("a,b\n" + "1,2\n" * 200)
    times = []
    for r in range(runs + 1):  # the first run warms the connection and the store up: not counted
        started = time.perf_counter()
        run = client.create_run(experiment_id, run_name=f"bench-{r}")
        run_id = run.info.run_id
        for t in range(25):
            client.set_tag(run_id, f"tag{t}", f"value {t}")
        client.log_batch(run_id, params=[mlflow.entities.Param(f"param{p}", str(p)) for p in range(60)])
        for fold in range(3):
            for epoch in range(5):
                for metric in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
                    client.log_metric(run_id, f"fold{fold}/{metric}", 0.5 + epoch / 100, step=epoch)
        for i in range(8):
            client.log_artifact(run_id, str(files / f"file{i}.csv"), "cv")
        client.set_terminated(run_id)
        if r:
            times.append((time.perf_counter() - started) * 1000)
    return times


def tuning(url: str, storage: str, trials: int, workers: int, root: Path) -> dict:
    """`workers` processes on one new study, started together; throughput and CPU time."""
    import optuna

    study = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "mtl_suite", "tune", "--stage", "classical", "--backbone", "tiny", "--weights",
               "none", "--image-size", "64", "--folds", "2", "--trials", str(trials), "--pruner", "none",
               "--study-name", study, "--storage", storage, "--experiment", EXPERIMENT, "--quiet"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    before = os.times()
    started = time.monotonic()
    processes = [subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL,
                                  stderr=open(root / f"{study}-{w}.log", "w")) for w in range(workers)]
    for w, process in enumerate(processes):
        if process.wait(timeout=1800) != 0:
            sys.exit(f"bench_server: worker {w} of {study} failed: {(root / f'{study}-{w}.log').read_text()[-2000:]}")
    wall = time.monotonic() - started
    after = os.times()
    done = [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.state.name == "COMPLETE"]
    steady = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"workers": workers, "finished": len(done), "wall_s": wall, "trials_per_hour": len(done) / wall * 3600,
            "steady_trials_per_hour": len(done) / steady * 3600,
            "cpu_s": (after.children_user + after.children_system) - (before.children_user + before.children_system)}


if __name__ == "__main__":
    main()

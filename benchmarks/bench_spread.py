"""Benchmark (not a test) of a comparison spread over workers (docs/scaling-out.md, "A comparison over several
machines"): the same tiny `mtl-suite compare` run by 1 worker, then by 2 workers started together, against an MLflow
tracking server (PostgreSQL backend) with its units in an Optuna storage on the same PostgreSQL.

    export MTL_SUITE_TEST_POSTGRES_URL=$(.ci/start-postgres.sh)      # a role that may create databases
    python benchmarks/bench_spread.py                                  # 3 pairs: about 5 minutes on 2 CPU cores
    python benchmarks/bench_spread.py --quick                          # 2 pairs

Threads are pinned so that the two workers share the cores fairly: the single worker gets every core
(TF_NUM_INTRAOP_THREADS = cores), each of the two workers half of them (`taskset`, and as many intra-op threads).
Figures: wall time from start to the last exit (TensorFlow's start-up included) and units per hour; the claim
overhead of every unit (the trial's time in the storage minus the unit's own work: popping it, recording the
worker, the duplicate check, recording the result); and whether the two runs gave every pair the same test scores.
The server and PostgreSQL run on the same machine as the workers, so they take CPU from them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from benchlib import add_quick, emit, quick_defaults, skip  # noqa: E402
from mlflow_server import POSTGRES_ENV, fresh_database, mlflow_server, postgres_problem  # noqa: E402

TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "32", "--folds", "2", "--epochs", "1",
        "--finetune-epochs", "0", "--task", "binary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV), help=f"default: ${POSTGRES_ENV}")
    parser.add_argument("--runs", type=int, default=3, help="pairs of the comparison")
    parser.add_argument("--workers", type=int, default=2, help="workers of the spread run")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), runs=2)
    problem = postgres_problem(args.postgres)
    if problem:
        skip(f"bench_spread: {problem}")
    root = Path(tempfile.mkdtemp(prefix="bench-spread-"))
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, load {os.getloadavg()[0]:.2f}; "
          f"work folder {root}", flush=True)
    results = {}
    with fresh_database(args.postgres) as backend, fresh_database(args.postgres, "mtl_optuna") as storage, \
            mlflow_server(backend, root / "artifacts", root / "server.log") as url:
        for workers in (1, args.workers):
            results[workers] = spread(root, url, storage, args.runs, workers, cores)
            r = results[workers]
            print(f"{workers} worker(s): {r['wall_s']:.0f} s for {r['units']} units ({r['units_per_hour']:.0f} "
                  f"units/h); claim overhead per unit {r['claim_ms_mean']:.0f} ms mean, {r['claim_ms_max']:.0f} ms "
                  f"max; {r['stood_down']} duplicate claim(s)", flush=True)
    one, many = results[1], results[args.workers]
    same = one["figures"] == many["figures"]
    print(f"speed-up {one['wall_s'] / many['wall_s']:.2f}x with {args.workers} workers; same per-pair test scores: "
          f"{same}")
    emit({"runs": args.runs, "load_at_start": os.getloadavg()[0], "same_figures": same,
          "speedup": one["wall_s"] / many["wall_s"],
          **{f"workers_{n}": {k: v for k, v in r.items() if k != "figures"} for n, r in results.items()}})


def spread(root: Path, url: str, storage: str, runs: int, workers: int, cores: int) -> dict:
    """The comparison run by `workers` processes started together, each pinned to its share of the cores."""
    import mlflow
    import optuna

    experiment = f"spread-{workers}"
    share = max(1, cores // workers)
    processes = []
    started = time.monotonic()
    for i in range(workers):
        pinned = [str(c) for c in range(i * share, min(cores, (i + 1) * share))] or ["0"]
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
               "MTL_SUITE_CACHE": str(root / f"cache-{workers}"), "TF_NUM_INTRAOP_THREADS": str(len(pinned)),
               "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": str(len(pinned))}
        log = open(root / f"{experiment}-{i}.log", "w")
        processes.append(subprocess.Popen(
            ["taskset", "-c", ",".join(pinned), sys.executable, "-m", "mtl_suite", "compare", *TINY, "--runs",
             str(runs), "--storage", storage, "--experiment", experiment, "--out", str(root / experiment), "-q"],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    for i, process in enumerate(processes):
        if process.wait() != 0:
            raise SystemExit(f"worker {i} failed: {(root / f'{experiment}-{i}.log').read_text()[-3000:]}")
    wall = time.monotonic() - started
    client = mlflow.MlflowClient(url)
    study = next(name for name in optuna.get_all_study_names(storage) if name not in _seen)
    _seen.add(study)
    trials = optuna.load_study(study_name=study, storage=storage).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    claim_ms = [((t.datetime_complete - t.datetime_start).total_seconds() - t.value) * 1000 for t in done]
    exp = client.get_experiment_by_name(experiment).experiment_id
    arms = client.search_runs([exp], "tags.comparison_role = 'arm' AND attributes.status = 'FINISHED'")
    return {"wall_s": wall, "units": len(done), "units_per_hour": len(done) / wall * 3600,
            "claim_ms_mean": statistics.mean(claim_ms), "claim_ms_max": max(claim_ms),
            "stood_down": sum(t.state.name == "PRUNED" for t in trials),
            "unit_seconds": {t.user_attrs["unit"]: round(t.value, 1) for t in done},
            "figures": sorted((r.data.tags["comparison_pair"], r.data.tags["stage"], r.data.metrics["test/accuracy"],
                               r.data.metrics["test/f1_macro"]) for r in arms)}


_seen: set[str] = set()  # studies of earlier rounds of this benchmark

if __name__ == "__main__":
    main()

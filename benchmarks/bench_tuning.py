"""Benchmark (not a test) of `mtl-suite tune` on stage 3: wall time with and without pruning, the best macro-F1
found, and TPE against random search at equal trial counts (best-so-far curve PNG).

    python benchmarks/bench_tuning.py                                  # the defaults below
    python benchmarks/bench_tuning.py --per-class 0 --trials 20 --folds 3 --space studies/stage3.yaml
                                          # the issue's full setting: many hours on 2 CPU cores

Three studies share one stage-2 parent run and one data subset: tpe+hyperband, tpe+none, random+none, over
benchmarks/tuning_space.yaml (studies/stage3.yaml with fewer epochs; --space to change). The data are a
seeded per-class subset of the Aria smears (symlinks, with their segmentations for the stage-2 crops) so that the
run fits a 2-core CPU; --per-class 0 uses everything. Results go to --out (JSON, PNG, the MLflow store and the
Optuna journal), figures to stdout for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ARIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aria-all"
STUDIES = [("tpe", "hyperband"), ("tpe", "none"), ("random", "none")]
SPACE = Path(__file__).resolve().parent / "tuning_space.yaml"

from benchlib import SAMPLE, add_quick, emit, quick_defaults  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARIA / "original"))
    parser.add_argument("--masks", default=str(ARIA / "segmented"))
    parser.add_argument("--per-class", type=int, default=30, help="images per class (0: all)")
    parser.add_argument("--space", default=str(SPACE), help="search space (studies/stage3.yaml: the full one)")
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--studies", default=",".join(f"{s}-{p}" for s, p in STUDIES))
    parser.add_argument("--out", default="benchmarks/out/tuning")
    add_quick(parser)  # 6 sample smears per class at 64 px, 2 trials of one study: the whole path, in about a minute
    args = parser.parse_args()
    temporary_out = args.quick and args.out == parser.get_default("out")
    args = quick_defaults(parser, args, data=str(SAMPLE / "original"),
                          masks=str(SAMPLE / "segmented"), per_class=6, image_size=64, trials=2,
                          studies="tpe-none", space=str(SPACE.with_name("tuning_space_quick.yaml")),
                          **({"out": tempfile.mkdtemp(prefix="bench-tuning-quick-")} if temporary_out else {}))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MTL_SUITE_CACHE", str(out / "cache"))
    data, masks = subset(Path(args.data), Path(args.masks), args.per_class, args.seed, out / "data")

    from mtl_suite.config import load_config
    from mtl_suite.workflows.stage import StageRequest, run_stage
    from mtl_suite.workflows.tune import TuneRequest, tune

    base = load_config(None, {"data.path": str(data), "data.masks": str(masks), "data.image_size": args.image_size,
                              "train.backbone": args.backbone, "train.weights": "imagenet",
                              "tracking.tracking_uri": f"sqlite:///{out}/mlflow.db",
                              "tracking.experiment": "bench-tuning"})
    import mlflow

    client = mlflow.MlflowClient(base.tracking.tracking_uri)
    if client.get_experiment_by_name("bench-tuning") is None:  # artifacts beside the store, not in ./mlruns
        client.create_experiment("bench-tuning", artifact_location=(out / "artifacts").as_uri())
    started = time.time()
    stage2_cfg = replace(base, data=replace(base.data, folds=1),
                         train=replace(base.train, warmup_epochs=1 if args.quick else 2, finetune_epochs=0))
    stage2 = run_stage(StageRequest(stage="stage2", config=stage2_cfg, quiet=True), say=lambda m: None)
    stage2_seconds = time.time() - started
    print(f"stage 2 parent run {stage2.run_id}: {stage2_seconds:.0f} s", flush=True)

    results = {"machine": machine(), "args": vars(args), "stage2_seconds": stage2_seconds, "studies": {}}
    for label in args.studies.split(","):
        sampler, pruner = label.split("-")
        started = time.time()
        outcome = tune(TuneRequest(stage="stage3", config=base, parent_run=stage2.run_id, trials=args.trials,
                                   folds=args.folds, seed=args.seed, sampler=sampler, pruner=pruner,
                                   study_name=f"bench-{label}-{int(started)}", storage=str(out / "optuna.log"),
                                   space=args.space,
                                   quiet=True), say=lambda m: None)
        seconds = time.time() - started
        curve = best_so_far(out / "optuna.log", outcome.study_name)
        results["studies"][label] = {"study": outcome.study_name, "seconds": seconds, "best": outcome.best_value,
                                     "best_trial": outcome.best_trial, "counts": outcome.counts, "curve": curve}
        print(f"{label}: {seconds:.0f} s, best macro-F1 {outcome.best_value:.4f} (trial {outcome.best_trial}), "
              f"{outcome.counts}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "tpe_vs_random.png")
    print(f"wrote {out / 'results.json'} and {out / 'tpe_vs_random.png'}")
    emit({"stage2_seconds": stage2_seconds,
          **{f"{label}/{key}": study[key] for label, study in results["studies"].items()
             for key in ("seconds", "best")}})
    if temporary_out:
        shutil.rmtree(out, ignore_errors=True)  # a smoke run's store is not worth keeping


def subset(data: Path, masks: Path, per_class: int, seed: int, target: Path) -> tuple[Path, Path]:
    """A seeded per-class subset as symlinks (images and their masks under the same relative names)."""
    if per_class <= 0:
        return data, masks
    rng = random.Random(seed)
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(p.name for p in (data / cls).iterdir() if p.is_file() and (masks / cls / p.name).is_file())
        for name in rng.sample(files, min(per_class, len(files))):
            for root, sub in ((data, "original"), (masks, "segmented")):
                link = target / sub / cls / name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(root / cls / name)
    return target / "original", target / "segmented"


def best_so_far(journal: Path, study_name: str) -> list[float | None]:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=study_name, storage=storage)
    best, curve = None, []
    for trial in sorted(study.trials, key=lambda t: t.number):
        if trial.state.name == "COMPLETE":
            best = trial.value if best is None else max(best, trial.value)
        curve.append(best)
    return curve


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, study in results["studies"].items():
        xs = [i + 1 for i, v in enumerate(study["curve"]) if v is not None]
        ys = [v for v in study["curve"] if v is not None]
        ax.step(xs, ys, where="post", label=f"{label} ({study['seconds'] / 60:.0f} min)")
    args = results["args"]
    ax.set(xlabel="trial", ylabel="best CV macro-F1 so far",
           title=f"stage 3, {args['backbone']} {args['image_size']} px, {args['folds']}-fold CV")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg()}


if __name__ == "__main__":
    main()

"""Benchmark for issue 4: classical vs multistage transfer learning on the Aria ALL data, and the suite's training
overhead against a bare `model.fit`.

    python benchmarks/bench_stages.py --data ../shared/data/aria-all/original \
        --masks ../shared/data/aria-all/segmented --sizes 128 --tasks binary multiclass --folds 5 --out /tmp/b.md

Each arm runs as its own `mtl-suite` process (so its peak memory is its own) against a temporary MLflow store;
figures are read back from MLflow. Prints a Markdown table; `--out` writes it to a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import add_quick, emit, quick_defaults


def run_arm(stage: str, args, size: int, task: str, uri: str, experiment: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one `mtl-suite <stage>` process."""
    command = [sys.executable, "-m", "mtl_suite", stage, "--data", args.data, "--masks", args.masks,
               "--backbone", args.backbone, "--task", task, "--image-size", str(size), "--folds", str(args.folds),
               "--epochs", str(args.epochs), "--finetune-epochs", str(args.finetune_epochs), "--quiet",
               "--tracking-uri", uri, "--experiment", experiment]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the maximum over every arm so far).
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def latest_metrics(uri: str, experiment: str, stage: str) -> dict[str, float]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.stage = '{stage}' AND "
                              "tags.run_kind = 'stage'", order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0].data.metrics


def fit_overhead(size: int, epochs: int = 3, n: int = 960, rounds: int = 3) -> dict[str, float]:
    """Median images/s and CPU ms per image of a bare `model.fit` and of the suite's `fit_classifier` (with the
    MLflow epoch logger) on
    the same freshly built model and arrays. Each timing starts from an uncompiled model, so both pay one compile
    and one trace, as every fold does; the two are interleaved over `rounds` after a throwaway round, so both meet
    the same background load. Feature caching is off: this compares the training loop itself (every epoch through
    the backbone); what caching saves is bench_cache.py's figure."""
    import statistics

    import keras
    import mlflow
    import numpy as np

    from mtl_suite.config import TrainConfig
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.tracking.callbacks import MlflowEpochLogger
    from mtl_suite.training.fit import ArrayData, compile_for, fit_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    cfg = TrainConfig(warmup_epochs=epochs, finetune_epochs=0, batch_size=48, early_stopping_patience=0,
                      class_weights=False, feature_cache=False)

    def model():
        keras.utils.set_random_seed(0)
        backbone, _ = build_backbone("mobilenet_025", size, "imagenet")
        return build_classifier(backbone, "dense_dropout", 2), backbone

    def timed(train) -> tuple[float, float]:
        """(images/s, process CPU ms per image): the CPU time moves far less with the VM's other jobs."""
        wall, cpu = time.perf_counter(), time.process_time()
        train()
        return n * epochs / (time.perf_counter() - wall), (time.process_time() - cpu) * 1000 / (n * epochs)

    def bare() -> tuple[float, float]:
        classifier, backbone = model()
        backbone.trainable = False
        return timed(lambda: bare_fit(classifier))

    def bare_fit(classifier) -> None:
        compile_for(classifier, 2, cfg.learning_rate, cfg.decay_rate, -(-n // cfg.batch_size))
        classifier.fit(images, labels.astype("float32"), batch_size=cfg.batch_size, epochs=epochs, verbose=0,
                       shuffle=True)

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/m.db")
        run = mlflow.start_run(experiment_id=mlflow.create_experiment("fit-overhead"))

        def suite() -> tuple[float, float]:
            classifier, backbone = model()
            factory = lambda phase, first: [MlflowEpochLogger(run.info.run_id, step_offset=first)]  # noqa: E731
            return timed(lambda: fit_classifier(classifier, backbone, ArrayData(images, labels), None, cfg, 2,
                                                factory))

        bare(), suite()  # throwaway: one-off start-up costs of TensorFlow and MLflow
        timings = [(bare(), suite()) for _ in range(rounds)]
        mlflow.end_run()
    median = lambda arm, k: statistics.median(t[arm][k] for t in timings)  # noqa: E731
    return {"bare_img_s": median(0, 0), "suite_img_s": median(1, 0), "bare_cpu_ms": median(0, 1),
            "suite_cpu_ms": median(1, 1)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import keras
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM; tensorflow {tf.__version__}, keras {keras.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/aria-all/original")
    parser.add_argument("--masks", default="../shared/data/aria-all/segmented")
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--tasks", nargs="+", default=["binary", "multiclass"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--skip-arms", action="store_true", help="only the fit-overhead measurement")
    parser.add_argument("--out")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), sizes=[64], skip_arms=True)
    figures: dict[str, float] = {}

    lines = [f"Machine: {machine()}", "", "Command: `python " + " ".join(sys.argv) + "`", ""]
    lines += ["| size | bare model.fit img/s | suite fit img/s | overhead (wall) | bare CPU ms/img | suite CPU ms/img | "
              "overhead (CPU) |", "|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        f = fit_overhead(size, epochs=1, n=96, rounds=1) if args.quick else fit_overhead(size)
        wall = (f["bare_img_s"] / f["suite_img_s"] - 1) * 100
        cpu = (f["suite_cpu_ms"] / f["bare_cpu_ms"] - 1) * 100
        lines.append(f"| {size} | {f['bare_img_s']:.1f} | {f['suite_img_s']:.1f} | {wall:+.1f}% | "
                     f"{f['bare_cpu_ms']:.2f} | {f['suite_cpu_ms']:.2f} | {cpu:+.1f}% |")
        figures.update({f"{size}px/{key}": value for key, value in f.items()})
        figures.update({f"{size}px/suite_overhead_percent": wall, f"{size}px/suite_cpu_overhead_percent": cpu})
    if not args.skip_arms:
        lines += ["", "| size | task | arm | CV accuracy | CV macro-F1 | test accuracy | test macro-F1 | wall s | "
                  "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            os.environ["MTL_SUITE_CACHE"] = f"{tmp}/cache"
            for size in args.sizes:
                for task in args.tasks:
                    experiment = f"bench-{size}-{task}"
                    for stage, arm in (("classical", "CTL"), ("stage3", "MTL (stages 1-3)")):
                        wall, peak = run_arm(stage, args, size, task, uri, experiment)
                        m = latest_metrics(uri, experiment, stage)
                        lines.append(
                            f"| {size} | {task} | {arm} | {m['cv/accuracy_mean']:.4f} ± {m['cv/accuracy_std']:.4f} | "
                            f"{m['cv/f1_macro_mean']:.4f} ± {m['cv/f1_macro_std']:.4f} | {m['test/accuracy']:.4f} | "
                            f"{m['test/f1_macro']:.4f} | {wall:.0f} | {peak:.0f} |")
                        print(lines[-1], flush=True)
                        figures.update({f"{size}px/{task}/{stage}/{key}": m[key] for key in (
                            "cv/accuracy_mean", "cv/f1_macro_mean", "test/accuracy", "test/f1_macro")})
                        figures.update({f"{size}px/{task}/{stage}/wall_s": wall,
                                        f"{size}px/{task}/{stage}/peak_rss_mb": peak})
    text = "\n".join(lines) + "\n"
    print(text)
    emit(figures)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Input-pipeline throughput: decode + resize + batch, in images per second (issue 2's benchmark).

Compares, on the same files and in one process:
- `mtl_suite.data.pipeline.file_dataset` (streaming tf.data),
- `mtl_suite.data.pipeline.load_image_array` (decode once into memory, threads), batched by slicing,
- `keras.utils.image_dataset_from_directory` (the target to meet).

Each loader gets one warm-up pass over the whole set (file cache, tf.data graph tracing), then `--repeats` rounds
of one timed pass per loader, interleaved so that all loaders meet the same background load; the table gives the
median (and the range) of images/s and of CPU time per image. Datasets are built before timing (the build time is
reported in its own column), so the passes measure decode + resize + batch only.

    python benchmarks/bench_loader.py --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "aria-all" / "original"

from benchlib import SAMPLE, add_quick, emit, quick_defaults  # noqa: E402


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": str(cores), "ram": ram, "python": platform.python_version()}


def time_passes(loaders: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[list[float], list[float], int]]:
    """One warm-up pass per loader, then `repeats` rounds of one timed pass per loader, interleaved (and the order
    rotated) so that every loader meets the same background load. Returns, per loader, images/s (wall clock) and CPU microseconds per
    image (all threads of this process) of each timed pass, and the image count. CPU time per image is the figure
    to trust on a shared machine: other processes slow the wall clock down, but hardly the work done per image."""
    counts = {name: run_pass() for name, run_pass in loaders.items()}
    results: dict[str, tuple[list[float], list[float], int]] = {name: ([], [], counts[name]) for name in loaders}
    names = list(loaders)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # rotate who goes first
            run_pass = loaders[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            n = run_pass()
            results[name][0].append(n / (time.perf_counter() - start))
            results[name][1].append((time.process_time() - start_cpu) / n * 1e6)
            if n != counts[name]:
                raise RuntimeError(f"{name}: a pass saw {n} images, the warm-up saw {counts[name]}")
    return results


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def iterate(dataset) -> int:
    n = 0
    for images, _ in dataset:
        n += int(images.shape[0])
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder-per-class image tree")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(argv), data=SAMPLE / "original", sizes=[64], repeats=1)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2

    import keras
    import numpy as np
    import tensorflow as tf

    from mtl_suite.data.layouts import read_layout
    from mtl_suite.data.pipeline import file_dataset, load_image_array

    load_start = load_average()
    _, records = read_layout(args.data, "folder")
    classes = sorted({r.label for r in records})
    paths = [str(r.path) for r in records]
    labels = np.asarray([classes.index(r.label) for r in records], dtype=np.int32)

    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        keras_ds = keras.utils.image_dataset_from_directory(
            args.data, image_size=(size, size), batch_size=args.batch, shuffle=False, label_mode="int", verbose=False)
        build = {"keras.utils.image_dataset_from_directory": time.perf_counter() - start}
        start = time.perf_counter()
        ours_ds = file_dataset(paths, labels, size, args.batch)  # reads every header once to plan decode + resize
        build["mtl_suite file_dataset (tf.data)"] = time.perf_counter() - start

        def array_pass() -> int:
            images = load_image_array(paths, size)
            return sum(len(images[i:i + args.batch]) for i in range(0, len(images), args.batch))

        loaders = {
            "keras.utils.image_dataset_from_directory": lambda: iterate(keras_ds),
            "mtl_suite file_dataset (tf.data)": lambda: iterate(ours_ds),
            "mtl_suite load_image_array (threads)": array_pass,
        }
        results = time_passes(loaders, args.repeats)
        keras_rates, keras_cpu, _ = results["keras.utils.image_dataset_from_directory"]
        for name, (rates, cpu, count) in results.items():
            median, cpu_median = statistics.median(rates), statistics.median(cpu)
            rows.append((name, size, count, median, min(rates), max(rates), median / statistics.median(keras_rates),
                         cpu_median, statistics.median(keras_cpu) / cpu_median, build.get(name)))
            print(f"{name} @ {size}px: {median:.0f} images/s, {cpu_median:.0f} us CPU/image", file=sys.stderr)

    info = machine()
    lines = [
        f"Data: `{args.data}` ({len(paths)} images, {len(classes)} classes), batch {args.batch}, "
        f"one warm-up pass per loader, then the median of {args.repeats} timed passes (interleaved: one pass of each loader per round, the order rotated each round).",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM; Python {info['python']}, "
        f"tensorflow {tf.__version__}, keras {keras.__version__}. Load average (1/5/15 min) at start: {load_start}, "
        f"at end: {load_average()}.",
        "",
        "| loader | size | images | images/s (median) | range | vs Keras | CPU us/image (median) | CPU vs Keras "
        "| build s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {size} | {count} | {median:.0f} | {low:.0f}-{high:.0f} | {ratio:.2f}x | {cpu:.0f} | "
          f"{cpu_ratio:.2f}x | {'-' if built is None else f'{built:.2f}'} |"
          for name, size, count, median, low, high, ratio, cpu, cpu_ratio, built in rows),
        "",
        "images/s: higher is better. CPU us/image (process CPU time of a pass / images): lower is better; "
        "'CPU vs Keras' > 1 means less CPU per image than Keras. build s: building the dataset object once, not "
        "counted in the passes (Keras lists the folder; file_dataset reads every image header to plan its graph); "
        "load_image_array has no separate build, each pass decodes everything.",
    ]
    table = "\n".join(lines)
    print(table)
    short = {"keras.utils.image_dataset_from_directory": "keras", "mtl_suite file_dataset (tf.data)": "file_dataset",
             "mtl_suite load_image_array (threads)": "load_image_array"}
    emit({f"{short[name]} {size}px/{what}": value for name, size, _, median, _, _, _, cpu, _, _ in rows
          for what, value in (("images_per_s", median), ("cpu_us_per_image", cpu))})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

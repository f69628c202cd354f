"""How good are the suite's classifiers against simple baselines on one split (issue 18): colour alone, frozen
ImageNet features with a logistic regression, and (optionally) the suite's own CTL and MTL runs.

    python benchmarks/bench_quality.py --out /tmp/quality.md     # aria-all, both tasks, raw and grey, 5 folds
    python benchmarks/bench_quality.py --suite-rows               # also `mtl-suite classical` and `stage3`
    python benchmarks/bench_quality.py --quick                    # bundled sample, 2 folds, MobileNet at 64 px

One split from the suite itself (tasks.py:smear_task: the split is stratified on the data's own classes, so the
binary and 4-class tasks share it), every row scored the same way: CV accuracy over its folds (mean and sample
sd), the outer test part after a refit on the whole development part (correct/n, 95% Wilson interval), and that
test part re-stained by imaging/augment.py:stain_shifted (fixed shifts, one per third of the images).

Stain control `gray` (models/stain.py) is a layer of the model graph: the CNN rows build their backbone with it,
and the colour rows run the same layer over the pixels (rounded to whole grey levels, which histograms need).
Re-staining is applied to the raw test images before either, as it would reach a deployed model.

Rows:
  colour    every analysis/shortcut.py variant (logistic regression on colour histograms / statistics); the best by
            CV accuracy (the suite's rule: first listed on a tie, never the test part) is marked
  features  a frozen ImageNet backbone's pooled features (training/features.py, cached under $MTL_SUITE_CACHE, so
            a rerun skips the extraction) + standardised logistic regression, per CV fold and refit for the test;
            then the same features beside the colour row hist32_stats (both signals in one linear model)
  suite     `mtl-suite classical` (CTL) and `mtl-suite stage3` (MTL: stages 1-2 run first) with their defaults, each
            (task, stain) in its own experiment of a temporary MLflow store, so stage 3 never picks a parent trained
            under the other stain; figures read back from MLflow
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchlib import REPO, SAMPLE, add_quick, emit, quick_defaults  # noqa: E402

if TYPE_CHECKING:  # names for annotations only: the suite is imported where first needed, so --help is instant
    from mtl_suite.analysis.intervals import AccuracyContext
    from mtl_suite.data.splits import Split
    from mtl_suite.tasks import TaskData
    from sklearn.pipeline import Pipeline

SHARED = REPO.parent / "shared"
XCEPTION_WEIGHTS = SHARED / "weights" / "xception_imagenet_notop.weights.h5"
LAUNCHER_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
COLOUR_BESIDE = "hist32_stats"  # the colour features set beside a backbone's in the combined rows
SUITE_STAGES = (("classical", "suite CTL (classical)"), ("stage3", "suite MTL (stages 1-3)"))


@dataclass
class Row:
    method: str
    key: str  # figure name part
    cv_mean: float = math.nan
    cv_std: float = math.nan
    test_accuracy: float = math.nan
    correct: int | None = None
    n: int | None = None
    ci: tuple[float, float] = (math.nan, math.nan)
    shifted_accuracy: float = math.nan
    wall_s: float = math.nan
    note: str = ""
    best: bool = False  # the best colour baseline of its table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", default=str(SHARED / "data" / "aria-all" / "original"), help="smear images")
    parser.add_argument("--masks", default=str(SHARED / "data" / "aria-all" / "segmented"),
                        help="their segmentations (the suite rows' stage 2 cuts cells with them)")
    parser.add_argument("--tasks", nargs="+", default=["multiclass", "binary"], choices=["multiclass", "binary"])
    parser.add_argument("--stains", nargs="+", default=["none", "gray"], choices=["none", "gray", "reinhard"])
    parser.add_argument("--folds", type=int, default=5, help="CV folds of the split")
    parser.add_argument("--data-seed", type=int, default=42, help="split seed")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="outer test part")
    parser.add_argument("--image-size", type=int, default=224, help="colour rows, suite rows (and MobileNet's)")
    parser.add_argument("--mobilenet-size", type=int, help="default: --image-size")
    parser.add_argument("--xception-sizes", type=int, nargs="*", default=[224, 299], help="none: no Xception rows")
    parser.add_argument("--xception-weights", default=str(XCEPTION_WEIGHTS),
                        help="ImageNet no-top weights file; its rows are skipped, with a note, when absent")
    parser.add_argument("--suite-rows", action="store_true", help="also run mtl-suite classical and stage3")
    parser.add_argument("--experiment", default="bench-quality", help="suite rows: experiment name prefix")
    parser.add_argument("--out", help="write the Markdown here (it is printed either way)")
    add_quick(parser)
    args = parser.parse_args()
    return quick_defaults(parser, args, data=str(SAMPLE / "original"), masks=str(SAMPLE / "segmented"),
                          folds=2, mobilenet_size=64, xception_sizes=[])


# --- data ---------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)  # one task at the colour size and one at a CNN size: the arrays are large
def load_task(data: str, masks: str, task: str, size: int, folds: int, fraction: float, seed: int) -> TaskData:
    from mtl_suite.config import DataConfig
    from mtl_suite.tasks import smear_task

    config = DataConfig(path=data, masks=masks, image_size=size, folds=folds, test_fraction=fraction, seed=seed)
    return smear_task(config, task, None)


def task_data(args: argparse.Namespace, task: str, size: int) -> TaskData:
    return load_task(args.data, args.masks, task, size, args.folds, args.test_fraction, args.data_seed)


_SHIFTED: dict[tuple[int, bytes], np.ndarray] = {}


def shifted_test(data: TaskData) -> np.ndarray:
    """The raw test images re-stained; the same for both tasks (one split), so made once per size."""
    test = data.split.test_indices
    key = (data.image_size, test.tobytes())
    if key not in _SHIFTED:
        from mtl_suite.imaging.augment import stain_shifted

        _SHIFTED[key] = stain_shifted(data.data.images[test])
    return _SHIFTED[key]


def stained(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 pixels through the model's own stain layer (models/stain.py:controlled_pixels), so the colour rows see
    what the CNN sees (gray: Y = 0.299 R + 0.587 G + 0.114 B, within one level of OpenCV's RGB2GRAY)."""
    from mtl_suite.models.stain import controlled_pixels

    return controlled_pixels(images, mode)


# --- colour baselines ---------------------------------------------------------------------------------------------

def colour_rows(data: TaskData, stain: str) -> list[Row]:
    """Each variant on its own (shortcut_check with one variant on the split's folds = split_check's protocol and
    numbers), so each row has its own refit model for the re-stained images and its own wall time."""
    from mtl_suite.analysis.intervals import wilson_interval
    from mtl_suite.analysis.shortcut import VARIANTS, shortcut_check

    images, labels, split = stained(data.data.images, stain), data.data.labels, data.split
    shifted = stained(shifted_test(data), stain)
    folds = [(train, val) for _, train, val in split.fold_indices()]
    rows = []
    for name, variant in VARIANTS.items():
        start = time.perf_counter()
        check = shortcut_check(images, labels, folds, split.development_indices, split.test_indices, (name,))
        score = check.best_score
        restained = float((check.predict_best(shifted) == labels[split.test_indices]).mean())
        rows.append(Row(f"colour {check.label(name)}", f"colour_{name}", score.cv_accuracy, score.cv_accuracy_std,
                        score.test_accuracy, score.test_correct, score.test_n,
                        wilson_interval(score.test_correct, score.test_n), restained,
                        time.perf_counter() - start, variant.description + _of_pixels(stain)))
    best = max(range(len(rows)), key=lambda i: (_finite(rows[i].cv_mean), -i))
    rows[best].best = True
    return rows


def _of_pixels(stain: str) -> str:
    """Under stain control the same features describe other pixels: say so in the row's note."""
    if stain == "none":
        return ""
    return f", of the {stain}-controlled pixels" + (" (R = G = B)" if stain == "gray" else "")


def _finite(value: float) -> float:
    return -1.0 if math.isnan(value) else value


# --- frozen ImageNet features + logistic regression ---------------------------------------------------------------

def _logistic() -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=0))


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[object, bool]:
    """(model, converged). One BLAS thread: on a busy 2-core machine threaded fits of these small problems are
    slower (analysis/shortcut.py measured it)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always", ConvergenceWarning)
        model = _logistic().fit(x, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def logistic_scores(x: np.ndarray, labels: np.ndarray, split: Split,
                    x_shifted: np.ndarray) -> tuple[list[float], AccuracyContext, float, int]:
    """(fold accuracies, test AccuracyContext, re-stained accuracy, fits that did not converge)."""
    from mtl_suite.analysis.intervals import accuracy_context

    accuracies, unconverged = [], 0
    for _, train, val in split.fold_indices():
        if len(val):
            model, ok = _fit(x[train], labels[train])
            accuracies.append(float((model.predict(x[val]) == labels[val]).mean()))
            unconverged += not ok
    model, ok = _fit(x[split.development_indices], labels[split.development_indices])
    test = split.test_indices
    context = accuracy_context(labels[test], model.predict(x[test]))
    shifted = float((model.predict(x_shifted) == labels[test]).mean()) if len(test) else math.nan
    return accuracies, context, shifted, unconverged + (not ok)


def feature_rows(args: argparse.Namespace, task: str, stain: str, backbone: str, size: int, weights: str) -> list[Row]:
    """The frozen backbone's features + LR, and the same features beside the colour statistics (COLOUR_BESIDE) +
    LR: whether the two signals together beat either alone."""
    import keras

    from mtl_suite.analysis.shortcut import VARIANTS, channel_histograms
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.training.features import FeatureStore, backbone_features

    method, key = f"{backbone} {size} px frozen + LR", f"{backbone}_{size}"
    beside = (f"{backbone} {size} px frozen + colour {COLOUR_BESIDE} + LR", f"{backbone}_{size}_{COLOUR_BESIDE}")
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        return [Row(method, key, note=f"skipped: no weights file at {weights} (--xception-weights)")]
    data = task_data(args, task, size)
    shifted_pixels = shifted_test(data)  # shared by every row at this size: not this row's time
    start = time.perf_counter()
    keras.utils.clear_session()  # the previous backbone's graph is not needed any more
    model, _ = build_backbone(backbone, size, weights, stain=stain)
    store = FeatureStore.default()
    features = backbone_features(model, data.data.images, store)
    shifted = backbone_features(model, shifted_pixels, store)  # fixed shifts: cacheable like any image
    extracted = time.perf_counter() - start
    note = f"{features.shape[1]} features, {extracted:.0f} s to build + extract (cache: $MTL_SUITE_CACHE)"
    rows = [_logistic_row(method, key, features, shifted, data, start, note)]
    start = time.perf_counter()
    colour = VARIANTS[COLOUR_BESIDE].features
    with_colour = np.concatenate([features, colour(channel_histograms(stained(data.data.images, stain)))], axis=1)
    shifted_with_colour = np.concatenate([shifted, colour(channel_histograms(stained(shifted_pixels, stain)))], axis=1)
    rows.append(_logistic_row(*beside, with_colour, shifted_with_colour, data, start,
                              f"{with_colour.shape[1]} features (the row above's and the colour row's)"))
    return rows


def _logistic_row(method: str, key: str, x: np.ndarray, x_shifted: np.ndarray, data: TaskData, start: float,
                  note: str) -> Row:
    folds, context, restained, unconverged = logistic_scores(x, data.data.labels, data.split, x_shifted)
    if unconverged:
        note += f"; {unconverged} LR fit(s) hit max_iter"
    return Row(method, key, *_mean_sd(folds), context.accuracy, context.correct, context.n, context.interval,
               restained, time.perf_counter() - start, note)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof 1), as the suite's cv/*_std."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def cnn_specs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    mobilenet = [("mobilenet_025", args.mobilenet_size or args.image_size, "imagenet")]  # the bundled file
    return mobilenet + [("xception", size, args.xception_weights) for size in args.xception_sizes]


# --- the suite's own runs -----------------------------------------------------------------------------------------

def suite_row(args: argparse.Namespace, stage: str, label: str, task: str, stain: str, uri: str) -> Row:
    experiment = f"{args.experiment}-{task}-{stain}"
    command = [sys.executable, "-m", "mtl_suite", stage, "--data", args.data, "--masks", args.masks,
               "--image-size", str(args.image_size), "--data-seed", str(args.data_seed), "--folds", str(args.folds),
               "--test-fraction", str(args.test_fraction), "--task", task, "--stain", stain,
               "--tracking-uri", uri, "--experiment", experiment, "--quiet"]
    # the launcher's MLflow run/experiment (e.g. under `mlflow run`) must not leak into the child's runs
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return Row(label, stage, wall_s=wall, note=f"FAILED: exit {done.returncode}: {shlex.join(command)}")
    return _suite_metrics_row(uri, experiment, stage, label, wall)


def _suite_metrics_row(uri: str, experiment: str, stage: str, label: str, wall: float) -> Row:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    run = client.search_runs([experiment_id], f"tags.stage = '{stage}' AND tags.run_kind = 'stage'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    m = run.data.metrics
    n = int(m["test/n"]) if "test/n" in m else None
    correct = round(m["test/accuracy"] * n) if n else None
    note = f"run {run.info.run_id}" + ("; wall includes stages 1-2" if stage == "stage3" else "")
    return Row(label, stage, m.get("cv/accuracy_mean", math.nan), m.get("cv/accuracy_std", math.nan),
               m.get("test/accuracy", math.nan), correct, n,
               (m.get("test/accuracy_ci_low", math.nan), m.get("test/accuracy_ci_high", math.nan)),
               m.get("robustness/stain_shift_accuracy", math.nan), wall, note)


# --- output -------------------------------------------------------------------------------------------------------

def _f(value: float, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(task: str, stain: str, rows: list[Row], data: TaskData, folds: int) -> list[str]:
    split, labels = data.split, data.data.labels
    test = split.test_indices
    majority = np.bincount(labels[test]).max() / len(test) if len(test) else math.nan
    lines = [f"### {task} ({', '.join(data.class_names)}), stain {stain}", "",
             f"Outer test: {len(test)} images (majority class {_f(majority)}); development: "
             f"{len(split.development_indices)} images in {folds} folds.", "",
             f"| method | CV accuracy (mean ± sd, {folds} folds) | test accuracy (correct/n) | 95% CI | "
             "test re-stained | wall s | notes |", "|---|---|---|---|---|---:|---|"]
    for r in rows:
        count = f" ({r.correct}/{r.n})" if r.n else ""
        method = f"{r.method} **(best colour)**" if r.best else r.method
        cv = "—" if math.isnan(r.cv_mean) else f"{_f(r.cv_mean)} ± {_f(r.cv_std)}"
        ci = "—" if math.isnan(r.ci[0]) else f"{_f(r.ci[0], 2)}–{_f(r.ci[1], 2)}"
        lines.append(f"| {method} | {cv} | {_f(r.test_accuracy)}{count} | "
                     f"{ci} | {_f(r.shifted_accuracy)} | {_f(r.wall_s, 2)} | {r.note} |")
    return lines + [""]


def figures(task: str, stain: str, rows: list[Row]) -> dict[str, object]:
    """`<task>/<stain>/<row>/<figure>` (a skipped row's NaNs left out) and the best colour variant's name."""
    out: dict[str, object] = {}
    for r in rows:
        values = {"cv_accuracy_mean": r.cv_mean, "test_accuracy": r.test_accuracy,
                  "stain_shift_accuracy": r.shifted_accuracy, "wall_s": r.wall_s}
        out.update({f"{task}/{stain}/{r.key}/{name}": v for name, v in values.items() if not math.isnan(v)})
        if r.best:
            out[f"{task}/{stain}/best_colour"] = r.key.removeprefix("colour_")
    return out


def rows_for(args: argparse.Namespace, task: str, stain: str, uri: str | None) -> list[Row]:
    rows = colour_rows(task_data(args, task, args.image_size), stain)
    rows += [row for spec in cnn_specs(args) for row in feature_rows(args, task, stain, *spec)]
    if uri:
        rows += [suite_row(args, stage, label, task, stain, uri) for stage, label in SUITE_STAGES]
    return rows


def header(args: argparse.Namespace) -> list[str]:
    data = task_data(args, args.tasks[0], args.image_size)
    return ["## Baselines and the suite on one split (benchmarks/bench_quality.py)", "",
            f"Command: `{shlex.join(['python', *sys.argv])}`", "",
            f"Data: {args.data} ({len(data.data.labels)} images); split seed {args.data_seed}, {args.folds} folds, "
            f"test fraction {args.test_fraction}; colour rows at {args.image_size} px. Re-stained test: "
            "imaging/augment.py:stain_shifted (hed_darker, hed_lighter, hsv on thirds), then the row's stain "
            "control. Wall s: the row's own work (loading the images and re-staining the test part, shared by the "
            "rows, are not counted; a suite row is its whole process).", ""]


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    lines, found, failed = header(args), {}, False
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db" if args.suite_rows else None
        for task in args.tasks:
            for stain in args.stains:
                rows = rows_for(args, task, stain, uri)
                block = table(task, stain, rows, task_data(args, task, args.image_size), args.folds)
                print(f"{task}, stain {stain}: {len(rows)} rows, {time.perf_counter() - started:.0f} s so far",
                      file=sys.stderr, flush=True)  # a long run says where it is
                lines += block
                found.update(figures(task, stain, rows))
                failed |= any(r.note.startswith("FAILED") for r in rows)
    lines.append(f"Total wall time: {time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    emit({**found, "total_wall_s": time.perf_counter() - started})
    if args.out:
        Path(args.out).write_text(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

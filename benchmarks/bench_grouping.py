"""Grouped splits: how much of colour alone's accuracy on aria-all comes from fields of one smear on both sides of a
split. aria-all gives no patient id and neighbouring file numbers are often fields of the same smear; `--group-by
blocks:N` keeps N consecutive file numbers (per class folder) together.

    python benchmarks/bench_grouping.py                 # aria-all, 4 classes: none, blocks of 20, 40, 80; seeds 42-44
    python benchmarks/bench_grouping.py --quick         # bundled sample, 2 folds, one seed: does it run?

Everything is the suite's own: the split is tasks.py:smear_task's with `data.group_by` set (5 folds, 20% test part,
224 px, duplicates dropped), and colour alone is analysis/shortcut.py:split_check, the check every stage run logs as
`shortcut/*`: logistic regressions on colour histograms and statistics, CV over the development part's folds, then a
refit on the whole development part scored on the outer test part. The best variant is chosen by CV accuracy (never
by the test part); hist16 (16-bin RGB histogram) is shown too, as it is the variant measured before grouping existed.
CPU only and light: one process, the regressions on one BLAS thread; about 10 s per (grouping, seed) on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchlib import REPO, SAMPLE, add_quick, emit, quick_defaults, skip  # noqa: E402

ARIA = REPO.parent / "shared" / "data" / "aria-all" / "original"
SHOWN = "hist16"  # the variant measured before: a 16-bin colour histogram


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", default=str(ARIA), help="smear images (folder per class)")
    parser.add_argument("--groupings", nargs="+", default=["none", "blocks:20", "blocks:40", "blocks:80"],
                        help="--group-by values to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="split seeds (data.seed)")
    parser.add_argument("--folds", type=int, default=5, help="CV folds of each split")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="outer test part")
    parser.add_argument("--image-size", type=int, default=224, help="aria-all's own size")
    parser.add_argument("--task", default="multiclass", choices=["multiclass", "binary"])
    add_quick(parser)
    args = parser.parse_args()
    return quick_defaults(parser, args, data=str(SAMPLE / "original"), folds=2, seeds=[42])


def measure(args: argparse.Namespace, grouping: str, seed: int) -> dict:
    from mtl_suite.analysis.shortcut import split_check
    from mtl_suite.config import DataConfig
    from mtl_suite.tasks import smear_task

    config = DataConfig(path=args.data, image_size=args.image_size, folds=args.folds,
                        test_fraction=args.test_fraction, seed=seed, group_by=grouping)
    start = time.perf_counter()
    data = smear_task(config, args.task, None)  # images decoded once: later calls take them from memory
    check = split_check(data.data.images, data.data.labels, data.split)
    best, shown = check.best_score, check.scores[SHOWN]
    return {
        "groups": len({e.group for e in data.split.entries}),
        "test_groups": data.split.group_counts()["test"],
        "best": best.name, "cv": best.cv_accuracy, "cv_sd": best.cv_accuracy_std,
        "test": best.test_accuracy, "correct": best.test_correct, "n": best.test_n,
        "shown_cv": shown.cv_accuracy, "shown_test": shown.test_accuracy, "seconds": time.perf_counter() - start,
    }


def table(rows: dict[tuple[str, int], dict]) -> list[str]:
    from mtl_suite.analysis.intervals import wilson_interval

    lines = ["| grouping | split seed | groups (test part) | colour alone, best by CV | CV accuracy (mean ± sd) "
             f"| test accuracy (95% CI) | {SHOWN}: CV / test |", "|---|---|---|---|---|---|---|"]
    for (grouping, seed), r in rows.items():
        low, high = wilson_interval(r["correct"], r["n"])
        test = (f"{100 * r['test']:.1f}% ({r['correct']}/{r['n']}; {100 * low:.1f}-{100 * high:.1f})" if r["n"]
                else "- (no test part)")
        lines.append(f"| {grouping} | {seed} | {r['groups']} ({r['test_groups']}) | {r['best']} | "
                     f"{100 * r['cv']:.1f}% ± {100 * r['cv_sd']:.1f} | {test} | "
                     f"{100 * r['shown_cv']:.1f}% / {_percent(r['shown_test'])} |")
    return lines


def summary(rows: dict[tuple[str, int], dict], groupings: list[str]) -> list[str]:
    """Per grouping, over the seeds: mean CV and pooled test accuracy of the best variant and of SHOWN."""
    lines = ["| grouping | best: CV mean | best: test, pooled | " f"{SHOWN}: CV mean | {SHOWN}: test mean |",
             "|---|---|---|---|---|"]
    for grouping in groupings:
        mine = [r for (g, _), r in rows.items() if g == grouping]
        correct, n = sum(r["correct"] for r in mine), sum(r["n"] for r in mine)
        lines.append(f"| {grouping} | {100 * statistics.mean(r['cv'] for r in mine):.1f}% | "
                     f"{f'{100 * correct / n:.1f}% ({correct}/{n})' if n else '-'} | "
                     f"{100 * statistics.mean(r['shown_cv'] for r in mine):.1f}% | "
                     f"{_percent(statistics.mean(r['shown_test'] for r in mine))} |")
    return lines


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def main() -> None:
    args = parse_args()
    if not Path(args.data).is_dir():
        skip(f"no smear images at {args.data} (aria-all lives beside the development checkout; --quick uses the "
             "bundled sample)")
    rows = {}
    for seed in args.seeds:
        for grouping in args.groupings:
            rows[(grouping, seed)] = measure(args, grouping, seed)
            print(f"  {grouping}, seed {seed}: {rows[(grouping, seed)]['seconds']:.1f} s", flush=True)
    print(f"\nColour alone on {args.data} ({args.task}, {args.folds} folds, test part {args.test_fraction}, "
          f"{args.image_size} px)\n")
    print("\n".join(table(rows)))
    print()
    print("\n".join(summary(rows, args.groupings)))
    emit({grouping: {f"seed{seed}": {key: r[key] for key in ("groups", "cv", "test", "shown_cv", "shown_test")}
                     for (g, seed), r in rows.items() if g == grouping} for grouping in args.groupings})


if __name__ == "__main__":
    main()

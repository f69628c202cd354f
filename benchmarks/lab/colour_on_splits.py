"""The best colour-only baseline (analysis/shortcut.py, as every stage run logs it) on the outer test parts of a
comparison's splits: for re-scoring pairs whose runs logged something else (e.g. raw colour under `--stain gray`).

    python benchmarks/lab/colour_on_splits.py --data ../shared/data/aria-all/original --stain gray --seeds 42-51
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from mtl_suite.analysis.shortcut import split_check
from mtl_suite.config import STAINS, load_config
from mtl_suite.models.stain import controlled_pixels
from mtl_suite.tasks import smear_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--stain", choices=STAINS, default="none", help="score the pixels a model with it sees")
    parser.add_argument("--seeds", default="42-51", help="split seeds, first-last (a comparison's pair i: base + i)")
    parser.add_argument("--task", choices=("multiclass", "binary"), default="multiclass")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=1)
    args = parser.parse_args()
    first, last = (int(part) for part in args.seeds.split("-"))
    base = load_config(overrides={"data.path": args.data, "data.image_size": args.image_size, "data.folds": args.folds})
    scores = []
    for seed in range(first, last + 1):
        task = smear_task(replace(base.data, seed=seed), args.task, None)
        check = split_check(controlled_pixels(task.data.images, args.stain), task.data.labels, task.split)
        scores.append(check.best_score.test_accuracy)
        print(f"split seed {seed}: {check.best} test {scores[-1]:.4f} cv {check.best_score.cv_accuracy:.4f}",
              flush=True)
    print(f"mean test accuracy over {len(scores)} splits: {sum(scores) / len(scores):.4f}")


if __name__ == "__main__":
    main()

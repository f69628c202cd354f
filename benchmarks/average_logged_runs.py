"""What an ensemble of finished stage runs would have scored, without training anything: the runs' logged
probabilities (cv/oof_predictions.csv, test/predictions.csv) averaged per image, on the split the runs share
(rebuilt from the first run's parameters; every run must have logged the same test part).

    python benchmarks/average_logged_runs.py --tracking-uri sqlite:////work/runs/chain/mlflow.db \\
        --normal-class Benign 8768867629834b3781d1fad201b62d9e 2d4397f309e045f4b671039aa36351b5

Prints each run alone, then their average: per-fold and mean +- sd CV accuracy and outer test accuracy, 4-class
and (with --normal-class) read as normal vs leukemia as stage runs log it (`as_binary`). An analysis of runs
already scored, not a configuration the suite trains or serves: the runs were chosen knowing their test figures.
"""

from __future__ import annotations

import argparse
import tempfile

import mlflow
import numpy as np
import pandas as pd

from fuse_logged_runs import accuracy, logged, run_data
from mtl_suite.tasks import smear_task


def logged_probabilities(client, run_id: str, folder: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(out-of-fold, test) probabilities indexed by image digest; exits naming the run when one is missing."""
    oof = logged(client, run_id, "cv/oof_predictions.csv", folder)
    test = logged(client, run_id, "test/predictions.csv", folder)
    if oof is None or test is None:
        raise SystemExit(f"run {run_id}: no cv/oof_predictions.csv or test/predictions.csv logged")
    return oof.set_index("sha256"), test.set_index("sha256")


def scores(runs: list[tuple[pd.DataFrame, pd.DataFrame]], task_data, normal: int | None) -> tuple[list[float], float]:
    """Per-fold and test accuracy of the runs' (out-of-fold, test) probabilities averaged per image."""
    split, labels = task_data.split, task_data.data.labels
    columns = ["p_" + name for name in task_data.class_names]
    digests = np.array([e.sha256 for e in split.entries])

    def accuracy_on(part: int, rows: np.ndarray) -> float:
        mean = np.mean([run[part].loc[digests[rows], columns].to_numpy() for run in runs], axis=0)
        return accuracy(mean, labels[rows], normal)

    return [accuracy_on(0, val) for _, _, val in split.fold_indices()], accuracy_on(1, split.test_indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--normal-class", help="also read multiclass calls as normal (this class) vs leukemia")
    parser.add_argument("runs", nargs="+", help="stage run ids on one split")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    data_cfg, task, _ = run_data(client.get_run(args.runs[0]))
    task_data = smear_task(data_cfg, task, None)
    test_part = {task_data.split.entries[i].sha256 for i in task_data.split.test_indices}
    with tempfile.TemporaryDirectory() as folder:
        logged_runs = [logged_probabilities(client, run_id, folder) for run_id in args.runs]
    for run_id, (_, test) in zip(args.runs, logged_runs):
        if set(test.index) != test_part:
            raise SystemExit(f"run {run_id}: its logged test part is not the split of run {args.runs[0]}")
    readings = [("4-class", None)]
    if args.normal_class:
        readings.append((f"{args.normal_class} vs leukemia", task_data.class_names.index(args.normal_class)))
    members = [(run_id[:8], [run]) for run_id, run in zip(args.runs, logged_runs)] + [("average", logged_runs)]
    n = len(test_part)
    for name, runs in members:
        for reading, normal in readings:
            folds, test = scores(runs, task_data, normal)
            print(f"{name} {reading}: folds {' '.join(f'{a:.4f}' for a in folds)}; CV {np.mean(folds):.5f} +- "
                  f"{np.std(folds, ddof=1):.4f}; test {test:.4f} ({round(test * n)}/{n})")


if __name__ == "__main__":
    main()

"""What `--colour-fusion average` would have scored on finished stage runs, without training them again: each run's
logged CNN probabilities (cv/oof_predictions.csv, test/predictions.csv) averaged with the colour classifier that
fusion fits (analysis/shortcut.py's hist32_stats regression, on the same fold's training images; the in-graph
features equal these, tests/unit/test_colour.py), on the run's own split rebuilt from its parameters.

    python benchmarks/lab/fuse_logged_runs.py --tracking-uri sqlite:///mlflow.db \\
        --experiment aria-compare-xception-best --comparison b23b15cabbb042e0aa817c1e2218f4cb

Prints per run: CNN, colour alone and fused, CV (mean +- sd over the folds, where the run logged its out-of-fold
predictions) and outer test; then each arm's mean test accuracy over the runs.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import mlflow
import numpy as np
import pandas as pd

from mtl_suite.analysis.shortcut import VARIANTS, channel_histograms
from mtl_suite.config import DataConfig
from mtl_suite.models.colour import colour_regression
from mtl_suite.models.stain import controlled_pixels
from mtl_suite.tasks import smear_task
from mtl_suite.training.metrics import normal_vs_rest


def run_data(run) -> tuple[DataConfig, str, str]:
    p = run.data.params
    data = DataConfig(path=p["data.path"], image_size=int(p["data.image_size"]), folds=int(p["data.folds"]),
                      seed=int(p["data.seed"]), test_fraction=float(p["data.test_fraction"]),
                      duplicates=p["data.duplicates"])
    return data, run.data.tags.get("task", "multiclass"), p.get("train.stain", "none")


def logged(client, run_id: str, path: str, folder: str) -> pd.DataFrame | None:
    if path.split("/")[-1] not in [a.path.split("/")[-1] for a in client.list_artifacts(run_id, path.split("/")[0])]:
        return None
    return pd.read_csv(client.download_artifacts(run_id, path, folder))


def accuracy(probabilities: np.ndarray, labels: np.ndarray, normal: int | None) -> float:
    """Accuracy of the argmax; with `normal` (a class index), of the argmax read as normal vs leukemia, as stage runs
    log it (`as_binary`)."""
    if normal is None:
        return float((probabilities.argmax(1) == labels).mean())
    return normal_vs_rest(labels, probabilities.argmax(1), normal)["accuracy"]


def score(run, client, normal_class: str | None = None) -> dict[str, tuple[float, float, float]]:
    """{'cnn'|'colour'|'fused': (cv mean, cv sd, test accuracy)}; with `normal_class`, a multiclass run's
    normal-vs-leukemia accuracy."""
    data_cfg, task, stain = run_data(run)
    task_data = smear_task(data_cfg, task, None)
    split, labels = task_data.split, task_data.data.labels
    x = VARIANTS["hist32_stats"].features(channel_histograms(controlled_pixels(task_data.data.images, stain)))
    columns = ["p_" + name for name in task_data.class_names]
    normal = task_data.class_names.index(normal_class) if normal_class else None
    digests = np.array([e.sha256 for e in split.entries])
    with tempfile.TemporaryDirectory() as folder:
        test = logged(client, run.info.run_id, "test/predictions.csv", folder)
        oof = logged(client, run.info.run_id, "cv/oof_predictions.csv", folder)
    test_idx, dev = split.test_indices, split.development_indices
    if set(test["sha256"]) != set(digests[test_idx]):
        raise SystemExit(f"run {run.info.run_id}: its logged test part is not the rebuilt split's")
    cnn_test = test.set_index("sha256").loc[digests[test_idx], columns].to_numpy()
    colour_test = colour_regression().fit(x[dev], labels[dev]).predict_proba(x[test_idx])
    out = {}
    for name, test_p in (("cnn", cnn_test), ("colour", colour_test), ("fused", (cnn_test + colour_test) / 2)):
        out[name] = [np.nan, np.nan, accuracy(test_p, labels[test_idx], normal)]
    if oof is not None:
        by_digest = oof.set_index("sha256")
        folds = {"cnn": [], "colour": [], "fused": []}
        for _, train, val in split.fold_indices():
            cnn = by_digest.loc[digests[val], columns].to_numpy()
            colour = colour_regression().fit(x[train], labels[train]).predict_proba(x[val])
            for name, p in (("cnn", cnn), ("colour", colour), ("fused", (cnn + colour) / 2)):
                folds[name].append(accuracy(p, labels[val], normal))
        for name, accs in folds.items():
            out[name][:2] = [float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else np.nan]
    return {name: tuple(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--runs", nargs="*", default=[], help="stage run ids")
    parser.add_argument("--experiment", help="with --comparison: every arm's final-stage run of that comparison")
    parser.add_argument("--comparison", help="a `mtl-suite compare` run id")
    parser.add_argument("--normal-class", help="score multiclass runs as normal (this class) vs leukemia (the others)")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    runs = [client.get_run(run_id) for run_id in args.runs]
    if args.comparison:
        experiment = client.get_experiment_by_name(args.experiment)
        found = client.search_runs([experiment.experiment_id],
                                   f"tags.comparison_run = '{args.comparison}' and tags.comparison_role = 'arm'")
        runs += sorted(found, key=lambda r: (int(r.data.tags["comparison_pair"]), r.data.tags["comparison_arm"]))
    means = defaultdict(list)
    for run in runs:
        tags = run.data.tags
        label = (f"pair {tags['comparison_pair']} {tags['comparison_arm']}" if "comparison_pair" in tags
                 else tags.get("stage", ""))
        scores = score(run, client, args.normal_class)
        print(f"{run.info.run_id[:8]} {label} ({tags.get('task', 'multiclass')}, split seed "
              f"{run.data.params['data.seed']}): " + "; ".join(
                  f"{name} CV {cv:.4f} +- {sd:.4f} test {test:.4f}" for name, (cv, sd, test) in scores.items()),
              flush=True)
        for name, (_, _, test) in scores.items():
            means[(tags.get("comparison_arm", "run"), name)].append(test)
    for (arm, name), values in sorted(means.items()):
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(f"{arm} {name}: mean test accuracy {np.mean(values):.4f} +- {spread:.4f} over {len(values)} run(s)")


if __name__ == "__main__":
    main()

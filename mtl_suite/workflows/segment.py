"""`mtl-suite segment train|evaluate` end to end: `segment train` (a run with per-epoch curves, overlays and the
logged model) and `segment evaluate` (a run with Dice/IoU per image and WBC box recall), and loading a trained run
for `segment predict|crops`. The imaging code itself (imaging/) stays framework-light; this module wires it to its
MLflow run, which it logs to directly: the few calls are specific to these runs, not worth a tracking/ module."""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np

from mtl_suite.catalog import RunKind
from mtl_suite.config import NO_GROUPING
from mtl_suite.errors import UserError
from mtl_suite.imaging.roi import RoiParams
from mtl_suite.tracking.requirements import model_requirements
from mtl_suite.tracking.runs import git_commit, log_split
from mtl_suite.tracking.setup import take_launcher_run, use_tracking

OVERLAY_COUNT = 6
SEGMENTATION = "segmentation"  # the `stage` tag of segmentation runs; their `task` tag is "train" or "evaluate"


@dataclass(frozen=True)
class SegTrainOptions:
    data: str
    masks: str | None = None
    mask_kind: str = "auto"
    layout: str = "auto"
    size: int = 128
    depth: int = 4
    width: int = 16
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    augment: str = "paper"
    strength: float = 1.0
    test_fraction: float = 0.2
    seed: int = 42
    group_by: str = NO_GROUPING  # groups from file names (data/grouping.py): one smear's fields on one side
    roi: RoiParams = RoiParams()


def _split_for(options: SegTrainOptions, out_dir: Path):
    from mtl_suite.data.manifest import build_manifest
    from mtl_suite.data.splits import make_split, save_split

    manifest = build_manifest(options.data, options.layout, duplicates="drop", on_bad_image="skip",
                              group_by=options.group_by)
    split = make_split(manifest, folds=1, test_fraction=options.test_fraction, seed=options.seed)
    path, digest = save_split(split, out_dir / "segmentation_split.json")
    return split, path, digest, manifest


def train_segmentation(options: SegTrainOptions, tracking_uri: str | None, experiment: str,
                       say=print, verbose: int = 1) -> tuple[str, dict[str, float]]:
    """Train the residual U-Net in an MLflow run; returns (run id, final metrics)."""
    from mtl_suite.imaging.augment import get_pair_augment
    from mtl_suite.imaging.masks import split_pairs
    from mtl_suite.imaging.unet import build_unet, compile_unet, fit_unet
    from mtl_suite.tracking.callbacks import MlflowEpochLogger

    augment = get_pair_augment(options.augment, options.strength)  # fail on a bad name before any work
    _, experiment_id = use_tracking(tracking_uri, experiment)
    with tempfile.TemporaryDirectory() as tmp:
        split, split_path, split_digest, manifest = _split_for(options, Path(tmp))
        mask_root = Path(options.masks) if options.masks else None
        data = split_pairs(split, options.size, options.mask_kind, mask_root, options.roi)
        for line in data.problems.lines():
            say(f"left out {line}")
        say(f"pairs: {len(data.train.paths)} train, {len(data.val.paths)} validation, {len(data.test.paths)} test "
            f"(mask kind: {data.kind})")
        # `mlflow run . -e segment`'s run, or a new one
        with mlflow.start_run(run_id=take_launcher_run(experiment_id), experiment_id=experiment_id,
                              run_name=f"segment-train-{data.kind}-{options.size}px") as run:
            mlflow.set_tags({"run_kind": RunKind.SEGMENTATION, "stage": SEGMENTATION, "task": "train",
                             "git_commit": git_commit(), "seed": str(options.seed), "mask_kind": data.kind})
            log_split(split_path, split_digest, split.to_json(), context="segmentation")
            mlflow.log_params(_flat_params(options, data.kind))
            mlflow.log_metrics({"data/train_pairs": len(data.train.paths), "data/val_pairs": len(data.val.paths),
                                "data/test_pairs": len(data.test.paths), "data/left_out": data.problems.count})
            if data.problems.count:
                mlflow.log_text("\n".join(data.problems.lines(show=10_000)) + "\n", "data/left_out.txt")
            model = compile_unet(build_unet(options.depth, options.width), options.learning_rate)
            val = (data.val.images, data.val.masks) if len(data.val.paths) else None
            fit_unet(model, (data.train.images, data.train.masks), val, options.epochs, options.batch_size,
                     augment, options.seed, [MlflowEpochLogger(run.info.run_id)], verbose)
            shown = data.val if len(data.val.paths) else data.train
            metrics = _log_mask_quality(model, shown, "val" if shown is data.val else "train")
            _log_overlays(model, shown)
            _log_model(model, data.train.images[:2])
            return run.info.run_id, metrics


def _flat_params(options: SegTrainOptions, kind: str) -> dict:
    params = {k: v for k, v in asdict(options).items() if k != "roi"}
    params.update({f"roi_{k}": v for k, v in asdict(options.roi).items()})
    params["mask_kind_resolved"] = kind
    return params


def _log_mask_quality(model, pairs, part: str) -> dict[str, float]:
    from mtl_suite.imaging.evaluate import dice_iou
    from mtl_suite.imaging.unet import predict_probabilities

    pred = predict_probabilities(model, pairs.images) > 0.5
    scores = np.array([dice_iou(p, t) for p, t in zip(pred, pairs.masks)])
    metrics = {f"{part}/dice_mean": float(scores[:, 0].mean()), f"{part}/iou_mean": float(scores[:, 1].mean())}
    mlflow.log_metrics(metrics)
    return metrics


def _log_overlays(model, pairs) -> None:
    from mtl_suite.imaging.evaluate import overlay
    from mtl_suite.imaging.unet import predict_probabilities

    count = min(OVERLAY_COUNT, len(pairs.paths))
    pred = predict_probabilities(model, pairs.images[:count]) > 0.5
    for i in range(count):
        image = overlay(pairs.images[i], pairs.masks[i], pred[i])
        mlflow.log_image(image, f"overlays/{Path(pairs.paths[i]).stem}.png")


def _log_model(model, sample: np.ndarray) -> None:
    from mlflow.models import infer_signature

    from mtl_suite.imaging.unet import predict_probabilities

    signature = infer_signature(sample, predict_probabilities(model, sample)[..., None])
    # Requirements stated, not inferred: MLflow's inference reloads the model in a subprocess (seconds) and, for this
    # flavour, fails over to `keras` alone, which cannot load the model without TensorFlow.
    mlflow.keras.log_model(model, name="model", signature=signature,  # no input_example: fails in 3.17.2
                           pip_requirements=model_requirements())


# --- loading a trained run -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainedRun:
    run_id: str
    model: object
    params: dict[str, str]

    @property
    def size(self) -> int:
        return int(self.params.get("size", 128))

    @property
    def roi(self) -> RoiParams:
        p = self.params
        return RoiParams(int(p.get("roi_red", 88)), int(p.get("roi_green", 41)), int(p.get("roi_blue", 20)),
                         int(p.get("roi_threshold", 98)), p.get("roi_mode", "subtract"))


def load_trained(run_id: str, tracking_uri: str | None, experiment: str) -> TrainedRun:
    import mtl_suite.imaging.unet  # noqa: F401  registers the loss and metrics for deserialisation

    use_tracking(tracking_uri, experiment)
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"run not found in the tracking store: {run_id}") from None
    if run.data.tags.get("stage") != SEGMENTATION or run.data.tags.get("task") != "train":
        raise UserError(f"run {run_id} is not a `segment train` run (tags stage=segmentation, task=train)")
    model = mlflow.keras.load_model(f"runs:/{run_id}/model", load_model_kwargs={"safe_mode": True})
    return TrainedRun(run_id, model, dict(run.data.params))


def _download_split(run_id: str):
    from mtl_suite.data.splits import load_split

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data/segmentation_split.json")
    return load_split(local)


def evaluate_segmentation(run_id: str, tracking_uri: str | None, experiment: str, voc_root: str | None,
                          min_area_fraction: float, say=print) -> tuple[str, dict[str, float]]:
    """Held-out Dice/IoU (the training run's own test part and mask source) and, with `voc_root`, WBC box recall
    for the U-Net and the ROI method. Logged as a new run tagged task=evaluate with source_run_id."""
    from mtl_suite.imaging.masks import split_pairs

    trained = load_trained(run_id, tracking_uri, experiment)
    split = _download_split(run_id)
    masks = trained.params.get("masks")
    data = split_pairs(split, trained.size, trained.params.get("mask_kind_resolved", "auto"),
                       Path(masks) if masks and masks != "None" else None, trained.roi)
    _, experiment_id = use_tracking(tracking_uri, experiment)
    with mlflow.start_run(run_id=take_launcher_run(experiment_id), experiment_id=experiment_id,
                          run_name=f"segment-evaluate-{run_id[:8]}") as run:
        mlflow.set_tags({"run_kind": RunKind.SEGMENTATION, "stage": SEGMENTATION, "task": "evaluate",
                         "source_run_id": run_id,
                         "git_commit": git_commit(), "split_digest": _run_tag(run_id, "split_digest"),
                         "dataset_digest": _run_tag(run_id, "dataset_digest")})
        metrics = _log_per_image(trained.model, data.test, "test") if len(data.test.paths) else {}
        if not metrics:
            say("the training run's split has no usable test pairs; Dice/IoU skipped")
        if voc_root:
            metrics.update(_log_box_recall(trained, voc_root, min_area_fraction))
        mlflow.log_metrics(metrics)
        return run.info.run_id, metrics


def _run_tag(run_id: str, key: str) -> str:
    return mlflow.get_run(run_id).data.tags.get(key, "")


def _log_per_image(model, pairs, part: str) -> dict[str, float]:
    from mtl_suite.imaging.evaluate import dice_iou
    from mtl_suite.imaging.unet import predict_probabilities

    pred = predict_probabilities(model, pairs.images) > 0.5
    rows = [(Path(p).name, *dice_iou(a, b)) for p, a, b in zip(pairs.paths, pred, pairs.masks)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", "dice", "iou"])
    writer.writerows(rows)
    mlflow.log_text(out.getvalue(), f"{part}_per_image.csv")
    return {f"{part}/dice_mean": float(np.mean([r[1] for r in rows])),
            f"{part}/iou_mean": float(np.mean([r[2] for r in rows])), f"{part}/images": float(len(rows))}


def _log_box_recall(trained: TrainedRun, voc_root: str, min_area_fraction: float) -> dict[str, float]:
    from mtl_suite.imaging.segment import box_recall_both

    results = box_recall_both(trained.model, trained.size, trained.roi, voc_root, min_area_fraction)
    return {f"voc/{method}/{key}": value for method, summary in results.items() for key, value in summary.items()}

"""`mtl-suite segment ...`: train and evaluate the residual U-Net, predict masks, cut single-cell crops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np
import typer

from mtl_suite.cli.common import (DataPath, Experiment, GroupBy, Layout, Quiet, SystemMetrics, TextOrJson,
                                  TrackingUri, choice, enable_system_metrics, handle_user_errors, progress_printer,
                                  say)
from mtl_suite.cli.imaging_options import (Blue, Green, OffsetMode, Red, Threshold, image_files, relative_name,
                                           roi_params, write_png)
from mtl_suite.config import DEFAULT_EXPERIMENT, NO_GROUPING
from mtl_suite.data import default_masks_for, resolve_data_path
from mtl_suite.data.grouping import parse_grouping
from mtl_suite.errors import UserError
from mtl_suite.imaging.crops import CROP_METHODS
from mtl_suite.imaging.masks import MASK_KINDS

app = typer.Typer(help="White-blood-cell segmentation: residual U-Net, masks, single-cell crops.",
                  no_args_is_help=True)

Masks = Annotated[Optional[Path], typer.Option(
    "--masks", help="Mask folder with the images' relative names: binary masks or cells on black "
                    "(e.g. aria-all/segmented). Default: the bundled sample's segmented/ for the sample, "
                    "else ROI weak masks.", show_default=False)]
MaskKind = Annotated[choice(MASK_KINDS), typer.Option("--mask-kind", help="What the mask files are; auto: "
                                                                         "decided from their content.")]
RunId = Annotated[str, typer.Argument(help="Run id of a `segment train` run.", show_default=False)]
MinArea = Annotated[float, typer.Option("--min-area-fraction", help="Components smaller than this fraction of "
                                                                      "the field are ignored (platelets, debris).")]


@app.command()
@handle_user_errors
def train(
    path: DataPath = None,
    masks: Masks = None,
    mask_kind: MaskKind = "auto",
    layout: Layout = "auto",
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Training size (square; fields are "
                                                                 "resized).")] = 128,
    depth: Annotated[int, typer.Option("--depth", min=1, max=6, help="Poolings in the encoder.")] = 4,
    width: Annotated[int, typer.Option("--width", min=1, help="Filters of the first block.")] = 16,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0)] = 1e-3,
    augment: Annotated[str, typer.Option("--augment", help="Augmentation policy (none, paper, paper+color, color "
                                                           "or a .yaml file); training batches only.")] = "paper",
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9)] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    group_by: GroupBy = NO_GROUPING,
    red: Red = 88, green: Green = 41, blue: Blue = 20, threshold: Threshold = 98, offset_mode: OffsetMode = "subtract",
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    system_metrics: SystemMetrics = False,
    quiet: Quiet = False,
) -> None:
    """Train the residual U-Net (BCE + Dice) on a grouped split (see --group-by), as an MLflow run."""
    from mtl_suite.imaging.augment import build_transform
    from mtl_suite.workflows.segment import SegTrainOptions, train_segmentation

    build_transform(augment)  # an unknown policy fails before the store is opened
    parse_grouping(group_by)  # so does a bad grouping
    for option, value in (("PATH", path), ("--masks", masks)):
        if value is not None and not Path(value).exists():
            raise UserError(f"{option}: no such file or folder. Received: {str(value)!r}")
    enable_system_metrics(system_metrics)

    masks = masks if masks is not None or mask_kind == "roi" else default_masks_for(path)
    options = SegTrainOptions(
        data=str(resolve_data_path(path)), masks=str(masks) if masks else None, mask_kind=mask_kind, layout=layout,
        size=image_size, depth=depth, width=width, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        augment=augment, test_fraction=test_fraction, seed=seed, group_by=group_by,
        roi=roi_params(red, green, blue, threshold, offset_mode))
    run_id, metrics = train_segmentation(options, tracking_uri, experiment, say,  # data reports, never silenced
                                         verbose=0 if quiet else 2)
    typer.echo(f"run {run_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


@app.command()
@handle_user_errors
def evaluate(
    run_id: RunId,
    voc: Annotated[Optional[Path], typer.Option(
        "--voc", help="Pascal-VOC folder (JPEGImages/, Annotations/) for WBC box recall, e.g. ../shared/data/bccd.",
        show_default=False)] = None,
    min_area_fraction: MinArea = 0.002,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    output_format: TextOrJson = "text",
    quiet: Quiet = False,
) -> None:
    """Dice/IoU per image on the run's held-out test part; WBC box recall for U-Net and ROI method (--voc)."""
    from mtl_suite.workflows.segment import evaluate_segmentation

    eval_id, metrics = evaluate_segmentation(run_id, tracking_uri, experiment, str(voc) if voc else None,
                                             min_area_fraction, lambda m: say(m, quiet))
    if output_format == "json":
        typer.echo(json.dumps({"run_id": eval_id, **metrics}, indent=2))
    else:
        typer.echo(f"evaluation run {eval_id}")
        for key, value in metrics.items():
            typer.echo(f"  {key:<40} {value:.4f}")


@app.command()
@handle_user_errors
def predict(
    run_id: RunId,
    path: Annotated[Optional[Path], typer.Argument(help="An image or a folder of images. Default: bundled sample.",
                                                   show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for masks (PNG).")] = Path("masks"),
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Also write the paper's post-processing: "
                                                                         "the WBC via the blue channel, on black.")]
    = False,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Masks for new images with a trained U-Net (any size; predicted at the training size)."""
    from mtl_suite.data.images import read_rgb
    from mtl_suite.imaging.roi import isolate_wbc
    from mtl_suite.imaging.segment import unet_masks
    from mtl_suite.workflows.segment import load_trained

    root = path or resolve_data_path(None)
    files = list(image_files(root))
    trained = load_trained(run_id, tracking_uri, experiment)
    report = progress_printer(len(files), "predict", quiet)
    for i, file in enumerate(files, start=1):
        image = read_rgb(file)
        mask = unet_masks(trained.model, [image], trained.size)[0]
        rel = relative_name(file, root).with_suffix(".png")
        write_png(out / "masks" / rel, mask.astype(np.uint8) * 255)
        if isolate:
            write_png(out / "isolated" / rel, isolate_wbc(image, mask))
        if report:
            report(i)
    typer.echo(f"{len(files)} masks in {out / 'masks'}")


LABEL_POLICIES: dict[str, Callable[[str], str]] = {
    "identity": lambda label: label,
    "aria": lambda label: "normal" if label == "Benign" else "blast",
}


def _label_policy(name: str, labels: set[str]) -> Callable[[str], str]:
    if name not in LABEL_POLICIES:
        raise UserError(f"unknown label policy {name!r}. Expected one of: {', '.join(LABEL_POLICIES)}")
    if name == "aria" and not labels <= {"Benign", "Early", "Pre", "Pro"}:
        raise UserError(f"label policy 'aria' expects classes Benign, Early, Pre, Pro. "
                        f"Received: {', '.join(sorted(labels))}")
    return LABEL_POLICIES[name]


@app.command()
@handle_user_errors
def crops(
    path: DataPath = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: <label>/*.png and cells.csv.")]
    = Path("cells"),
    method: Annotated[choice(CROP_METHODS), typer.Option("--method", help="Masks from: segmented (a --masks folder), roi, or unet "
                                                         "(needs --run-id).")] = "segmented",
    masks: Masks = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="A `segment train` run (method unet).",
                                                  show_default=False)] = None,
    split_file: Annotated[Optional[Path], typer.Option(
        "--split", help="Split file from `mtl-suite data split`; its roles go into the CSV. Default: a new split "
                        "(10 folds, 20% test) written to OUT/split.json.", show_default=False)] = None,
    layout: Layout = "auto",
    cell_size: Annotated[int, typer.Option("--cell-size", min=8, help="Crop size in pixels (square).")] = 96,
    max_cells: Annotated[int, typer.Option("--max-cells", min=1, help="Most crops per field (largest first).")] = 8,
    min_area_fraction: MinArea = 0.002,
    drop_border: Annotated[bool, typer.Option("--drop-border/--keep-border",
                                              help="Leave out cells cut by the field's edge.")] = False,
    label_policy: Annotated[choice(LABEL_POLICIES), typer.Option("--label-policy", help="identity, or aria: Benign -> normal, "
                                                                     "Early/Pre/Pro -> blast (weak labels).")]
    = "identity",
    seed: Annotated[int, typer.Option("--seed")] = 42,
    group_by: GroupBy = NO_GROUPING,
    red: Red = 88, green: Green = 41, blue: Blue = 20, threshold: Threshold = 98, offset_mode: OffsetMode = "subtract",
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """A folder-per-class single-cell dataset; the CSV gives each crop's parent image (its group) and split."""
    from mtl_suite.imaging.crops import CropJob, make_crops

    job = CropJob(
        split_file=split_file, data=resolve_data_path(path), layout=layout, method=method,
        masks=masks if masks is not None else default_masks_for(path), run_id=run_id, size=cell_size,
        max_cells=max_cells, min_area_fraction=min_area_fraction, drop_border=drop_border, seed=seed,
        group_by=group_by, roi=roi_params(red, green, blue, threshold, offset_mode))
    loader = None
    if method == "unet":
        if not run_id:
            raise UserError("--method unet needs --run-id of a `segment train` run")
        from mtl_suite.workflows.segment import load_trained

        trained = load_trained(run_id, tracking_uri, experiment)
        loader = (trained.model, trained.size)
    csv_path, summary = make_crops(job, out, lambda labels: _label_policy(label_policy, labels), loader,
                                   lambda n: progress_printer(n, "crops", quiet))
    for line in summary["problems"]:
        say(f"left out {line}")  # not silenced by --quiet: it changes what the dataset holds
    typer.echo(f"{summary['crops']} crops from {summary['parents']} fields in {out} "
               f"({', '.join(f'{k}: {v}' for k, v in summary['by_label'].items())}); CSV {csv_path}")

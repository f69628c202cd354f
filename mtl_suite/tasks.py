"""A stage's task data: the images, labels and split it trains on (smear fields, single cells, or a source
dataset), assembled from data/ and imaging/. Crops for stage 2 come from the smears' development part only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mtl_suite.cache import image_store
from mtl_suite.catalog import StageData, StagePlan, Task
from mtl_suite.config import NO_GROUPING, DataConfig
from mtl_suite.data import default_masks_for, resolve_data_path
from mtl_suite.data.grouping import parse_grouping
from mtl_suite.data.manifest import Manifest, build_manifest
from mtl_suite.data.arrays import ArrayData
from mtl_suite.data.lineage import HeldOut
from mtl_suite.data.pipeline import cached_image_array
from mtl_suite.data.splits import TEST, Split, make_split
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text

NORMAL_NAMES = ("normal", "benign", "hem", "healthy", "0")
POSITIVE_NAME = {StageData.SMEARS: "leukemia", StageData.CELLS: "blast", StageData.SOURCE: "positive"}


@dataclass
class TaskData:
    manifest: Manifest
    split: Split
    class_names: list[str]
    data: ArrayData
    description: str  # what the images are and where they came from, for the run's tags
    image_size: int
    # content digests of the images whose pixels reach training (for crops: the smears they were cut from)
    trained_from: frozenset[str] = frozenset()
    # stage 2: where its cells came from, for the run's `cell_source` tag ("cells:<path>", "masks:<path>",
    # "unet:<run id>", "roi"); "" for the other stages
    cell_source: str = ""
    # a multiclass task's normal class (one of class_names), when the data has one: its runs are also read as
    # normal vs leukemia (workflows/stage_checks.py); None for binary tasks, whose class 0 is normal
    normal_class: str | None = None


@dataclass(frozen=True)
class CellSegmenter:
    """Stage 2's cells for smears without masks: the suite's own segmentation of each development field."""

    name: str  # for display and the run's cell_source tag: "unet:<run id>" or "roi"
    key: str  # for the crops cache: what decides the masks (a run id, or "roi-<params>")
    masks: Callable[[np.ndarray], np.ndarray]  # an RGB field (H, W, 3) uint8 -> its boolean (H, W) cell mask


def roi_segmenter(params=None) -> CellSegmenter:
    """The paper's ROI method (imaging/roi.py; RoiParams defaults unless given), cleaned as `segment crops` does."""
    from mtl_suite.imaging.roi import RoiParams, clean_mask, roi_mask

    params = params or RoiParams()
    key = f"roi-{params.red}-{params.green}-{params.blue}-{params.threshold}-{params.mode}"
    return CellSegmenter("roi", key, lambda image: clean_mask(roi_mask(image, params)))


def class_map_for(task: Task | str, classes: list[str], normal_class: str | None,
                  positive: str) -> dict[str, str] | None:
    """Multiclass keeps the classes; binary maps the normal class to 'normal' and every other class to `positive`."""
    if task not in list(Task):
        raise UserError(f"unknown task {task!r}. Expected one of: {', '.join(Task)}")
    if len(classes) < 2:
        raise UserError(f"the data has only one class ({', '.join(classes)}); a classifier needs at least 2")
    if task == Task.MULTICLASS:
        return None
    normal_class = normal_class_of(classes, normal_class)
    if normal_class is None:
        raise UserError(
            f"binary task on classes {', '.join(classes)}: cannot tell which class is normal. "
            f"Pass --normal-class NAME (one of {', '.join(classes)})"
        )
    return {c: ("normal" if c == normal_class else positive) for c in classes}


def normal_class_of(classes: list[str], normal_class: str | None = None) -> str | None:
    """The data's normal class: `normal_class` when given (it must be one of `classes`), else the one class named
    like a normal one (NORMAL_NAMES); None when no class or more than one is."""
    if normal_class is not None:
        if normal_class not in classes:
            raise UserError(f"--normal-class {normal_class!r} is not a class of the data. Expected one of: "
                            f"{', '.join(classes)}")
        return normal_class
    found = [c for c in classes if c.lower() in NORMAL_NAMES]
    return found[0] if len(found) == 1 else None


def ordered_classes(manifest: Manifest, task: Task | str, positive: str) -> list[str]:
    """Binary: ['normal', positive] so index 1 is the positive class (the paper's binary precision/recall)."""
    return ["normal", positive] if task == Task.BINARY else manifest.classes


def smear_task(data_cfg: DataConfig, task: Task | str, normal_class: str | None,
               progress: Callable[[int], None] | None = None) -> TaskData:
    """The split is stratified on the data's own classes whatever the task, so binary and multiclass runs (and
    stage 2's crops) share one outer test part."""
    manifest = smear_manifest(data_cfg)
    task_map = class_map_for(task, manifest.classes, normal_class, POSITIVE_NAME[StageData.SMEARS])
    task_data = _task_from_manifest(manifest, data_cfg, task, task_map, POSITIVE_NAME[StageData.SMEARS],
                                    f"smears:{resolve_data_path(data_cfg.path)}", data_cfg.image_size, progress)
    if task == Task.MULTICLASS and len(manifest.classes) > 2:
        task_data.normal_class = normal_class_of(manifest.classes, normal_class)
    return task_data


def smear_manifest(data_cfg: DataConfig, masks: str | None = None) -> Manifest:
    """The smear data's manifest. `data.group_by` applies here only: it describes the smears' file names, not
    those of a --cells or --source dataset (nor of crops, which take their field's group: derive_cell_crops)."""
    return build_manifest(resolve_data_path(data_cfg.path), data_cfg.layout, masks=masks,
                          duplicates=data_cfg.duplicates, on_bad_image=data_cfg.on_bad_image,
                          class_map=data_cfg.class_map, allow_outside_root=data_cfg.allow_outside_root,
                          group_by=data_cfg.group_by)


def smear_split(data_cfg: DataConfig, masks: str | None = None) -> Split:
    """The smears' split: stage 3's, and the one stage 2's crops come from (its development part only)."""
    return make_split(smear_manifest(data_cfg, masks), data_cfg.folds, data_cfg.test_fraction, data_cfg.seed)


def cell_task(data_cfg: DataConfig, cells_path: str | None, normal_class: str | None, cache_root: Path,
              progress: Callable[[int], None] | None = None, segmenter: CellSegmenter | None = None) -> TaskData:
    """Single cells for stage 2: a given single-cell dataset (ALL-IDB2, C-NMC, crops CSV), or crops cut from the
    smear data's development images with its masks, or (no masks) with `segmenter`'s. Crops never come from the
    smears' outer-test images."""
    positive = POSITIVE_NAME[StageData.CELLS]
    if cells_path:
        manifest = build_manifest(cells_path, "auto", on_bad_image=data_cfg.on_bad_image,
                                  allow_outside_root=data_cfg.allow_outside_root)
        task_map = class_map_for(Task.BINARY, manifest.classes, normal_class, positive)
        cells = _task_from_manifest(manifest, data_cfg, Task.BINARY, task_map, positive, f"cells:{cells_path}",
                                    data_cfg.cell_size, progress)
        return replace(cells, cell_source=f"cells:{cells_path}")
    csv_path, sources = derive_cell_crops(data_cfg, normal_class, cache_root, segmenter)
    manifest = build_manifest(csv_path, "csv", on_bad_image="fail")
    cells = _task_from_manifest(manifest, data_cfg, Task.BINARY, None, positive,
                                f"crops-of-development-smears:{csv_path}", data_cfg.cell_size, progress)
    masks = smear_masks(data_cfg)
    return replace(cells, trained_from=sources, cell_source=f"masks:{masks}" if masks else segmenter.name)


def smear_masks(data_cfg: DataConfig) -> str | Path | None:
    """The smears' segmentations: --masks, else the bundled sample's own; None: stage 2 must segment them."""
    return data_cfg.masks or default_masks_for(data_cfg.path)


def derive_cell_crops(data_cfg: DataConfig, normal_class: str | None, cache_root: Path,
                      segmenter: CellSegmenter | None = None) -> tuple[Path, frozenset[str]]:
    """Crop single cells from the smear data's development part with its masks, or (none) with `segmenter`'s
    (cached by content: same data, masks or segmenter, split seed and size give the same crops). Returns the
    crops' CSV and the digests of the smears they came from."""
    from mtl_suite.imaging.cells import write_cell_dataset  # imaging is only needed on this path

    masks = smear_masks(data_cfg)
    if masks is None and segmenter is None:
        raise UserError("stage 2 needs single cells: pass --cells PATH (a single-cell dataset) or --masks PATH "
                        "(segmentations of the smear images, same relative file names)")
    manifest = smear_manifest(data_cfg, masks)
    class_map = class_map_for(Task.BINARY, manifest.classes, normal_class, POSITIVE_NAME[StageData.CELLS])
    split = make_split(manifest, data_cfg.folds, data_cfg.test_fraction, data_cfg.seed)  # = stage 3's split
    development = [e for e, role in zip(split.entries, split.roles)
                   if role != TEST and (e.mask or masks is None)]  # segmenting: every development field
    if not development:
        raise UserError(f"no masks found under {masks} for the images of {resolve_data_path(data_cfg.path)} "
                        "(expected the same relative names)" if masks else
                        f"no development images in {resolve_data_path(data_cfg.path)} to cut cells from")
    source = Path(masks).resolve() if masks else f"segmenter:{segmenter.key}"
    # grouped by name, a crop takes its field's group, so stage 2's folds keep the cells of one smear together too;
    # otherwise its field alone, as before (the crops' groups, and so stage 2's split, unchanged)
    groups = [e.group for e in development] if parse_grouping(data_cfg.group_by).active else None
    key = sha256_text(f"{manifest.digest}|{source}|{data_cfg.seed}|{data_cfg.test_fraction}|"
                      f"{data_cfg.cell_size}|{sorted(class_map.items())}")[:16]
    out_dir = cache_root / "cells" / key
    csv_path = out_dir / "cells.csv"
    if not csv_path.is_file():
        # a segmenter's masks are computed per field as the fields are read, never all held at once
        write_cell_dataset([e.path for e in development],
                           [e.mask for e in development] if masks else [segmenter.masks] * len(development),
                           [e.label for e in development], ["development"] * len(development), out_dir,
                           size=data_cfg.cell_size, label_policy=class_map.__getitem__, groups=groups)
    return csv_path, frozenset(e.sha256 for e in development)


def _task_from_manifest(manifest: Manifest, data_cfg: DataConfig, task: Task | str, task_map: dict[str, str] | None,
                        positive: str, description: str, size: int,
                        progress: Callable[[int], None] | None) -> TaskData:
    if len(manifest.classes) < 2:
        raise UserError(f"{description}: only one class ({', '.join(manifest.classes)}); need at least 2")
    class_names = ordered_classes(manifest, task, positive)
    split = make_split(manifest, data_cfg.folds, data_cfg.test_fraction, data_cfg.seed)
    index = {name: i for i, name in enumerate(class_names)}
    task_label = task_map.__getitem__ if task_map else (lambda label: label)
    labels = np.array([index[task_label(e.label)] for e in split.entries], dtype=np.int64)
    images = cached_image_array([e.path for e in split.entries], [e.sha256 for e in split.entries], size,
                                image_store(), progress=progress)
    trained = frozenset(split.entries[i].sha256 for i in split.development_indices)
    return TaskData(manifest, split, class_names, ArrayData(images, labels), description, size, trained)


@dataclass(frozen=True)
class TaskRequest:
    """What a stage's task data depends on, beside the data configuration."""

    data: DataConfig
    task: Task | str = Task.MULTICLASS
    normal_class: str | None = None
    cells: str | None = None  # stage 2: a single-cell dataset instead of crops of the smears
    source: str | None = None  # stage 1: an optional source dataset to fine-tune on
    segmenter: CellSegmenter | None = None  # stage 2, smears without masks: what cuts their cells


def _smears(request: TaskRequest, cache_root: Path) -> TaskData | None:
    return smear_task(request.data, request.task, request.normal_class)


def _cells(request: TaskRequest, cache_root: Path) -> TaskData | None:
    return cell_task(request.data, request.cells, request.normal_class, cache_root, segmenter=request.segmenter)


def _source(request: TaskRequest, cache_root: Path) -> TaskData | None:
    """Stage 1 fine-tunes on a source dataset only when one is given, on one train/validation split."""
    if not request.source:
        return None
    source_cfg = replace(request.data, path=request.source, folds=1, test_fraction=0.0, masks=None,
                         group_by=NO_GROUPING)  # --group-by describes the smears' names, not the source's
    return smear_task(source_cfg, Task.MULTICLASS, None)


TASK_LOADERS: dict[StageData, Callable[[TaskRequest, Path], TaskData | None]] = {
    StageData.SMEARS: _smears, StageData.CELLS: _cells, StageData.SOURCE: _source,
}


def load_task_data(plan: StagePlan, request: TaskRequest, cache_root: Path) -> TaskData | None:
    """Images, labels and split of the stage's task (None for stage 1 without a source dataset)."""
    return TASK_LOADERS[plan.data](request, cache_root)


def _smears_held_out(request: TaskRequest) -> HeldOut:
    return _held_out(smear_split(request.data), f"smears:{resolve_data_path(request.data.path)}")


def _cells_held_out(request: TaskRequest) -> HeldOut:
    """Stage 2 keeps its own test cells from training and, for crops, must not start from weights that saw the
    smears' test part (its stage 3 is scored there): the smears' held-out part is what the chain protects."""
    if not request.cells:
        return _smears_held_out(request)
    manifest = build_manifest(request.cells, "auto", on_bad_image=request.data.on_bad_image,
                              allow_outside_root=request.data.allow_outside_root)
    split = make_split(manifest, request.data.folds, request.data.test_fraction, request.data.seed)
    return _held_out(split, f"cells:{request.cells}")


def _held_out(split: Split, data: str) -> HeldOut:
    return HeldOut(frozenset(split.entries[i].sha256 for i in split.test_indices), split.manifest_digest,
                   split.seed, data)


# Stage 1 starts from ImageNet (or a file): it has no parent whose training could leak into it.
HELD_OUT: dict[StageData, Callable[[TaskRequest], HeldOut | None]] = {
    StageData.SMEARS: _smears_held_out, StageData.CELLS: _cells_held_out, StageData.SOURCE: lambda request: None,
}


def held_out_images(plan: StagePlan, request: TaskRequest) -> HeldOut | None:
    """The images a stage holds out, computed from the split alone (no pixels loaded): what its parent's weights
    must not have seen."""
    return HELD_OUT[plan.data](request)


def describe(plan: StagePlan, task_data: TaskData) -> str:
    return (f"{plan.name}: {len(task_data.split.entries)} images ({task_data.description}), classes "
            f"{', '.join(task_data.class_names)}; {len(task_data.split.test_indices)} held out for the final test, "
            f"{task_data.split.folds} fold(s) over the rest")

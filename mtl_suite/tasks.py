"""A stage's task data: the images, labels and split it trains on (smear fields, single cells, or a source
dataset), assembled from data/ and imaging/. Crops for stage 2 come from the smears' development part only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mtl_suite.cache import image_store
from mtl_suite.catalog import StageData, StagePlan, Task
from mtl_suite.config import DataConfig
from mtl_suite.data import default_masks_for, resolve_data_path
from mtl_suite.data.manifest import Manifest, build_manifest
from mtl_suite.data.arrays import ArrayData
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


def class_map_for(task: Task | str, classes: list[str], normal_class: str | None,
                  positive: str) -> dict[str, str] | None:
    """Multiclass keeps the classes; binary maps the normal class to 'normal' and every other class to `positive`."""
    if task not in list(Task):
        raise UserError(f"unknown task {task!r}. Expected one of: {', '.join(Task)}")
    if len(classes) < 2:
        raise UserError(f"the data has only one class ({', '.join(classes)}); a classifier needs at least 2")
    if task == Task.MULTICLASS:
        return None
    if normal_class is None:
        found = [c for c in classes if c.lower() in NORMAL_NAMES]
        if len(found) != 1:
            raise UserError(
                f"binary task on classes {', '.join(classes)}: cannot tell which class is normal. "
                f"Pass --normal-class NAME (one of {', '.join(classes)})"
            )
        normal_class = found[0]
    if normal_class not in classes:
        raise UserError(f"--normal-class {normal_class!r} is not a class of the data. Expected one of: "
                        f"{', '.join(classes)}")
    return {c: ("normal" if c == normal_class else positive) for c in classes}


def ordered_classes(manifest: Manifest, task: Task | str, positive: str) -> list[str]:
    """Binary: ['normal', positive] so index 1 is the positive class (the paper's binary precision/recall)."""
    return ["normal", positive] if task == Task.BINARY else manifest.classes


def smear_task(data_cfg: DataConfig, task: Task | str, normal_class: str | None,
               progress: Callable[[int], None] | None = None) -> TaskData:
    """The split is stratified on the data's own classes whatever the task, so binary and multiclass runs (and
    stage 2's crops) share one outer test part."""
    root = resolve_data_path(data_cfg.path)
    manifest = build_manifest(root, data_cfg.layout, duplicates=data_cfg.duplicates,
                              on_bad_image=data_cfg.on_bad_image, class_map=data_cfg.class_map,
                              allow_outside_root=data_cfg.allow_outside_root)
    task_map = class_map_for(task, manifest.classes, normal_class, POSITIVE_NAME[StageData.SMEARS])
    return _task_from_manifest(manifest, data_cfg, task, task_map, POSITIVE_NAME[StageData.SMEARS], f"smears:{root}",
                               data_cfg.image_size, progress)


def cell_task(data_cfg: DataConfig, cells_path: str | None, normal_class: str | None, cache_root: Path,
              progress: Callable[[int], None] | None = None) -> TaskData:
    """Single cells for stage 2: a given single-cell dataset (ALL-IDB2, C-NMC, crops CSV), or crops cut from the
    smear data's development images with its masks. Crops never come from the smears' outer-test images."""
    positive = POSITIVE_NAME[StageData.CELLS]
    if cells_path:
        manifest = build_manifest(cells_path, "auto", on_bad_image=data_cfg.on_bad_image,
                                  allow_outside_root=data_cfg.allow_outside_root)
        task_map = class_map_for(Task.BINARY, manifest.classes, normal_class, positive)
        return _task_from_manifest(manifest, data_cfg, Task.BINARY, task_map, positive, f"cells:{cells_path}",
                                   data_cfg.cell_size, progress)
    csv_path = derive_cell_crops(data_cfg, normal_class, cache_root)
    manifest = build_manifest(csv_path, "csv", on_bad_image="fail")
    return _task_from_manifest(manifest, data_cfg, Task.BINARY, None, positive,
                               f"crops-of-development-smears:{csv_path}", data_cfg.cell_size, progress)


def derive_cell_crops(data_cfg: DataConfig, normal_class: str | None, cache_root: Path) -> Path:
    """Crop single cells from the smear data's development part (cached by content: same data, masks, split
    seed and size give the same crops)."""
    from mtl_suite.imaging.cells import write_cell_dataset  # imaging is only needed on this path

    masks = data_cfg.masks or default_masks_for(data_cfg.path)
    if masks is None:
        raise UserError("stage 2 needs single cells: pass --cells PATH (a single-cell dataset) or --masks PATH "
                        "(segmentations of the smear images, same relative file names)")
    root = resolve_data_path(data_cfg.path)
    manifest = build_manifest(root, data_cfg.layout, masks=masks, duplicates=data_cfg.duplicates,
                              on_bad_image=data_cfg.on_bad_image, class_map=data_cfg.class_map,
                              allow_outside_root=data_cfg.allow_outside_root)
    class_map = class_map_for(Task.BINARY, manifest.classes, normal_class, POSITIVE_NAME[StageData.CELLS])
    split = make_split(manifest, data_cfg.folds, data_cfg.test_fraction, data_cfg.seed)  # = stage 3's split
    development = [e for e, role in zip(split.entries, split.roles) if role != TEST and e.mask]
    if not development:
        raise UserError(f"no masks found under {masks} for the images of {root} (expected the same relative names)")
    key = sha256_text(f"{manifest.digest}|{Path(masks).resolve()}|{data_cfg.seed}|{data_cfg.test_fraction}|"
                      f"{data_cfg.cell_size}|{sorted(class_map.items())}")[:16]
    out_dir = cache_root / "cells" / key
    csv_path = out_dir / "cells.csv"
    if not csv_path.is_file():
        write_cell_dataset([e.path for e in development], [e.mask for e in development],
                           [e.label for e in development], ["development"] * len(development), out_dir,
                           size=data_cfg.cell_size, label_policy=class_map.__getitem__)
    return csv_path


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
    return TaskData(manifest, split, class_names, ArrayData(images, labels), description, size)


@dataclass(frozen=True)
class TaskRequest:
    """What a stage's task data depends on, beside the data configuration."""

    data: DataConfig
    task: Task | str = Task.MULTICLASS
    normal_class: str | None = None
    cells: str | None = None  # stage 2: a single-cell dataset instead of crops of the smears
    source: str | None = None  # stage 1: an optional source dataset to fine-tune on


def _smears(request: TaskRequest, cache_root: Path) -> TaskData | None:
    return smear_task(request.data, request.task, request.normal_class)


def _cells(request: TaskRequest, cache_root: Path) -> TaskData | None:
    return cell_task(request.data, request.cells, request.normal_class, cache_root)


def _source(request: TaskRequest, cache_root: Path) -> TaskData | None:
    """Stage 1 fine-tunes on a source dataset only when one is given, on one train/validation split."""
    if not request.source:
        return None
    source_cfg = replace(request.data, path=request.source, folds=1, test_fraction=0.0, masks=None)
    return smear_task(source_cfg, Task.MULTICLASS, None)


TASK_LOADERS: dict[StageData, Callable[[TaskRequest, Path], TaskData | None]] = {
    StageData.SMEARS: _smears, StageData.CELLS: _cells, StageData.SOURCE: _source,
}


def load_task_data(plan: StagePlan, request: TaskRequest, cache_root: Path) -> TaskData | None:
    """Images, labels and split of the stage's task (None for stage 1 without a source dataset)."""
    return TASK_LOADERS[plan.data](request, cache_root)


def describe(plan: StagePlan, task_data: TaskData) -> str:
    return (f"{plan.name}: {len(task_data.split.entries)} images ({task_data.description}), classes "
            f"{', '.join(task_data.class_names)}; {len(task_data.split.test_indices)} held out for the final test, "
            f"{task_data.split.folds} fold(s) over the rest")

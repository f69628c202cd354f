"""The three transfer stages and the classical baseline, as plans; and the pure (untracked) work each needs:
task data, initial backbone weights, and the per-fold model factory.

  stage1     ImageNet W0 -> W1: backbone + GAP/softmax head (optionally fine-tuned on a source dataset)
  stage2     W1 -> W2: single cells, blast vs normal, dense + dropout head, sigmoid
  stage3     W2 -> W3: multi-cell smear fields, binary (normal vs leukemia) or multiclass
  classical  ImageNet -> the stage-3 task directly, same head and budget: the CTL baseline
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mtl_suite.cache import image_store
from mtl_suite.config import DataConfig, TrainConfig
from mtl_suite.data import default_masks_for, resolve_data_path
from mtl_suite.data.manifest import Manifest, build_manifest
from mtl_suite.data.pipeline import cached_image_array
from mtl_suite.data.splits import TEST, Split, make_split
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text
from mtl_suite.training.fit import ArrayData


@dataclass(frozen=True)
class StagePlan:
    name: str
    previous: str | None  # the stage whose backbone this one starts from; None: ImageNet
    head: str
    data: str  # source | cells | smears
    description: str


STAGES: dict[str, StagePlan] = {
    plan.name: plan
    for plan in [
        StagePlan("stage1", None, "gap_softmax", "source", "ImageNet weights W0 -> W1"),
        StagePlan("stage2", "stage1", "dense_dropout", "cells", "single cells, blast vs normal: W1 -> W2"),
        StagePlan("stage3", "stage2", "dense_dropout", "smears", "multi-cell smear fields: W2 -> W3"),
        StagePlan("classical", None, "dense_dropout", "smears", "classical TL: ImageNet -> smear task (baseline)"),
    ]
}
TASKS = ("binary", "multiclass")
NORMAL_NAMES = ("normal", "benign", "hem", "healthy", "0")
POSITIVE_NAME = {"smears": "leukemia", "cells": "blast", "source": "positive"}


def get_stage(name: str) -> StagePlan:
    try:
        return STAGES[name]
    except KeyError:
        raise UserError(f"unknown stage {name!r}. Expected one of: {', '.join(STAGES)}") from None


@dataclass
class TaskData:
    manifest: Manifest
    split: Split
    class_names: list[str]
    data: ArrayData
    description: str  # what the images are and where they came from, for the run's tags
    image_size: int


def class_map_for(task: str, classes: list[str], normal_class: str | None, positive: str) -> dict[str, str] | None:
    """Multiclass keeps the classes; binary maps the normal class to 'normal' and every other class to `positive`."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}. Expected one of: {', '.join(TASKS)}")
    if len(classes) < 2:
        raise UserError(f"the data has only one class ({', '.join(classes)}); a classifier needs at least 2")
    if task == "multiclass":
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


def ordered_classes(manifest: Manifest, task: str, positive: str) -> list[str]:
    """Binary: ['normal', positive] so index 1 is the positive class (the paper's binary precision/recall)."""
    return ["normal", positive] if task == "binary" else manifest.classes


def smear_task(data_cfg: DataConfig, task: str, normal_class: str | None,
               progress: Callable[[int], None] | None = None) -> TaskData:
    """The split is stratified on the data's own classes whatever the task, so binary and multiclass runs (and
    stage 2's crops) share one outer test part."""
    root = resolve_data_path(data_cfg.path)
    manifest = build_manifest(root, data_cfg.layout, duplicates=data_cfg.duplicates,
                              on_bad_image=data_cfg.on_bad_image, class_map=data_cfg.class_map,
                              allow_outside_root=data_cfg.allow_outside_root)
    task_map = class_map_for(task, manifest.classes, normal_class, POSITIVE_NAME["smears"])
    return _task_from_manifest(manifest, data_cfg, task, task_map, POSITIVE_NAME["smears"], f"smears:{root}",
                               data_cfg.image_size, progress)


def cell_task(data_cfg: DataConfig, cells_path: str | None, normal_class: str | None, cache_root: Path,
              progress: Callable[[int], None] | None = None) -> TaskData:
    """Single cells for stage 2: a given single-cell dataset (ALL-IDB2, C-NMC, crops CSV), or crops cut from the
    smear data's development images with its masks. Crops never come from the smears' outer-test images."""
    positive = POSITIVE_NAME["cells"]
    if cells_path:
        manifest = build_manifest(cells_path, "auto", on_bad_image=data_cfg.on_bad_image,
                                  allow_outside_root=data_cfg.allow_outside_root)
        task_map = class_map_for("binary", manifest.classes, normal_class, positive)
        return _task_from_manifest(manifest, data_cfg, "binary", task_map, positive, f"cells:{cells_path}",
                                   data_cfg.cell_size, progress)
    csv_path = derive_cell_crops(data_cfg, normal_class, cache_root)
    manifest = build_manifest(csv_path, "csv", on_bad_image="fail")
    return _task_from_manifest(manifest, data_cfg, "binary", None, positive,
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
    class_map = class_map_for("binary", manifest.classes, normal_class, POSITIVE_NAME["cells"])
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


def _task_from_manifest(manifest: Manifest, data_cfg: DataConfig, task: str, task_map: dict[str, str] | None,
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


def model_factory(backbone_name: str, image_size: int, initial_weights: Path, head: str, n_classes: int,
                  cfg: TrainConfig):
    """A factory that builds the classifier with the stage's initial backbone weights (W_{k-1}), the same for
    every fold."""
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.models.transfer import load_backbone

    def build():
        backbone, _ = build_backbone(backbone_name, image_size, "none", cfg.precision)
        load_backbone(backbone, initial_weights)
        return build_classifier(backbone, head, n_classes, cfg.dense_units, cfg.dropout, cfg.precision), backbone

    return build


def imagenet_backbone_file(backbone_name: str, image_size: int, weights: str, out_path: Path,
                           metadata: dict, seed: int = 0) -> tuple[Path, dict]:
    """Build the backbone with its ImageNet (or file, or no) weights once and save it as the W0/W1 archive.
    `seed` fixes the random initial weights of `weights="none"`, so a rerun (or a resumed run) starts the same."""
    import keras

    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.transfer import save_backbone

    keras.utils.set_random_seed(seed)
    backbone, choice = build_backbone(backbone_name, image_size, weights)
    provenance = choice.as_tags()
    save_backbone(backbone, out_path, {**metadata, "backbone": backbone_name, **provenance})
    return out_path, provenance

"""Single-cell crops from a white-blood-cell mask (stage 2 trains on single cells, like ALL-IDB2 crops cut from
ALL-IDB1 fields). A crop keeps its parent image as its group, so splits never separate cells of one field."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from mtl_suite.data.images import read_rgb
from mtl_suite.io_utils import atomic_path


@dataclass(frozen=True)
class CellBox:
    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    cx: float
    cy: float


def mask_from_segmented(segmented: np.ndarray, threshold: int = 30, open_px: int = 3, close_px: int = 5) -> np.ndarray:
    """Binary mask from a 'segmented on black background' image: non-black pixels, with small specks opened
    away and holes in nuclei closed."""
    mask = (segmented.max(axis=2) > threshold).astype(np.uint8)
    if open_px > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px,) * 2))
    if close_px > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px,) * 2))
    return mask.astype(bool)


def find_cells(mask: np.ndarray, min_area_fraction: float = 0.002, drop_border: bool = False) -> list[CellBox]:
    """Connected components of a mask, largest first; components smaller than `min_area_fraction` of the image
    are noise (debris, platelets)."""
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    min_area = min_area_fraction * height * width
    boxes = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        if drop_border and (x == 0 or y == 0 or x + w >= width or y + h >= height):
            continue
        boxes.append(CellBox(x, y, x + w, y + h, area, float(centroids[i][0]), float(centroids[i][1])))
    return sorted(boxes, key=lambda b: -b.area)


def crop_cell(image: np.ndarray, box: CellBox, size: int, margin: float = 0.25) -> np.ndarray:
    """A square crop centred on the cell, `margin` of its size added on each side, padded with white where it
    leaves the image (white is the smear background), resized to size x size."""
    side = int(round(max(box.x1 - box.x0, box.y1 - box.y0) * (1 + 2 * margin)))
    side = max(side, 8)
    x0 = int(round(box.cx - side / 2))
    y0 = int(round(box.cy - side / 2))
    padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def write_cell_dataset(
    images: Sequence[str],
    masks: Sequence[np.ndarray | str | Callable[[np.ndarray], np.ndarray]],
    labels: Sequence[str],
    splits: Sequence[str],
    out_dir: str | Path,
    size: int = 96,
    max_cells_per_image: int = 8,
    min_area_fraction: float = 0.002,
    drop_border: bool = False,
    label_policy: Callable[[str], str] = lambda label: label,
    progress: Callable[[int], None] | None = None,
    groups: Sequence[str] | None = None,
) -> Path:
    """Crop every cell of every image into out_dir/<label>/<parent>_cellNN.png and write cells.csv with
    path, label, group (the parent image, or with `groups` the parent's group: fields of one smear grouped by name),
    split (the parent's split role) and parent_label.
    Returns the CSV path. Mask entries may be arrays, paths to 'segmented on black' images, or functions of the
    decoded image that return its mask (a segmenter: masks made one image at a time, never all held at once)."""
    out_dir = Path(out_dir)
    rows = []
    parent_groups = [f"group:{g}" for g in groups] if groups is not None else [
        f"parent:{Path(p).name}" for p in images]
    for i, (image_path, mask, label, split, group) in enumerate(zip(images, masks, labels, splits, parent_groups,
                                                                     strict=True)):
        image = read_rgb(image_path)
        if isinstance(mask, (str, Path)):
            mask_array = mask_from_segmented(read_rgb(mask))
        else:
            mask_array = mask(image) if callable(mask) else mask
        if mask_array.shape != image.shape[:2]:
            mask_array = cv2.resize(mask_array.astype(np.uint8), image.shape[1::-1], cv2.INTER_NEAREST).astype(bool)
        cell_label = label_policy(label)
        for k, box in enumerate(find_cells(mask_array, min_area_fraction, drop_border)[:max_cells_per_image]):
            rel = Path(cell_label) / f"{Path(image_path).stem}_cell{k:02d}.png"
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            ok, encoded = cv2.imencode(".png", cv2.cvtColor(crop_cell(image, box, size), cv2.COLOR_RGB2BGR))
            with atomic_path(target) as tmp:
                tmp.write_bytes(encoded.tobytes())
            rows.append({"path": str(rel), "label": cell_label, "group": group,
                         "split": split, "parent": str(image_path), "parent_label": label})
        if progress:
            progress(i + 1)
    csv_path = out_dir / "cells.csv"
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group", "split", "parent", "parent_label"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path

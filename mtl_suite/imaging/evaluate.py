"""Segmentation quality: Dice and IoU per image, and WBC localisation against Pascal-VOC boxes (BCCD): a box
counts as found when a predicted connected component's bounding box overlaps it with IoU >= 0.5; components
that find no box are false components."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl_suite.errors import UserError
from mtl_suite.imaging.cells import find_cells


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Hard Dice and IoU of two boolean masks; both empty counts as perfect agreement."""
    pred, true = pred.astype(bool), true.astype(bool)
    intersection = np.logical_and(pred, true).sum()
    total = pred.sum() + true.sum()
    union = np.logical_or(pred, true).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / union)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1


def read_voc_boxes(xml_path: str | Path, name: str = "WBC") -> tuple[str, list[Box]]:
    """(image file name, boxes of objects called `name`) from a Pascal-VOC annotation file."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UserError(f"{xml_path}: not a Pascal-VOC annotation ({exc})") from None
    filename = (root.findtext("filename") or Path(xml_path).with_suffix(".jpg").name).strip()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != name:
            continue
        box = obj.find("bndbox")
        boxes.append(tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return filename, boxes


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class BoxMatch:
    boxes: int
    found: int
    components: int
    false_components: int


def match_boxes(mask: np.ndarray, boxes: list[Box], min_area_fraction: float = 0.002,
                iou_threshold: float = 0.5) -> BoxMatch:
    cells = find_cells(mask, min_area_fraction)
    comps: list[Box] = [(c.x0, c.y0, c.x1, c.y1) for c in cells]
    ious = np.array([[box_iou(c, b) for b in boxes] for c in comps]).reshape(len(comps), len(boxes))
    hit = ious >= iou_threshold
    return BoxMatch(len(boxes), int(hit.any(axis=0).sum()), len(comps), int((~hit.any(axis=1)).sum()))


def summarise_matches(matches: list[BoxMatch]) -> dict[str, float]:
    boxes = sum(m.boxes for m in matches)
    return {
        "wbc_recall": sum(m.found for m in matches) / boxes if boxes else float("nan"),
        "false_components_per_image": sum(m.false_components for m in matches) / max(1, len(matches)),
        "components_per_image": sum(m.components for m in matches) / max(1, len(matches)),
        "boxes": float(boxes),
        "images": float(len(matches)),
    }


def voc_pairs(root: str | Path) -> list[tuple[Path, list[Box]]]:
    """(image path, WBC boxes) for every annotation of a VOC folder (JPEGImages/ + Annotations/)."""
    root = Path(root)
    annotations = sorted((root / "Annotations").glob("*.xml"))
    if not annotations:
        raise UserError(f"{root}: no Pascal-VOC annotations (expected Annotations/*.xml and JPEGImages/)")
    pairs = []
    for xml_path in annotations:
        filename, boxes = read_voc_boxes(xml_path)
        image = root / "JPEGImages" / filename
        if not image.is_file():
            image = root / "JPEGImages" / (xml_path.stem + ".jpg")
        if image.is_file():
            pairs.append((image, boxes))
    if not pairs:
        raise UserError(f"{root}: no annotation names an image under JPEGImages/")
    return pairs


def overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """Contours on the image: reference mask in green, prediction in magenta."""
    import cv2

    out = image.copy()
    for mask, colour in ((truth, (0, 200, 0)), (pred, (255, 0, 255))):
        if mask is None:
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out

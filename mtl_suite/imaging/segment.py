"""Masks for whole fields from either method, at the field's own resolution: the U-Net (which sees the field at
its training size, the geometry it learnt) and the paper's ROI preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mtl_suite.data.images import read_rgb
from mtl_suite.imaging.evaluate import BoxMatch, match_boxes, summarise_matches, voc_pairs
from mtl_suite.imaging.masks import resize_image, resize_mask
from mtl_suite.imaging.roi import RoiParams, clean_mask, roi_mask

PREDICT_BATCH = 16


def unet_masks(model, images: Sequence[np.ndarray], size: int, threshold: float = 0.5) -> list[np.ndarray]:
    """Full-resolution boolean masks for fields of any size and aspect."""
    from mtl_suite.imaging.unet import predict_probabilities

    out = []
    for start in range(0, len(images), PREDICT_BATCH):
        chunk = images[start:start + PREDICT_BATCH]
        probs = predict_probabilities(model, np.stack([resize_image(i, size) for i in chunk]))
        out += [resize_mask(p > threshold, i.shape[:2]) for p, i in zip(probs, chunk)]
    return out


def unet_mask(model, image: np.ndarray, size: int, threshold: float = 0.5) -> np.ndarray:
    """One field's full-resolution mask, as unet_masks gives it; the model is called directly, since
    `model.predict`'s set-up costs more than one small field (for masks made one field at a time)."""
    from mtl_suite.imaging.unet import pad_to_multiple, unet_depth

    padded, (height, width) = pad_to_multiple(resize_image(image, size)[None], 2 ** unet_depth(model))
    probs = np.asarray(model(padded, training=False))[0, :height, :width, 0]
    return resize_mask(probs > threshold, image.shape[:2])


def roi_masks(images: Sequence[np.ndarray], params: RoiParams = RoiParams()) -> list[np.ndarray]:
    return [clean_mask(roi_mask(image, params)) for image in images]


def box_recall(images: Sequence[Path], boxes: Sequence[list], mask_fn: Callable[[list[np.ndarray]], list],
               min_area_fraction: float, chunk: int = 32) -> list[BoxMatch]:
    """Box matches per image; images are decoded in chunks so a large VOC set does not sit in memory."""
    matches = []
    for start in range(0, len(images), chunk):
        decoded = [read_rgb(p) for p in images[start:start + chunk]]
        for mask, image_boxes in zip(mask_fn(decoded), boxes[start:start + chunk]):
            matches.append(match_boxes(mask, image_boxes, min_area_fraction))
    return matches


def box_recall_both(model, size: int, roi: RoiParams, voc_root: str | Path, min_area_fraction: float,
                    limit: int | None = None) -> dict[str, dict[str, float]]:
    """WBC box recall and false components per image for the U-Net and the ROI method on a VOC folder."""
    pairs = voc_pairs(voc_root)[:limit]
    paths, boxes = [p for p, _ in pairs], [b for _, b in pairs]
    return {
        "unet": summarise_matches(box_recall(paths, boxes, lambda ims: unet_masks(model, ims, size),
                                             min_area_fraction)),
        "roi": summarise_matches(box_recall(paths, boxes, lambda ims: roi_masks(ims, roi), min_area_fraction)),
    }

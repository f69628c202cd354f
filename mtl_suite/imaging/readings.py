"""Ways to read a smear field at the model's input size: as training reads it (the whole field resized), or zoomed out
so that its cells appear smaller, for fields taken at a higher magnification than the training images.

A zoomed-out reading keeps the aspect ratio: the field is shrunk `zoom` times below the plain reading's scale (the
geometric mean of its two axes' scales) and mirrored to fill the square, so that cells cross no hard edge and the
field looks like a larger one at the training lab's magnification. Which reading a model uses for an image is
decided by its out-of-distribution detector (training/reliability.py), never by the class it would give.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mtl_suite.data.images import resize

PLAIN = 1.0
# How many times smaller than in the plain reading a zoomed-out reading shows the field: up to a magnification four
# times the training lab's (another lab's fields show cells 2-3 times larger than Aria's at the same input size,
# ../shared/data/README.md).
ZOOMS = (1.5, 2.0, 3.0, 4.0)


def reading(image: np.ndarray, size: int, zoom: float = PLAIN) -> np.ndarray:
    """(size, size, 3) uint8: the plain reading (zoom 1: the field resized, as in training) or zoomed out."""
    if zoom == PLAIN:
        return resize(image, size)
    if zoom < PLAIN:
        raise ValueError(f"zoom must be 1 (plain) or more (zoomed out). Received: {zoom}")
    height, width = image.shape[:2]
    scale = size / math.sqrt(height * width) / zoom
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return _fill(small, size)


def _fill(image: np.ndarray, size: int) -> np.ndarray:
    """Mirror the image outwards until it covers size x size (centred), or crop its centre where it is larger."""
    height, width = image.shape[:2]
    top, left = max(0, size - height) // 2, max(0, size - width) // 2
    padded = np.pad(image, ((top, max(0, size - height) - top), (left, max(0, size - width) - left), (0, 0)),
                    mode="symmetric")
    y, x = (padded.shape[0] - size) // 2, (padded.shape[1] - size) // 2
    return np.ascontiguousarray(padded[y:y + size, x:x + size])


def magnified(image: np.ndarray, magnification: float) -> np.ndarray:
    """The field as a camera `magnification` times stronger would show it: its centre, 1/magnification of each side,
    resized back to the field's size. A development-side stand-in for another lab's higher-magnification fields."""
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height / magnification)), max(1, round(width / magnification))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return cv2.resize(image[top:top + crop_h, left:left + crop_w], (width, height), interpolation=cv2.INTER_CUBIC)

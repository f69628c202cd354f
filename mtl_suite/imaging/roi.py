"""The paper's ROI preprocessing (section II-B): per-channel offsets (red 88, green 41, blue 20, saturating),
a monochrome filter, and a threshold t = 98 that separates the white blood cells from the rest.

Which way the offsets go. The paper says the offsets are "added". Taken literally (x + offset, then luma < t),
no cell of the 96 bundled Aria fields nor of the 364 BCCD fields falls below 98 (2,213 of about 117 million
pixels do, mostly the black scale-bar text): adding brightens every pixel, and nuclei end near grey 190. Subtracting the same offsets works: it darkens red most,
and WBC nuclei are the pixels with little red (purple: low red, high blue), so they fall below 98 while the
pinkish-grey red cells and the white background stay above it. That is the only reading of the four numbers
under which the method finds cells, so it is the default (`mode="subtract"`); the literal reading stays
available as `mode="add"` (see benchmarks/RESULTS.md for both on real data).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mtl_suite.errors import UserError

OFFSET_MODES = ("subtract", "add")
# ITU-R BT.601 luma, what OpenCV's and PIL's grayscale conversions use: the common meaning of "monochrome".
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class RoiParams:
    red: int = 88
    green: int = 41
    blue: int = 20
    threshold: int = 98
    mode: str = "subtract"

    def __post_init__(self) -> None:
        if self.mode not in OFFSET_MODES:
            raise UserError(f"unknown ROI offset mode {self.mode!r}. Expected one of: {', '.join(OFFSET_MODES)}")
        for name in ("red", "green", "blue"):
            value = getattr(self, name)
            if not -255 <= value <= 255:
                raise UserError(f"ROI {name} offset must be in [-255, 255]. Received: {value}")
        if not 0 <= self.threshold <= 256:
            raise UserError(f"ROI threshold must be in [0, 256]. Received: {self.threshold}")

    @property
    def signed_offsets(self) -> np.ndarray:
        sign = -1 if self.mode == "subtract" else 1
        return sign * np.array([self.red, self.green, self.blue], dtype=np.int16)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"expected an RGB uint8 image of shape (H, W, 3). Received: {image.dtype} {image.shape}")


def monochrome(image: np.ndarray, params: RoiParams = RoiParams()) -> np.ndarray:
    """Offsets with saturation at 0 and 255, then luma: a (H, W) uint8 image."""
    _check_rgb(image)
    shifted = np.clip(image.astype(np.int16) + params.signed_offsets, 0, 255).astype(np.uint8)
    return cv2.cvtColor(shifted, cv2.COLOR_RGB2GRAY)


def roi_mask(image: np.ndarray, params: RoiParams = RoiParams()) -> np.ndarray:
    """True where the monochrome value is below the threshold: the dark (stained) WBC pixels."""
    return monochrome(image, params) < params.threshold


def apply_mask(image: np.ndarray, mask: np.ndarray, background: int = 0) -> np.ndarray:
    """Pixels outside the mask set to `background` (the paper shows cells on black)."""
    if mask.shape != image.shape[:2]:
        raise UserError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    out = np.full_like(image, background)
    out[mask] = image[mask]
    return out


def roi(image: np.ndarray, params: RoiParams = RoiParams()) -> tuple[np.ndarray, np.ndarray]:
    """(ROI mask, masked image)."""
    mask = roi_mask(image, params)
    return mask, apply_mask(image, mask)


def clean_mask(mask: np.ndarray, open_px: int = 3, close_px: int = 7, fill_holes: bool = True) -> np.ndarray:
    """Morphological clean-up of a thresholded mask: opening removes specks (platelet fragments, stain dust),
    closing and hole filling join a nucleus's lobes, so one cell becomes one connected component."""
    out = mask.astype(np.uint8)
    if open_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(open_px))
    if close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(close_px))
    if fill_holes:
        out = _fill_holes(out)
    return out.astype(bool)


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes are background regions not connected to the image border."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def isolate_wbc(image: np.ndarray, mask: np.ndarray, blue_margin: int = 0) -> np.ndarray:
    """The paper's post-processing: inside the segmented region keep the pixels whose blue channel dominates
    (Wright/Giemsa-stained WBCs are blue-purple, red cells are not), on a black background."""
    _check_rgb(image)
    rgb = image.astype(np.int16)
    blue = (rgb[..., 2] > rgb[..., 0] + blue_margin) & (rgb[..., 2] > rgb[..., 1] + blue_margin)
    return apply_mask(image, mask.astype(bool) & blue)


def contact_sheet(rows: list[list[np.ndarray]], tile: int = 160, gap: int = 4) -> np.ndarray:
    """A white-gapped grid of equally sized tiles; masks (2-D, bool) are drawn white on black."""
    columns = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (tile + gap) + gap, columns * (tile + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            y, x = gap + i * (tile + gap), gap + j * (tile + gap)
            sheet[y:y + tile, x:x + tile] = _tile(item, tile)
    return sheet


def _tile(item: np.ndarray, tile: int) -> np.ndarray:
    if item.ndim == 2:
        item = np.repeat((item.astype(np.uint8) * 255 if item.dtype == bool else item)[..., None], 3, axis=2)
    return cv2.resize(item, (tile, tile), interpolation=cv2.INTER_AREA)

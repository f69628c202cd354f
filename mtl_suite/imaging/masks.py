"""(image, mask) pairs for U-Net training, from one of three mask sources:

- `binary`: a folder of binary masks with the images' relative paths and stems (any image extension);
- `segmented`: a "cell on black background" folder such as Aria's `segmented/` (mask = non-black pixels,
  cleaned with morphology);
- `roi`: weak masks from the paper's ROI preprocessing, when no masks exist.

Unusable pairs (no mask, wrong size, not binary, no cell found, image too small) are left out and reported by
name with a count; only when nothing usable is left is it an error.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mtl_suite.data.images import IMAGE_SUFFIXES, is_image_file, read_rgb
from mtl_suite.data.pipeline import default_workers
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.imaging.cells import mask_from_segmented
from mtl_suite.imaging.roi import RoiParams, clean_mask, roi_mask

MASK_KINDS = ("auto", "binary", "segmented", "roi")
MIN_SIDE = 16  # below this a field holds no recognisable cell, and a depth-4 U-Net has nothing left to pool
NON_BINARY_TOLERANCE = 0.01  # JPEG-saved masks have a few off values at edges; more than 1% is not a mask


@dataclass
class Problems:
    """Unusable inputs by reason, each with the names that had it."""

    by_reason: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, name: str) -> None:
        self.by_reason[reason].append(name)

    def lines(self, show: int = 5) -> list[str]:
        out = []
        for reason, names in sorted(self.by_reason.items()):
            more = f", ... ({len(names) - show} more)" if len(names) > show else ""
            out.append(f"{len(names)} {reason}: {', '.join(names[:show])}{more}")
        return out

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_reason.values())


@dataclass(frozen=True)
class Pairs:
    paths: tuple[str, ...]
    images: np.ndarray  # (N, size, size, 3) uint8
    masks: np.ndarray  # (N, size, size) bool


def detect_mask_kind(mask_root: Path | None) -> str:
    """`roi` without a mask folder; `binary` if most of the first masks hold only two values, else `segmented`."""
    if mask_root is None:
        return "roi"
    if not mask_root.is_dir():
        raise UserError(f"mask folder not found: {mask_root}")
    samples = [p for p in sorted(mask_root.rglob("*")) if is_image_file(p)][:7]
    if not samples:
        raise UserError(f"mask folder has no images: {mask_root}")
    binary = sum(_binary_fraction(read_rgb(p)) >= 1 - NON_BINARY_TOLERANCE for p in samples)
    return "binary" if binary * 2 > len(samples) else "segmented"  # a majority: one bad mask must not flip it


def _binary_fraction(mask_rgb: np.ndarray) -> float:
    gray = mask_rgb.max(axis=2)
    return float(np.isin(gray, (0, 1, 255)).mean())


def find_mask_file(image_path: Path, image_root: Path, mask_root: Path) -> Path | None:
    """The mask with the image's relative path, any image extension (masks are often PNG for JPEG images)."""
    rel = image_path.relative_to(image_root)
    exact = mask_root / rel
    if exact.is_file():
        return exact
    for suffix in sorted(IMAGE_SUFFIXES):
        candidate = (mask_root / rel).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def unmatched_masks(image_paths: Sequence[Path], image_root: Path, mask_root: Path) -> list[str]:
    """Mask files whose name matches no image: usually a renamed or misplaced file."""
    wanted = {str(p.relative_to(image_root).with_suffix("")) for p in image_paths}
    return sorted(str(p.relative_to(mask_root)) for p in mask_root.rglob("*")
                  if is_image_file(p) and str(p.relative_to(mask_root).with_suffix("")) not in wanted)


def mask_for(image_path: Path, image: np.ndarray, kind: str, image_root: Path | None, mask_root: Path | None,
             roi_params: RoiParams) -> tuple[np.ndarray | None, str | None]:
    """(mask at the image's resolution, None) or (None, reason it is unusable)."""
    if min(image.shape[:2]) < MIN_SIDE:
        return None, f"images smaller than {MIN_SIDE} px"
    if kind == "roi":
        mask = clean_mask(roi_mask(image, roi_params))
    else:
        mask_path = find_mask_file(image_path, image_root, mask_root)
        if mask_path is None:
            return None, "images without a mask"
        try:
            mask_rgb = read_rgb(mask_path)
        except BadImageError:
            return None, "unreadable masks"
        if mask_rgb.shape[:2] != image.shape[:2]:
            return None, "masks of the wrong size"
        if kind == "binary":
            if _binary_fraction(mask_rgb) < 1 - NON_BINARY_TOLERANCE:
                return None, "masks that are not binary"
            mask = mask_rgb.max(axis=2) > 127 if mask_rgb.max() > 1 else mask_rgb.max(axis=2) > 0
        else:
            mask = mask_from_segmented(mask_rgb)
    if not mask.any():
        return None, "images where no cell was found"
    return mask, None


def load_pairs(image_paths: Sequence[str | Path], size: int, kind: str, image_root: Path | None = None,
               mask_root: Path | None = None, roi_params: RoiParams = RoiParams(),
               problems: Problems | None = None, workers: int | None = None) -> Pairs:
    """Decode, pair and resize to size x size (the training geometry, as the data layer resizes)."""
    if kind not in MASK_KINDS[1:]:
        raise UserError(f"unknown mask kind {kind!r}. Expected one of: {', '.join(MASK_KINDS)}")
    if kind != "roi" and (mask_root is None or image_root is None):
        raise UserError(f"mask kind {kind!r} needs a mask folder (--masks)")
    problems = problems if problems is not None else Problems()

    def one(path: str | Path):
        path = Path(path)
        try:
            image = read_rgb(path)
        except BadImageError as exc:
            return path, None, None, f"unreadable images ({exc.reason})"
        mask, reason = mask_for(path, image, kind, image_root, mask_root, roi_params)
        return path, image, mask, reason

    kept_paths, images, masks = [], [], []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for path, image, mask, reason in pool.map(one, image_paths):
            if reason:
                problems.add(reason, path.name)
                continue
            kept_paths.append(str(path))
            images.append(resize_image(image, size))
            masks.append(resize_mask(mask, size))
    empty = np.zeros((0, size, size), bool)
    return Pairs(tuple(kept_paths), np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
                 np.stack(masks) if masks else empty)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, shape: int | tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to size x size or to (H, W), keeping it boolean."""
    height, width = (shape, shape) if isinstance(shape, int) else shape
    resized = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized > 127


@dataclass(frozen=True)
class SegmentationData:
    split: object  # mtl_suite.data.splits.Split
    kind: str
    train: Pairs
    val: Pairs
    test: Pairs
    problems: Problems


def split_pairs(split, size: int, kind: str, mask_root: Path | None, roi_params: RoiParams = RoiParams(),
                workers: int | None = None) -> SegmentationData:
    """Pairs for the split's parts: train = everything not validation or test, val = fold 0, test = outer test.
    Stops with a clear error only when no training pair is usable."""
    from mtl_suite.data.splits import TEST

    image_root = Path(split.root) if split.root else None
    if kind == "auto":
        kind = detect_mask_kind(mask_root)
    problems = Problems()
    roles = np.asarray(split.roles)
    paths = np.asarray([e.path for e in split.entries])
    if image_root is None or image_root.is_file():  # CSV manifests: masks are found beside the CSV's folder
        image_root = Path(paths[0]).parent if image_root is None else image_root.parent
    parts = {name: paths[select] for name, select in
             {"train": (roles != TEST) & (roles != 0), "val": roles == 0, "test": roles == TEST}.items()}
    loaded = {name: load_pairs(list(p), size, kind, image_root, mask_root, roi_params, problems, workers)
              for name, p in parts.items()}
    if mask_root is not None:  # against every image file, so dropped duplicates do not count as mismatches
        all_images = [p for p in image_root.rglob("*") if is_image_file(p)]
        for name in unmatched_masks(all_images, image_root, mask_root):
            problems.add("masks that match no image", name)
    if len(loaded["train"].paths) == 0:
        raise UserError(f"no usable (image, mask) pair for training among {len(parts['train'])} images: "
                        + "; ".join(problems.lines()))
    return SegmentationData(split, kind, loaded["train"], loaded["val"], loaded["test"], problems)

"""Augmentation (paper section II-D) with albumentations: flips, rotation 0-180 degrees, shift and scale, plus an
optional stain/colour jitter that the paper does not use but that the Aria data's class-dependent staining calls
for.

Two modes, both for training data only: online (`get_batch_augment`, the hook the tf.data pipeline applies to
training batches) and offline class balancing (`balance_classes`, the paper's 340 -> 1,700 images), which is
called on the training part of a fold after the split, never before it.

Policies are named in a registry; a path to an albumentations YAML file (`A.save(..., data_format="yaml")`) is
accepted wherever a name is, so a study can carry its own policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import albumentations as A
import cv2
import numpy as np

from mtl_suite.data.pipeline import BatchAugment
from mtl_suite.errors import UserError


@dataclass(frozen=True)
class PolicySpec:
    name: str
    description: str
    build: Callable[[float], A.Compose | None]  # strength -> transform (None: identity)


def _geometry(strength: float) -> list[A.BasicTransform]:
    """The paper's transforms. Reflection at the borders: a smear continues beyond the field, and a black
    corner would be a cue no real image has. Strength scales shift and scale ranges (rotation stays 0-180)."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Rotate(limit=(0, 180), border_mode=cv2.BORDER_REFLECT_101, p=min(1.0, 0.75 * strength)),
        A.Affine(translate_percent=(-0.1 * strength, 0.1 * strength),
                 scale=(1 - 0.15 * strength, 1 + 0.15 * strength),
                 border_mode=cv2.BORDER_REFLECT_101, p=min(1.0, 0.75 * strength)),
    ]


def _colour(strength: float) -> list[A.BasicTransform]:
    """Stain jitter: hue and saturation shifts mimic differences between stain batches and labs."""
    return [
        A.HueSaturationValue(hue_shift_limit=int(8 * strength), sat_shift_limit=int(20 * strength),
                             val_shift_limit=int(10 * strength), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.1 * strength, contrast_limit=0.1 * strength, p=0.5),
    ]


def _hed(strength: float) -> list[A.BasicTransform]:
    """HED stain jitter (Tellez et al. 2018): the image is split into haematoxylin and eosin optical densities
    (Ruifrok-Johnston matrix) whose intensities are scaled by 1 +- 0.2 and shifted by +-0.05 (times the strength),
    background included, so the stain and background cues of class-dependent staining stop being reliable. About
    20 ms per 224 px image on one CPU core: with online augmentation it slows a CPU epoch; offline mode pays it once."""
    return [A.HEStain(method="preset", preset="ruifrok",
                      intensity_scale_range=(max(0.0, 1 - 0.2 * strength), 1 + 0.2 * strength),
                      intensity_shift_range=(-min(1.0, 0.05 * strength), min(1.0, 0.05 * strength)),
                      augment_background=True, p=0.8)]


def _zoom(strength: float) -> list[A.BasicTransform]:
    """Fields as a stronger objective or another lab's camera would show them: half the time magnified 1 to 3 times
    (at strength 1) about a random point, the field reflected where the shift leaves an edge."""
    return [A.Affine(scale=(1.0, 1.0 + 2.0 * strength), keep_ratio=True, translate_percent=(-0.25, 0.25),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5)]


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in [
        PolicySpec("none", "no augmentation", lambda strength: None),
        PolicySpec("paper", "flips, rotation 0-180, shift, scale (paper II-D)",
                   lambda strength: A.Compose(_geometry(strength))),
        PolicySpec("paper+color", "paper policy plus stain/colour jitter",
                   lambda strength: A.Compose(_geometry(strength) + _colour(strength))),
        PolicySpec("color", "stain/colour jitter only", lambda strength: A.Compose(_colour(strength))),
        PolicySpec("hed", "HED stain jitter (haematoxylin/eosin intensities scaled and shifted)",
                   lambda strength: A.Compose(_hed(strength))),
        PolicySpec("paper+hed", "paper policy plus HED stain jitter and hue/saturation jitter",
                   lambda strength: A.Compose(_geometry(strength) + _hed(strength) + _colour(strength))),
        PolicySpec("zoom+hed", "magnification 1-3x (other labs' objectives) plus HED stain and hue/saturation jitter",
                   lambda strength: A.Compose(_zoom(strength) + _hed(strength) + _colour(strength))),
    ]
}


def build_transform(policy: str, strength: float = 1.0) -> A.Compose | None:
    """The transform of a named policy or of an albumentations YAML file; None for 'none'."""
    if not 0 <= strength <= 3:
        raise UserError(f"augmentation strength must be in [0, 3]. Received: {strength}")
    if policy.endswith((".yaml", ".yml")):
        return _load_yaml_policy(Path(policy))
    if policy not in POLICIES:
        raise UserError(f"unknown augmentation policy {policy!r}. Expected one of: {', '.join(POLICIES)} "
                        "or a path to an albumentations .yaml file")
    return POLICIES[policy].build(strength)


def _load_yaml_policy(path: Path) -> A.Compose:
    if not path.is_file():
        raise UserError(f"augmentation policy file not found: {path}")
    try:
        transform = A.load(str(path), data_format="yaml")
    except Exception as exc:  # albumentations raises many types for a malformed file
        raise UserError(f"{path}: not an albumentations policy ({type(exc).__name__}: {exc})") from None
    return transform if isinstance(transform, A.Compose) else A.Compose([transform])


def _seeded(transform: A.Compose, rng: np.random.Generator) -> A.Compose:
    """Draw the transform's seed from the caller's generator, so one seed repeats a whole training run."""
    transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))
    return transform


def get_batch_augment(policy: str, strength: float = 1.0) -> BatchAugment | None:
    """The online hook for training batches: (N, H, W, 3) uint8 in, same shape out. None for 'none'."""
    transform = build_transform(policy, strength)
    if transform is None:
        return None

    def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _seeded(transform, rng)
        return np.stack([_same_size(transform(image=image)["image"], image) for image in batch])

    return augment


def _same_size(out: np.ndarray, original: np.ndarray) -> np.ndarray:
    """A user's YAML policy may change the size; batches must keep theirs."""
    if out.shape[:2] != original.shape[:2]:
        out = cv2.resize(out, original.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return out


PairAugment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def get_pair_augment(policy: str, strength: float = 1.0) -> PairAugment | None:
    """Joint augmentation of images and masks for segmentation: the same geometry is applied to both
    (nearest-neighbour for masks, so they stay binary); colour jitter touches the image only."""
    transform = build_transform(policy, strength)
    if transform is None:
        return None

    def augment(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _seeded(transform, rng)
        pairs = [transform(image=i, mask=m.astype(np.uint8)) for i, m in zip(images, masks)]
        return np.stack([p["image"] for p in pairs]), np.stack([p["mask"] for p in pairs]).astype(masks.dtype)

    return augment


def balance_classes(images: np.ndarray, labels: np.ndarray, target_per_class: int, policy: str,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Offline class balancing of a training fold: every class is filled up to `target_per_class` with
    augmented copies of its own images (cycling through them, so each original is used about equally).
    Originals are all kept, first; a class already at or above the target is left as it is (nothing is
    dropped). Call it on training data only: augmented copies of a validation image in training leak it."""
    if target_per_class < 1:
        raise UserError(f"target per class must be at least 1. Received: {target_per_class}")
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} labels")
    augment = get_batch_augment(policy)
    rng = np.random.default_rng(seed)
    extra_images, extra_labels = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        missing = target_per_class - len(members)
        if missing <= 0:
            continue
        sources = members[np.resize(rng.permutation(len(members)), missing)]
        copies = images[sources]
        extra_images.append(augment(copies, rng) if augment else copies.copy())
        extra_labels.append(labels[sources])
    if not extra_images:
        return images, labels
    return np.concatenate([images, *extra_images]), np.concatenate([labels, *extra_labels])


def preview_grid(images: np.ndarray, policy: str, strength: float = 1.0, copies: int = 5, seed: int = 0,
                 tile: int = 128) -> np.ndarray:
    """One row per source image: the original, then `copies` augmented versions."""
    from mtl_suite.imaging.roi import contact_sheet

    augment = get_batch_augment(policy, strength)
    rng = np.random.default_rng(seed)
    rows = []
    for image in images:
        repeated = np.repeat(image[None], copies, axis=0)
        augmented = augment(repeated, rng) if augment else repeated
        rows.append([image, *augmented])
    return contact_sheet(rows, tile=tile)


# --- fixed stain shifts for the robustness metric ----------------------------------------------------------------

# Three fixed, deterministic re-stainings (zero-width ranges: nothing is drawn at random): a darker and a lighter HED
# stain and a hue/saturation/brightness shift. On the bundled sample each changes a pixel by 14-16 grey levels on
# average; on aria-all they take the best colour-only baseline from 98% to 43% test accuracy (analysis/shortcut.py).
STAIN_SHIFTS: dict[str, Callable[[], A.BasicTransform]] = {
    "hed_darker": lambda: A.HEStain(method="preset", preset="ruifrok", intensity_scale_range=(1.3, 1.3),
                                    intensity_shift_range=(0.03, 0.03), augment_background=True, p=1.0),
    "hed_lighter": lambda: A.HEStain(method="preset", preset="ruifrok", intensity_scale_range=(0.75, 0.75),
                                     intensity_shift_range=(-0.03, -0.03), augment_background=True, p=1.0),
    "hsv": lambda: A.HueSaturationValue(hue_shift_limit=(10, 10), sat_shift_limit=(-25, -25),
                                        val_shift_limit=(10, 10), p=1.0),
}


def magnified(image: np.ndarray, magnification: float) -> np.ndarray:
    """The field as a camera `magnification` times stronger would show it: its centre, 1/magnification of each side,
    resized back to the field's size. A development-side stand-in for another lab's higher-magnification fields
    (workflows/reliability.py:shift_probe)."""
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height / magnification)), max(1, round(width / magnification))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return cv2.resize(image[top:top + crop_h, left:left + crop_w], (width, height), interpolation=cv2.INTER_CUBIC)


def stain_shifted(images: np.ndarray) -> np.ndarray:
    """`images` ((N, H, W, 3) uint8) re-stained for the robustness metric: the k-th STAIN_SHIFTS entry applied to
    the images at positions k, k + 3, k + 6, ...: one pass over disjoint thirds, so scoring the shifted set costs
    one prediction of the images, and the thirds are as class-balanced as the order (the split's) allows."""
    out = np.empty_like(images)
    shifts = [make() for make in STAIN_SHIFTS.values()]
    for i, image in enumerate(images):
        out[i] = _same_size(shifts[i % len(shifts)](image=image)["image"], image)
    return out

"""Stain control inside the model graph: a layer before the backbone's normalisation that takes raw RGB pixels in
[0, 255] and gives raw RGB pixels in [0, 255] with the stain's colour taken out (gray) or normalised (reinhard).

Being a layer of the saved model, it is applied identically in training, cross-validation, the test part,
`predict` and a served model (which only resizes): there is no second preprocessing path that could drift. It has no
weights, so backbone archives (weight transfer between stages) do not change with it; its configuration is part of
the feature-cache key (training/features.py hashes every layer's config).

Modes (`train.stain`, STAINS in config.py):
  none      no layer at all (the graph is exactly the one without stain control)
  gray      luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as OpenCV's RGB2GRAY), copied to 3 channels
  reinhard  Reinhard et al. (2001) colour transfer in CIE L*a*b* (sRGB, D65; OpenCV's float conversion): each
            image's per-channel mean and standard deviation are matched to fixed reference statistics

Left out: Macenko. It estimates two stain vectors per image from an eigen-decomposition of the optical densities
of the stained pixels and robust (1st/99th percentile) angles; in-graph that needs a data-dependent pixel
selection, percentiles over a masked set and an eigenvector sign convention, with degenerate cases (blank or
one-stain images) that silently give nonsense. Its two-stain H&E model also fits Wright-Giemsa blood smears badly.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mtl_suite.config import STAINS

# Reference L*a*b* statistics: the mean over images of each image's per-channel mean and standard deviation, over
# the 96 images of the bundled sample (mtl_suite/assets/sample/original, all four classes) at 224 px, computed
# once with this module's own conversion (tests/unit/test_stain.py recomputes them and checks these values).
REFERENCE_MEAN = (87.48, 1.87, -10.14)
REFERENCE_STD = (11.56, 9.97, 14.52)
# A channel's standard deviation is floored at this (L*a*b* units) before the spread is matched, so a nearly blank
# image's noise is not stretched to the reference spread. The sample's smallest per-image std is 4.1 (a*).
MIN_STD = 0.5

LUMA = (0.299, 0.587, 0.114)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)  # D65, as OpenCV normalises X and Z
_EPSILON = 0.008856  # (6/29)^3
_KAPPA = 7.787  # (29/6)^2 / 3


def rgb_to_lab(rgb):
    """(..., 3) sRGB in [0, 255] -> CIE L*a*b* (L in [0, 100])."""
    c = ops.clip(rgb / 255.0, 0.0, 1.0)
    linear = ops.where(c <= 0.04045, c / 12.92, ops.power((c + 0.055) / 1.055, 2.4))
    xyz = ops.matmul(linear, ops.transpose(ops.convert_to_tensor(_RGB_TO_XYZ, dtype=rgb.dtype)))
    xyz = xyz / ops.convert_to_tensor(_WHITE, dtype=rgb.dtype)
    f = ops.where(xyz > _EPSILON, ops.power(ops.maximum(xyz, _EPSILON), 1.0 / 3.0), _KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return ops.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """Inverse of rgb_to_lab; colours outside the sRGB gamut are clipped to [0, 255]."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = ops.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = ops.where(f > 6.0 / 29.0, f * f * f, (f - 16.0 / 116.0) / _KAPPA)
    xyz = xyz * ops.convert_to_tensor(_WHITE, dtype=lab.dtype)
    inverse = ops.inv(ops.convert_to_tensor(_RGB_TO_XYZ, dtype="float64"))
    linear = ops.clip(ops.matmul(xyz, ops.transpose(ops.cast(inverse, lab.dtype))), 0.0, 1.0)
    c = ops.where(linear <= 0.0031308, 12.92 * linear, 1.055 * ops.power(ops.maximum(linear, 1e-12), 1 / 2.4) - 0.055)
    return ops.clip(c * 255.0, 0.0, 255.0)


@keras.saving.register_keras_serializable(package="mtl_suite")
class StainControl(keras.layers.Layer):
    """Raw RGB [0, 255] in, stain-controlled raw RGB [0, 255] out (see the module docstring). Computes in float32
    whatever the model's precision policy: L*a*b* arithmetic in float16 loses the small a*/b* differences."""

    MODES = tuple(mode for mode in STAINS if mode != "none")

    def __init__(self, mode: str, reference_mean=REFERENCE_MEAN, reference_std=REFERENCE_STD, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown stain mode {mode!r}. Expected one of: {', '.join(self.MODES)}")
        self.mode = mode
        self.reference_mean = tuple(float(v) for v in reference_mean)
        self.reference_std = tuple(float(v) for v in reference_std)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "gray":
            y = ops.sum(x * ops.convert_to_tensor(LUMA, dtype="float32"), axis=-1, keepdims=True)
            return ops.repeat(y, 3, axis=-1)
        lab = rgb_to_lab(x)
        mean = ops.mean(lab, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(lab - mean), axis=(1, 2), keepdims=True))
        target_mean = ops.convert_to_tensor(self.reference_mean, dtype="float32")
        target_std = ops.convert_to_tensor(self.reference_std, dtype="float32")
        return lab_to_rgb((lab - mean) / ops.maximum(std, MIN_STD) * target_std + target_mean)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "reference_mean": list(self.reference_mean),
                "reference_std": list(self.reference_std)}


def stain_layer(mode: str) -> keras.layers.Layer | None:
    """The layer for a `train.stain` value; None for 'none' (no layer: the plain graph)."""
    return None if mode == "none" else StainControl(mode, name="stain")


def controlled_pixels(images: np.ndarray, mode: str, batch: int = 128) -> np.ndarray:
    """uint8 images through the model's own stain layer, rounded to whole levels: what a model with `train.stain`
    = `mode` sees, as pixels a colour histogram can count (the shortcut check scores colour on the same input)."""
    if mode == "none":
        return images
    layer, out = StainControl(mode), np.empty_like(images)
    for start in range(0, len(images), batch):
        part = keras.ops.convert_to_numpy(layer(np.asarray(images[start:start + batch], dtype="float32")))
        out[start:start + batch] = np.clip(np.rint(part), 0, 255).astype(out.dtype)
    return out


def lab_statistics(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean over `images` ((N, H, W, 3) raw RGB) of their per-image L*a*b* channel means and standard deviations:
    how REFERENCE_MEAN / REFERENCE_STD were made."""
    lab = rgb_to_lab(ops.cast(ops.convert_to_tensor(images), "float32"))
    mean = ops.mean(lab, axis=(1, 2))
    std = ops.sqrt(ops.mean(ops.square(lab - mean[:, None, None, :]), axis=(1, 2)))
    to_tuple = lambda t: tuple(float(v) for v in ops.convert_to_numpy(ops.mean(t, axis=0)))  # noqa: E731
    return to_tuple(mean), to_tuple(std)

"""Final models that average several predictions, built as one Keras graph so that the test part, `predict`,
`promote` and a served model treat them exactly like a single classifier (`train.ensemble`, `train.tta`):

  fold ensemble   the k cross-validation fold models, their class probabilities averaged (in place of the refit)
  flips (TTA)     the classifier applied to the image and to its horizontal, vertical and double flip, averaged
  colour fusion   the classifier and a colour-only classifier (models/colour.py), their probabilities averaged
  run ensemble    the final models of finished stage runs on one split (`mtl-suite ensemble`), averaged

A blood smear has no up, down, left or right, so a flipped field is as valid an input as the original; averaging
the four is the test-time augmentation. The wrappers hold their members as nested models and end in an `Average`
layer, so `prediction_parts` can take a loaded model apart again: training/fit.py:predict_proba scores the members
one by one through the feature and activation caches instead of running k x 4 whole networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

ENSEMBLE_NAME, FLIPS_NAME, COLOUR_FUSED_NAME = "fold_ensemble", "flips", "colour_fused"
RUN_ENSEMBLE_NAME = "run_ensemble"
# (image axes flipped) per TTA view, for (N, H, W, C) input: none, left-right, up-down, both
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))


@keras.saving.register_keras_serializable(package="mtl_suite")
class Flip(keras.layers.Layer):
    """Reverses the given axes of the input (1: rows, 2: columns of an (N, H, W, C) batch)."""

    def __init__(self, axes: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.axes = tuple(int(axis) for axis in axes)

    def call(self, inputs):
        return ops.flip(inputs, axis=self.axes) if self.axes else inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "axes": list(self.axes)}


def fold_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model: the input through every fold model, their outputs averaged."""
    return _averaged(members, "fold", ENSEMBLE_NAME)


def run_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model: the input through the final model of every member run, their outputs averaged."""
    return _averaged(members, "run", RUN_ENSEMBLE_NAME)


def _averaged(members: Sequence[keras.Model], prefix: str, name: str) -> keras.Model:
    """Members are renamed <prefix>_0, <prefix>_1, ... (nested models need unique names to be saved)."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    inputs = keras.Input(shape=members[0].input_shape[1:], name="image")
    outputs = []
    for index, member in enumerate(members):
        member.name = f"{prefix}_{index}"
        outputs.append(member(inputs))
    return keras.Model(inputs, keras.layers.Average(name="mean_probability")(outputs), name=name)


def with_flips(model: keras.Model) -> keras.Model:
    """One model: `model` applied to the input and its three flips (FLIP_VIEWS), the outputs averaged."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    outputs = [model(Flip(axes, name=f"flip_{'_'.join(map(str, axes)) or 'none'}")(inputs)) for axes in FLIP_VIEWS]
    return keras.Model(inputs, keras.layers.Average(name="mean_probability")(outputs), name=FLIPS_NAME)


def with_colour(model: keras.Model, colour: keras.Model) -> keras.Model:
    """One model: `model` and the colour classifier `colour` (models/colour.py) on the same input, averaged."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    return keras.Model(inputs, keras.layers.Average(name="mean_probability")([model(inputs), colour(inputs)]),
                       name=COLOUR_FUSED_NAME)


def prediction_parts(model: keras.Model) -> list[tuple[tuple[int, ...], keras.Model]] | None:
    """(flipped axes, member) for each averaged prediction of a model made by fold_ensemble, with_flips or
    with_colour or run_ensemble (its output is the plain mean of these); None for any other model."""
    if model.name in (ENSEMBLE_NAME, COLOUR_FUSED_NAME, RUN_ENSEMBLE_NAME):
        return [((), layer) for layer in model.layers if isinstance(layer, keras.Model)]
    if model.name == FLIPS_NAME:
        inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        flips = [layer.axes for layer in model.layers if isinstance(layer, Flip)]
        return [(axes, inner[0]) for axes in flips] if len(inner) == 1 else None
    return None


def flipped(images: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`images` with `axes` reversed, as a contiguous array (the caches hash its bytes)."""
    return np.ascontiguousarray(np.flip(images, axis=axes)) if axes else images

"""A colour-only classifier as a Keras graph, to average with the CNN inside one model (`train.colour_fusion`).

On aria-all the tuned Xception and colour alone (analysis/shortcut.py's best baseline) each miss about 1.3% of the
development images in cross-validation, but mostly different ones (6 of 28 and 29 misses in common on split 42), so
their averaged probabilities miss fewer than either. The colour part reads stain, not cells: a fused model loses
robustness to re-staining (`robustness/stain_shift_accuracy` says how much), which is why it is an option.

ColourFeatures computes, from the pixels the model receives, the features of the shortcut check's `hist32_stats`
variant: the 32-bin R, G, B histograms and the mean, standard deviation and PERCENTILES of R, G, B and luminance.
Pixels are rounded to whole 8-bit levels first, so on uint8 images the features equal the numpy/OpenCV ones the
shortcut check computes (tests/unit/test_colour.py). A Dense layer with a logistic regression's weights (its
standardisation folded in) turns them into class probabilities. Being layers of the saved model, the features are
computed alike in cross-validation, on the test part, in `predict` and in a served model.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mtl_suite.models.stain import stain_layer

PERCENTILES = (5, 25, 50, 75, 95)
HISTOGRAM_BINS = 32
LEVELS = 256
# OpenCV's RGB2GRAY on 8-bit pixels in fixed point (15 fractional bits; checked against cv2.cvtColor on every
# level in tests/unit/test_colour.py): Y = (9798 R + 19235 G + 3735 B + 2^14) >> 15
_GRAY_WEIGHTS, _GRAY_SHIFT = (9798, 19235, 3735), 15
COLOUR_NAME = "colour"
REGRESSION_SEED = 0  # the logistic regressions' (here and in analysis/shortcut.py)
# The logit given to a class that a fold's training images do not hold: the regression never saw it.
_ABSENT_CLASS_LOGIT = -30.0


@keras.saving.register_keras_serializable(package="mtl_suite")
class ColourFeatures(keras.layers.Layer):
    """(N, H, W, 3) RGB in [0, 255] -> (N, 3 * HISTOGRAM_BINS + 4 * (2 + len(PERCENTILES))) colour features."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        levels = ops.cast(ops.clip(ops.round(ops.cast(inputs, "float32")), 0, LEVELS - 1), "int32")
        gray = ops.right_shift(ops.sum(levels * ops.convert_to_tensor(_GRAY_WEIGHTS, "int32"), axis=-1)
                               + (1 << (_GRAY_SHIFT - 1)), _GRAY_SHIFT)
        channels = ops.concatenate([levels, gray[..., None]], axis=-1)  # (N, H, W, 4): R, G, B, luminance
        pixels = int(inputs.shape[1]) * int(inputs.shape[2])
        flat = ops.reshape(ops.transpose(ops.reshape(channels, (-1, pixels, 4)), (0, 2, 1)), (-1, pixels))
        counts = ops.reshape(ops.bincount(flat, minlength=LEVELS), (-1, 4, LEVELS))  # (N, 4, 256) int32
        return ops.concatenate([_coarse_histogram(counts, pixels), _statistics(counts, pixels)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 3 * HISTOGRAM_BINS + 4 * (2 + len(PERCENTILES)))


def _coarse_histogram(counts, pixels: int):
    """R, G, B counts summed into HISTOGRAM_BINS equal bins, as fractions of the image's pixels."""
    grouped = ops.reshape(counts[:, :3], (-1, 3, HISTOGRAM_BINS, LEVELS // HISTOGRAM_BINS))
    return ops.reshape(ops.cast(ops.sum(grouped, axis=-1), "float32"), (-1, 3 * HISTOGRAM_BINS)) / pixels


def _statistics(counts, pixels: int):
    """Per channel: mean, standard deviation and the PERCENTILES (the first level whose cumulative fraction reaches
    q / 100, as shortcut.colour_statistics counts it, here on exact integer counts)."""
    values = ops.arange(LEVELS, dtype="float32")
    weights = ops.cast(counts, "float32") / pixels
    mean = ops.sum(weights * values, axis=-1)
    std = ops.sqrt(ops.maximum(ops.sum(weights * ops.square(values - mean[..., None]), axis=-1), 0.0))
    cumulative = ops.cumsum(counts, axis=-1)
    quantiles = [ops.cast(ops.sum(ops.cast(cumulative < _threshold(q, pixels), "int32"), axis=-1), "float32")
                 for q in PERCENTILES]
    return ops.reshape(ops.stack([mean, std, *quantiles], axis=-1), (-1, 4 * (2 + len(PERCENTILES))))


def _threshold(q: int, pixels: int) -> int:
    """The count that `cumulative fraction < q / 100 - 1e-12` means for whole counts out of `pixels`."""
    return math.ceil(pixels * q / 100 - pixels * 1e-12)


def _features(image_shape: tuple[int, ...], stain: str):
    """(input, colour features) through the same stain control the CNN applies: a colour model sees what it sees."""
    inputs = keras.Input(shape=image_shape, name="image")
    x = inputs
    layer = stain_layer(stain)
    if layer is not None:
        x = layer(x)
    return inputs, ColourFeatures(name="colour_features")(x)


def colour_feature_model(image_shape: tuple[int, ...], stain: str = "none") -> keras.Model:
    """Image -> colour features (what the regression of colour_classifier is fit on)."""
    return keras.Model(*_features(image_shape, stain), name="colour_features")


def colour_classifier(image_shape: tuple[int, ...], stain: str, weights: np.ndarray, bias: np.ndarray,
                      single_sigmoid: bool) -> keras.Model:
    """Image -> softmax(colour features @ weights + bias), for (F, n_classes) weights. `single_sigmoid`: output only
    the second class's probability, as a binary CNN head does, so the two can be averaged. One flat graph (no nested
    model), so training/fit.py never mistakes a part of it for a backbone."""
    inputs, features = _features(image_shape, stain)
    dense = keras.layers.Dense(weights.shape[1], activation="softmax", dtype="float32", name="colour_output")
    probabilities = dense(features)
    dense.set_weights([weights.astype("float32"), bias.astype("float32")])
    if single_sigmoid:
        probabilities = SecondColumn(name="positive_class")(probabilities)
    return keras.Model(inputs, probabilities, name=COLOUR_NAME)


@keras.saving.register_keras_serializable(package="mtl_suite")
class SecondColumn(keras.layers.Layer):
    """(N, 2) -> (N, 1): the positive class's probability (a binary head's single sigmoid output)."""

    def call(self, inputs):
        return inputs[:, 1:2]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)


def colour_regression(seed: int = REGRESSION_SEED) -> Pipeline:
    """The classifier on colour features, for the shortcut check and for colour fusion alike."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))


def regression_weights(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, n_classes: int,
                       mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A colour_regression's parts (sklearn: coef_ (k or 1, F), intercept_, classes_; the scaler's mean_ and scale_)
    as (F, n_classes) weights and a bias on the raw features: the standardisation (x - mean) / scale folded in. A
    binary regression's single row is the second class's logit against 0; a class it never saw gets a logit of
    -30."""
    classes = np.asarray(classes, dtype=np.int64)
    rows = np.zeros((n_classes, coef.shape[1]))
    offsets = np.full(n_classes, _ABSENT_CLASS_LOGIT)
    if len(classes) == 2 and coef.shape[0] == 1:
        offsets[classes] = 0.0
        rows[classes[1]], offsets[classes[1]] = coef[0], intercept[0]
    else:
        rows[classes], offsets[classes] = coef, intercept
    weights = rows / scale  # (n_classes, F)
    return weights.T, offsets - weights @ mean

"""Fitting the colour-only classifier of `train.colour_fusion` (models/colour.py) on a fold's training images.

Its features come from the model's own ColourFeatures layer, so what the regression is fit on is what the saved
model computes. The regression is the shortcut check's (standardised, C = 1, one BLAS thread: analysis/shortcut.py
explains why), so in cross-validation the colour part of a fused model is that check's `hist32_stats` baseline."""

from __future__ import annotations

import keras
import numpy as np
from threadpoolctl import threadpool_limits

from mtl_suite.models.colour import colour_classifier, colour_feature_model, colour_regression, regression_weights
from mtl_suite.models.heads import is_single_sigmoid
from mtl_suite.training.features import predict_in_chunks
from mtl_suite.training.fit import ArrayData


def fit_colour_classifier(cnn: keras.Model, train: ArrayData, stain: str, batch_size: int) -> keras.Model:
    """A colour classifier for `cnn`'s input and output: fit on `train` (uint8 images, class indices), giving the
    same columns as `cnn` (one sigmoid column for a binary head, else one per class)."""
    single_sigmoid = is_single_sigmoid(cnn)
    n_classes = 2 if single_sigmoid else int(cnn.output_shape[-1])
    image_shape = tuple(cnn.input_shape[1:])
    x = predict_in_chunks(colour_feature_model(image_shape, stain), train.images, batch_size).astype(np.float64)
    weights, bias = _regression(x, np.asarray(train.labels, dtype=np.int64), n_classes)
    return colour_classifier(image_shape, stain, weights, bias, single_sigmoid)


def _regression(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(y)
    if len(classes) < 2:  # nothing to separate: the one class seen gets all the probability
        return regression_weights(np.zeros((1, x.shape[1])), np.zeros(1), classes, n_classes, x.mean(axis=0),
                                  np.ones(x.shape[1]))
    with threadpool_limits(1):
        pipeline = colour_regression().fit(x, y)
    scaler, regression = pipeline[0], pipeline[-1]
    return regression_weights(regression.coef_, regression.intercept_, regression.classes_, n_classes,
                              scaler.mean_, scaler.scale_)

"""The out-of-distribution detector as a Keras graph: raw pixels -> [stain control] -> a frozen ImageNet feature
extractor -> squared Mahalanobis distance of the features to the nearest class mean of the training images, under
their shared (Ledoit-Wolf shrunk) covariance (Lee et al., 2018). Large: unlike every class the model was trained on.

Being one saved Keras model, the detector is applied alike on a stage run's test part, in `evaluate`, in `predict`
and in a served model. How it is fitted and where its threshold comes from: training/ood.py.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

DETECTOR_NAME = "ood_detector"


@keras.saving.register_keras_serializable(package="mtl_suite")
class MahalanobisDistance(keras.layers.Layer):
    """(N, D) features -> (N,) min over classes of (x - mean_c)' P (x - mean_c), with P = W W' stored as `whitening`
    W, so the distance is a squared Euclidean one after projecting by W."""

    def __init__(self, classes: int, dim: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.classes, self.dim = int(classes), int(dim)

    def build(self, input_shape):
        self.means = self.add_weight(shape=(self.classes, self.dim), initializer="zeros", trainable=False,
                                     name="means")
        self.whitening = self.add_weight(shape=(self.dim, self.dim), initializer="identity", trainable=False,
                                         name="whitening")

    def call(self, features):
        projected = ops.matmul(ops.cast(features, "float32"), self.whitening)  # (N, D)
        centres = ops.matmul(self.means, self.whitening)  # (C, D)
        diff = projected[:, None, :] - centres[None, :, :]
        return ops.min(ops.sum(diff * diff, axis=-1), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes, "dim": self.dim}


def detector_model(features: keras.Model, means: np.ndarray, precision: np.ndarray) -> keras.Model:
    """`features` (raw pixels -> (N, D)) followed by the distance to `means` ((C, D)) under `precision` ((D, D))."""
    means = np.asarray(means, dtype=np.float64)
    distance = MahalanobisDistance(len(means), means.shape[1], name="mahalanobis")
    outputs = distance(features.output)
    distance.set_weights([means.astype("float32"), whitening_of(precision).astype("float32")])
    return keras.Model(features.input, outputs, name=DETECTOR_NAME)


def whitening_of(precision: np.ndarray) -> np.ndarray:
    """W with W W' = precision (Cholesky; precision is symmetric positive definite after shrinkage)."""
    precision = np.asarray(precision, dtype=np.float64)
    return np.linalg.cholesky((precision + precision.T) / 2.0)

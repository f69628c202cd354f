"""Grad-CAM (Selvaraju et al. 2017) for the suite's classifiers, so a reader can see what a model looks at.

The classifier nests its backbone (a model named "backbone": input -> normalisation -> "base" -> pooling), and the
base is itself a nested Keras application. An inner layer's output cannot be reached from the outer graph, so the
forward pass is replayed: the layers before "base", a feature model over "base" that also returns its last
convolutional feature map, then the remaining backbone and head layers, all under one gradient tape.

A final model that averages parts (fold ensemble, test-time flips, colour fusion: models/ensemble.py) is explained
by its first network: fold 0, the unflipped view, the CNN without its colour half (`GradCam.partial`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mtl_suite.models.ensemble import prediction_parts


def last_feature_layer(base: keras.Model) -> keras.layers.Layer:
    """The last layer of the base network with a spatial (4-D) output: its last conv feature map."""
    for layer in reversed(base.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ValueError(f"no 4-D feature map in model {base.name!r}; Grad-CAM needs a convolutional base")


def _chain(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers of a single-input, single-path functional model in order (InputLayer skipped)."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def explained_network(model: keras.Model) -> keras.Model:
    """The plain classifier Grad-CAM reads: `model` itself, or the first part of an averaging model, followed down."""
    parts = prediction_parts(model)
    while parts is not None:
        model = parts[0][1]
        parts = prediction_parts(model)
    return model


class GradCam:
    def __init__(self, model: keras.Model):
        self.partial = prediction_parts(model) is not None  # explains a part of `model`, not all of it
        model = self.model = explained_network(model)
        backbone = model.get_layer("backbone")
        base = backbone.get_layer("base")
        feature = last_feature_layer(base)
        self.feature_name = feature.name
        self.feature_size = tuple(int(d) for d in feature.output.shape[1:3])  # 1x1: no spatial information
        self.features = keras.Model(base.inputs, [feature.output, base.outputs[0]])
        layers = _chain(backbone)
        at = [layer.name for layer in layers].index("base")
        self.before, self.after = layers[:at], layers[at + 1:]
        self.head = _chain(model)[[layer.name for layer in _chain(model)].index("backbone") + 1:]

    def forward(self, images: np.ndarray) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(probabilities as (n, classes), feature map, the tape's gradients of the predicted class' score)."""
        x = tf.convert_to_tensor(images, dtype=tf.float32)
        with tf.GradientTape() as tape:
            for layer in self.before:
                x = layer(x)
            fmap, h = self.features(x, training=False)
            tape.watch(fmap)
            for layer in self.after + self.head:
                h = layer(h, training=False)
            proba = h if h.shape[-1] > 1 else tf.concat([1.0 - h, h], axis=-1)
            target = tf.argmax(proba, axis=-1)
            score = tf.gather(proba, target, batch_dims=1)
        grads = tape.gradient(score, fmap)
        return proba, fmap, grads

    def heatmaps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps in [0, 1] at the input's size, and the class probabilities used."""
        proba, fmap, grads = self.forward(images)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.maximum(peak, 1e-12), tf.zeros_like(cam))
        size = images.shape[1:3]
        cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
        return np.clip(cam.numpy(), 0, 1), proba.numpy()

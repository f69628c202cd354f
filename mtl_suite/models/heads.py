"""Stage heads on top of a backbone's pooled features.

Paper: stage 1 adds global average pooling and a dense softmax layer; stages 2 and 3 add dense layers with
dropout and a sigmoid (binary) or softmax (multiclass) output. Pooling lives in the backbone, so a head only
sees the feature vector.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from mtl_suite.models.precision import dtype_policy_scope, precision_scope


def _output(x, n_classes: int, force_softmax: bool = False):
    # float32 output keeps probabilities exact under a mixed-precision policy.
    if n_classes == 2 and not force_softmax:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_output")(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head_output")(x)


def gap_softmax_head(features, n_classes: int, dense_units: Sequence[int] = (), dropout: float = 0.0):
    return _output(features, n_classes, force_softmax=True)


def dense_dropout_head(features, n_classes: int, dense_units: Sequence[int] = (128,), dropout: float = 0.3):
    x = features
    for i, units in enumerate(dense_units):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"head_dropout{i}")(x)
    return _output(x, n_classes)


HEADS: dict[str, Callable] = {"gap_softmax": gap_softmax_head, "dense_dropout": dense_dropout_head}


def build_classifier(backbone: keras.Model, head: str, n_classes: int, dense_units: Sequence[int] = (128,),
                     dropout: float = 0.3, precision: str = "float32") -> keras.Model:
    """Backbone + head. With a mixed `precision` the head computes in 16 bits (build the backbone with the same
    precision) and the model's policy makes compile() add loss scaling for float16; the output stays float32."""
    with precision_scope(precision):
        inputs = keras.Input(backbone.input_shape[1:], name="image", dtype="float32")
        outputs = HEADS[head](backbone(inputs), n_classes, dense_units, dropout)
        return keras.Model(inputs, outputs, name="classifier")


def head_on_features(classifier: keras.Model, backbone: keras.Model) -> keras.Model:
    """The classifier's layers after `backbone`, applied to a feature-vector input. The layers are the classifier's
    own objects (weights, dropout random state), so training this model trains the classifier's head: nothing to
    copy back, nothing to drift apart. Heads are chains of single-input layers; a branching head fails here."""
    layers = classifier.layers
    if backbone not in layers:
        raise ValueError(f"backbone {backbone.name!r} is not a layer of classifier {classifier.name!r}")
    with dtype_policy_scope(classifier.dtype_policy.name):  # same policy, so compile() scales the loss the same way
        x = inputs = keras.Input(backbone.output_shape[1:], name="features", dtype="float32")
        for layer in layers[layers.index(backbone) + 1:]:
            x = layer(x)
        return keras.Model(inputs, x, name="head")


def is_single_sigmoid(model: keras.Model) -> bool:
    return model.output_shape[-1] == 1

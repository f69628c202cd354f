"""Stage heads on top of a backbone's pooled features.

Paper: stage 1 adds global average pooling and a dense softmax layer; stages 2 and 3 add dense layers with
dropout and a sigmoid (binary) or softmax (multiclass) output. Pooling lives in the backbone, so a head only
sees the feature vector.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras


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
                     dropout: float = 0.3) -> keras.Model:
    inputs = keras.Input(backbone.input_shape[1:], name="image", dtype="float32")
    outputs = HEADS[head](backbone(inputs), n_classes, dense_units, dropout)
    return keras.Model(inputs, outputs, name="classifier")


def is_single_sigmoid(model: keras.Model) -> bool:
    return model.output_shape[-1] == 1

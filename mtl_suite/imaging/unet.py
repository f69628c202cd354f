"""Residual U-Net for white-blood-cell segmentation (paper section II-C, Fig. 5).

Encoder: residual blocks (two 3x3 conv + batch norm + ReLU, with a shortcut) and 2x2 max pooling; decoder:
2x upsampling, concatenation with the encoder's skip, residual block; a 1x1 convolution with a sigmoid gives the
mask. The model takes raw [0, 255] RGB and rescales inside the graph, so a served model needs no preprocessing.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from mtl_suite.errors import UserError
from mtl_suite.output import fit_lines_on_stderr

SMOOTH = 1.0
# Faster-moving BN statistics than the 0.99 default: small data sets give few steps per run, and inference
# (validation, prediction) uses the moving statistics.
BN_MOMENTUM = 0.9


def residual_block(x, filters: int, name: str):
    shortcut = x
    if x.shape[-1] != filters:  # a 1x1 projection where the width changes
        shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def build_unet(depth: int = 4, width: int = 16, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """`depth` poolings, `width` filters in the first block, doubled per level. Spatial sizes must be
    multiples of 2**depth (`predict_masks` pads for you)."""
    if not 1 <= depth <= 6:
        raise UserError(f"U-Net depth must be in 1..6. Received: {depth}")
    if width < 1:
        raise UserError(f"U-Net width must be at least 1. Received: {width}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    skips = []
    for level in range(depth):
        x = residual_block(x, width * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = residual_block(x, width * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = residual_block(x, width * 2**level, f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=f"res_unet_d{depth}_w{width}")


@keras.saving.register_keras_serializable(package="mtl_suite")
def dice_coef(y_true, y_pred):
    """Soft Dice over each image, averaged over the batch (empty masks score 1 when predicted empty)."""
    y_true = ops.cast(y_true, "float32")
    intersection = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return ops.mean((2.0 * intersection + SMOOTH) / (total + SMOOTH))


@keras.saving.register_keras_serializable(package="mtl_suite")
def iou_coef(y_true, y_pred):
    """IoU of the thresholded prediction (what a user of the mask sees), per image, averaged."""
    y_true = ops.cast(y_true, "float32")
    hard = ops.cast(y_pred > 0.5, "float32")
    intersection = ops.sum(y_true * hard, axis=(1, 2, 3))
    union = ops.sum(ops.maximum(y_true, hard), axis=(1, 2, 3))
    return ops.mean((intersection + SMOOTH) / (union + SMOOTH))


@keras.saving.register_keras_serializable(package="mtl_suite")
def bce_dice_loss(y_true, y_pred):
    """BCE keeps gradients useful on every pixel; Dice counters the background's majority (cells cover
    a few percent of a field)."""
    y_true = ops.cast(y_true, "float32")
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + (1.0 - dice_coef(y_true, y_pred))


def compile_unet(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bce_dice_loss,
                  metrics=[dice_coef, iou_coef])
    return model


def unet_depth(model: keras.Model) -> int:
    return sum(1 for layer in model.layers if isinstance(layer, layers.MaxPooling2D))


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad (N, H, W, C) up to multiples of `multiple`; returns the original (H, W) to crop back."""
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        mode = "reflect" if height > pad_h and width > pad_w else "edge"
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    return images, (height, width)


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(N, H, W) float probabilities for uint8 (N, H, W, 3) images of any size."""
    padded, (height, width) = pad_to_multiple(images, 2 ** unet_depth(model))
    probs = model.predict(padded, batch_size=batch_size, verbose=0)
    return probs[:, :height, :width, 0]


def fit_unet(model: keras.Model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
             epochs: int, batch_size: int = 8, augment=None, seed: int = 0, callbacks: list | None = None,
             verbose: int = 1) -> dict[str, list[float]]:
    """Plain Keras fit on in-memory (images uint8 (N,H,W,3), masks bool (N,H,W)); returns the history.
    With `augment`, every epoch trains on a freshly augmented copy of the training pairs (one seeded generator,
    so a run repeats under its seed); validation data is never augmented. Per-epoch arrays instead of a
    PyDataset: on a loaded 2-core machine the generator path was many times slower per step."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    validation = None
    if val is not None and len(val[0]):
        validation = (val[0], val[1][..., None].astype("float32"))
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        images, masks = augment(train[0], train[1], rng) if augment is not None else train
        with fit_lines_on_stderr():
            result = model.fit(images, masks[..., None].astype("float32"), batch_size=batch_size, shuffle=True,
                               validation_data=validation, initial_epoch=epoch, epochs=epoch + 1,
                               callbacks=callbacks or [], verbose=verbose)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
    return history

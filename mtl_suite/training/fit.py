"""Plain-Keras fitting of one classifier: head warm-up with the backbone frozen, then fine-tuning of the top
layers at a lower learning rate (paper Table I: Adam, lr 1e-3 with exponential decay, batch 48, shuffled each
epoch). Tracking enters only as injected Keras callbacks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from mtl_suite.config import TrainConfig
from mtl_suite.data.pipeline import BatchAugment, array_dataset
from mtl_suite.models.backbones import set_trainable_top
from mtl_suite.training.metrics import as_class_probabilities

# (phase name, first epoch number of the phase) -> callbacks for that phase, e.g. an MLflow epoch logger.
CallbackFactory = Callable[[str, int], list[keras.callbacks.Callback]]


@dataclass
class ArrayData:
    images: np.ndarray  # (N, H, W, 3) uint8, raw pixels: the model normalises inside
    labels: np.ndarray  # (N,) int class indices

    def __len__(self) -> int:
        return len(self.labels)


def compile_for(model: keras.Model, n_classes: int, learning_rate: float, decay_rate: float,
                steps_per_epoch: int) -> None:
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=max(1, steps_per_epoch),
                                                           decay_rate=decay_rate)
    if model.output_shape[-1] == 1:
        loss, accuracy = keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss, accuracy = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")
    # XLA off: Keras's "auto" compiles with XLA even on CPU, where compiling MobileNet's training step costs
    # tens of seconds per fold and per phase and gains nothing measurable on 2 cores.
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[accuracy], jit_compile=False)


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {k: 1.0 for k in range(n_classes)}
    out.update({int(k): float(w) for k, w in zip(present, weights)})
    return out


def fit_classifier(
    model: keras.Model,
    backbone: keras.Model,
    train: ArrayData,
    val: ArrayData | None,
    cfg: TrainConfig,
    n_classes: int,
    callbacks: CallbackFactory | None = None,
    augment: BatchAugment | None = None,
    verbose: int = 0,
) -> dict[str, list[float]]:
    """Train in two phases and return the merged per-epoch history (one list per Keras metric)."""
    history: dict[str, list[float]] = {}
    phases = [("warmup", cfg.warmup_epochs, 0, cfg.learning_rate),
              ("finetune", cfg.finetune_epochs, cfg.unfreeze_layers, cfg.finetune_learning_rate)]
    epoch = 0
    for phase, epochs, unfreeze, learning_rate in phases:
        if epochs <= 0 or (phase == "finetune" and unfreeze <= 0):
            continue
        set_trainable_top(backbone, unfreeze)
        steps = math.ceil(len(train) / cfg.batch_size)
        compile_for(model, n_classes, learning_rate, cfg.decay_rate, steps)
        phase_callbacks = list(callbacks(phase, epoch) if callbacks else [])
        if val is not None and cfg.early_stopping_patience > 0:
            phase_callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True))
        result = _fit(model, train, val, cfg, n_classes, epochs, phase_callbacks, augment, verbose)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        epoch += len(result.history.get("loss", []))
    return history


def _fit(model, train, val, cfg, n_classes, epochs, callbacks, augment, verbose):
    weights = class_weights(train.labels, n_classes) if cfg.class_weights else None
    validation = (val.images, _targets(model, val.labels)) if val is not None and len(val) else None
    y = _targets(model, train.labels)
    if augment is None:  # plain arrays: exactly what a bare model.fit does, no pipeline overhead
        return model.fit(train.images, y, batch_size=cfg.batch_size, epochs=epochs, shuffle=True,
                         validation_data=validation, class_weight=weights, callbacks=callbacks, verbose=verbose)
    dataset = array_dataset(train.images, y, cfg.batch_size, training=True, seed=cfg.seed, augment=augment)
    return model.fit(dataset, epochs=epochs, validation_data=validation, class_weight=weights,
                     callbacks=callbacks, verbose=verbose)


def _targets(model: keras.Model, labels: np.ndarray) -> np.ndarray:
    return labels.astype("float32") if model.output_shape[-1] == 1 else labels.astype("int32")


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, n_classes) probabilities; a single sigmoid output becomes two columns."""
    return as_class_probabilities(model.predict(images, batch_size=batch_size, verbose=0))

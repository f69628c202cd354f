"""Plain-Keras fitting of one classifier: head warm-up with the backbone frozen, then fine-tuning of the top
layers at a lower learning rate (paper Table I: Adam, lr 1e-3 with exponential decay, batch 48, shuffled each
epoch). Tracking enters only as injected Keras callbacks.

The warm-up trains on cached backbone features when nothing makes them vary (no augmentation; `feature_cache`):
the same layers, optimiser, shuffling, dropout draws, class weights and early stopping as a fit of the whole
classifier, so the result is the same (see tests/unit/test_feature_cache.py), without running the backbone every
epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from mtl_suite.config import TrainConfig
from mtl_suite.data.arrays import ArrayData
from mtl_suite.data.pipeline import BatchAugment, evaluation_batches, training_batches
from mtl_suite.models.backbones import set_trainable_top
from mtl_suite.models.ensemble import flipped, prediction_parts
from mtl_suite.models.heads import head_on_features
from mtl_suite.output import fit_lines_on_stderr
from mtl_suite.training.checkpoint import (
    EpochCheckpoint, EpochSeeding, FitCheckpoint, FitState, ResumableEarlyStopping, derived_seed,
    restore_training_state,
)
from mtl_suite.training.activations import (
    ActivationCache, ActivationStore, Cut, cut_activations, features_through_cut, find_cut, planned_cut,
)
from mtl_suite.training.features import FeatureStore, backbone_features, predict_in_chunks
from mtl_suite.training.metrics import as_class_probabilities
from mtl_suite.training.session import InterruptCheck

# (phase name, first epoch number of the phase) -> callbacks for that phase, e.g. an MLflow epoch logger.
CallbackFactory = Callable[[str, int], list[keras.callbacks.Callback]]


# train.execution "auto": the most optimizer steps a phase runs eagerly; a longer phase is traced. Every fold builds
# a new model, so every phase of every fold pays for tracing again. Break-even phase lengths measured with
# benchmarks/bench_execution.py (mobilenet_025, 128 px, batch 16, 2-core reference CPU): 16 steps for the head on
# cached features (tracing about 0.8 s), 7 with the backbone frozen and 11 fine-tuning it (tracing 3.4-7.5 s, each
# eager step through the backbone 0.35-0.5 s slower). A larger backbone makes both tracing and eager steps dearer,
# so the break-even moves little.
EAGER_STEP_LIMITS = {"features": 16, "images": 8}


def runs_eagerly(cfg: TrainConfig, phase_steps: int, on_features: bool = False) -> bool:
    """Whether a training phase of `phase_steps` optimizer steps runs eagerly (`on_features`: the head alone trains
    on cached backbone features). Decided by the phase's whole length, not by what is left of it, so a resumed fit
    runs the way the interrupted one did."""
    if cfg.execution == "auto":
        limit = EAGER_STEP_LIMITS["features" if on_features else "images"]
        return not cfg.jit_compile and phase_steps <= limit
    return cfg.execution == "eager"


def compile_for(model: keras.Model, n_classes: int, learning_rate: float, decay_rate: float,
                steps_per_epoch: int, jit_compile: bool = False, run_eagerly: bool = False) -> None:
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=max(1, steps_per_epoch),
                                                           decay_rate=decay_rate)
    if model.output_shape[-1] == 1:
        loss, accuracy = keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss, accuracy = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")
    # XLA off unless asked (train.jit_compile): Keras's "auto" compiles with XLA even on CPU, where compiling
    # MobileNet's training step costs tens of seconds per fold and per phase and gains nothing measurable on 2 cores.
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[accuracy],
                  jit_compile=jit_compile)
    # Set on the model, not passed to compile(): compile()'s arguments are saved with the model, and a model loaded
    # for serving should predict through a traced graph whatever its last training phase did.
    model.run_eagerly = run_eagerly


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
    feature_store: FeatureStore | None = None,
    checkpoint: FitCheckpoint | None = None,
    seed: int | None = None,
    activation_store: ActivationStore | None = None,
) -> dict[str, list[float]]:
    """Train in two phases and return the merged per-epoch history (one list per Keras metric).

    `feature_store`: where warm-up features are kept between runs (default: FeatureStore.default()).
    `activation_store`: where fine-tuning's activations at the cut are kept (default: ActivationStore.default()).
    `checkpoint`: saved after every epoch; a fit given the checkpoint of an interrupted one continues after its
    last finished epoch and ends with the weights the uninterrupted fit would have had.
    `seed`: data order, augmentation and dropout draws (default cfg.seed; cross-validation passes one per fold)."""
    seed = cfg.seed if seed is None else seed
    resumed = checkpoint.load() if checkpoint is not None else None
    history = {key: list(values) for key, values in resumed.history.items()} if resumed else {}
    for index, (phase, epochs, unfreeze, learning_rate) in enumerate(_phases(cfg)):
        if epochs <= 0 or (phase == "finetune" and unfreeze <= 0):
            continue
        if resumed is not None and index < resumed.phase_index:
            continue  # finished before the interruption: the checkpoint holds the weights it led to
        state = resumed if resumed is not None and index == resumed.phase_index else None
        set_trainable_top(backbone, unfreeze)
        on_features = unfreeze == 0 and augment is None and cfg.feature_cache
        if on_features:
            trained, train_part, val_part = _features_fit_inputs(model, backbone, train, val, cfg, feature_store,
                                                                 activation_store)
        else:
            trained, train_part, val_part = _activations_fit_inputs(model, backbone, train, val, cfg, augment,
                                                                    activation_store)
        steps = _steps(train, cfg)
        compile_for(trained, n_classes, learning_rate, cfg.decay_rate, steps, cfg.jit_compile,
                    runs_eagerly(cfg, epochs * steps, on_features))
        if state is not None:
            restore_training_state(trained, state)
            if state.phase_finished:
                trained.set_weights(state.final_weights(_restores_best(val, cfg)))
                continue
        first_epoch = state.phase_epochs_done if state is not None else 0
        injected = list(callbacks(phase, _epochs_so_far(history) - first_epoch) if callbacks else [])
        if trained is not model:  # injected callbacks see the classifier, as on the uncached path
            injected = [ShowClassifier(callback, model) for callback in injected]
        stopping = _early_stopping(val, cfg, state)
        own = [InterruptCheck(), EpochSeeding(seed, phase), *stopping]
        if checkpoint is not None:
            own.append(EpochCheckpoint(checkpoint, index, epochs, history, stopping[0] if stopping else None))
        result = _fit(trained, train_part, val_part, cfg, n_classes, epochs, injected + own, augment, verbose,
                      derived_seed(seed, phase), first_epoch)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    return history


def activation_cache_for(cfg: TrainConfig, store: ActivationStore | None = None) -> ActivationCache | None:
    """How a model trained with `cfg` runs through its cut (None: through the whole network)."""
    if cfg.activation_cut == "none":
        return None
    return ActivationCache(store if store is not None else ActivationStore.default(), cfg.activation_cut,
                           cfg.activation_dtype, trained_top_layers(cfg))


def trained_top_layers(cfg: TrainConfig) -> int:
    """How many top backbone layers training leaves trainable: the fine-tuning phase's, if there is one."""
    return cfg.unfreeze_layers if cfg.finetune_epochs > 0 else 0


def feature_store_for(cfg: TrainConfig) -> FeatureStore | None:
    """Where a fit with `cfg` keeps frozen-backbone features (None: the feature cache is off)."""
    return FeatureStore.default() if cfg.feature_cache else None


def _phases(cfg: TrainConfig) -> list[tuple[str, int, int, float]]:
    """(name, epochs, top backbone layers trainable, learning rate) of each training phase, in order."""
    return [("warmup", cfg.warmup_epochs, 0, cfg.learning_rate),
            ("finetune", cfg.finetune_epochs, cfg.unfreeze_layers, cfg.finetune_learning_rate)]


def _epochs_so_far(history: dict[str, list[float]]) -> int:
    return len(history.get("loss", []))


def _steps(train: ArrayData, cfg: TrainConfig) -> int:
    return math.ceil(len(train) / cfg.batch_size)


def _restores_best(val: ArrayData | None, cfg: TrainConfig) -> bool:
    return val is not None and cfg.early_stopping_patience > 0


def _early_stopping(val: ArrayData | None, cfg: TrainConfig, state: FitState | None) -> list[keras.callbacks.Callback]:
    if not _restores_best(val, cfg):
        return []
    return [ResumableEarlyStopping(monitor="val_loss", patience=cfg.early_stopping_patience,
                                   restore_best_weights=True, restored=state)]


def _features_fit_inputs(model, backbone, train, val, cfg, store, activation_store):
    """The frozen warm-up as a fit of the head layers on backbone features. The head model shares the classifier's
    layer objects, so the classifier holds the trained (or early-stopping-restored) weights afterwards."""
    store = store if store is not None else FeatureStore.default()
    compute = _through_cut(model, backbone, activation_cache_for(cfg, activation_store), cfg.batch_size)
    features = ArrayData(backbone_features(backbone, train.images, store, cfg.batch_size, compute), train.labels)
    val_features = None
    if val is not None:
        val_features = ArrayData(backbone_features(backbone, val.images, store, cfg.batch_size, compute), val.labels)
    return head_on_features(model, backbone), features, val_features


def _through_cut(model, backbone, cache: ActivationCache | None, batch_size: int):
    """How the frozen backbone's features are computed when fine-tuning will cut it: through cached activations,
    so the bottom of the network runs once per image in the whole run (None: through the backbone)."""
    cut = planned_cut(model, backbone, cache)
    if cut is None:
        return None
    return lambda images: features_through_cut(cut, images, cache, batch_size)


def _activations_fit_inputs(model, backbone, train, val, cfg, augment, store):
    """Fine-tuning as a fit of the layers above the cut on cached activations (training/activations.py), when the
    images are the same every epoch (no online augmentation); else the whole classifier on the images."""
    cut = find_cut(model, backbone, cfg.activation_cut, cfg.activation_dtype) if augment is None else None
    if cut is None:
        return model, train, val
    cache = activation_cache_for(cfg, store)

    def activations(part: ArrayData) -> ArrayData:
        return ArrayData(cut_activations(cut, part.images, cache.store, cache.dtype, cfg.batch_size), part.labels)

    return cut.top, activations(train), (activations(val) if val is not None else None)


class ShowClassifier(keras.callbacks.Callback):
    """Runs an injected callback during a head-on-features fit as if the whole classifier were training: its
    `self.model` is the classifier (raw images in, as on the uncached path), and a stop it asks for
    (`model.stop_training = True`) reaches the loop that is actually running. Only the hooks the callback
    overrides are forwarded, so Keras keeps dispatching batches asynchronously when it can."""

    HOOKS = ("on_batch_begin", "on_batch_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
             "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end", "on_predict_batch_begin",
             "on_predict_batch_end", "on_train_end", "on_test_begin", "on_test_end", "on_predict_begin",
             "on_predict_end")

    def __init__(self, inner: keras.callbacks.Callback, classifier: keras.Model):
        super().__init__()
        self.inner, self.classifier = inner, classifier
        for name in self.HOOKS:
            if getattr(type(inner), name) is not getattr(keras.callbacks.Callback, name):
                setattr(self, name, self._forwarder(name))

    def _forwarder(self, name: str):
        def hook(*args, **kwargs):
            getattr(self.inner, name)(*args, **kwargs)
            if getattr(self.classifier, "stop_training", False):
                self.model.stop_training = True
        return hook

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(self.classifier)

    def on_train_begin(self, logs=None):
        self.classifier.stop_training = False  # a stale request from an earlier phase must not end this one
        self.inner.on_train_begin(logs)
        if self.classifier.stop_training:
            self.model.stop_training = True


def _fit(model, train, val, cfg, n_classes, epochs, callbacks, augment, verbose, seed, first_epoch):
    weights = class_weights(train.labels, n_classes) if cfg.class_weights else None
    validation = (evaluation_batches(val.images, _targets(model, val.labels), cfg.batch_size)
                  if val is not None and len(val) else None)
    batches, steps = training_batches(train.images, _targets(model, train.labels), cfg.batch_size, seed,
                                      first_epoch, epochs, augment)
    with fit_lines_on_stderr():
        return model.fit(batches, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=steps, shuffle=False,
                         validation_data=validation, class_weight=weights, callbacks=callbacks, verbose=verbose)


def _targets(model: keras.Model, labels: np.ndarray) -> np.ndarray:
    return labels.astype("float32") if model.output_shape[-1] == 1 else labels.astype("int32")


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 64,
                  feature_store: FeatureStore | None = None,
                  activation_cache: ActivationCache | None = None) -> np.ndarray:
    """(N, n_classes) probabilities; a single sigmoid output becomes two columns.

    With a `feature_store`, while the classifier's backbone is still entirely frozen (no fine-tune phase ran), the
    backbone's part comes from the store and only the head runs. A fold's validation images were featurised for its
    warm-up already, so predicting them is a lookup and a head pass, not a trace and a run of the whole network
    (tuning trials predict after every epoch). Same probabilities within float tolerance; the store is keyed by the
    backbone's weights, so a changed backbone is never answered from stale features.

    With an `activation_cache`, after fine-tuning, the part below the cut comes from the cache and only the top runs,
    the same way.

    A fold ensemble or flips wrapper (models/ensemble.py) is scored member by member, each through the caches, and
    averaged: what its Average layer computes."""
    parts = prediction_parts(model)
    if parts is not None:
        return np.mean([predict_proba(member, flipped(images, axes), batch_size, feature_store, activation_cache)
                        for axes, member in parts], axis=0)
    backbone = _frozen_backbone(model) if feature_store is not None and feature_store.max_bytes > 0 else None
    if backbone is None:
        cut = _fine_tuned_cut(model, activation_cache)
        if cut is not None:
            activations = cut_activations(cut, images, activation_cache.store, activation_cache.dtype, batch_size)
            return as_class_probabilities(predict_in_chunks(cut.top, activations, batch_size))
        return as_class_probabilities(predict_in_chunks(model, images, batch_size))
    compute = _through_cut(model, backbone, activation_cache, batch_size)
    features = backbone_features(backbone, images, feature_store, batch_size, compute)
    return as_class_probabilities(_run_head(head_on_features(model, backbone), features, batch_size))


def _fine_tuned_cut(model: keras.Model, cache: ActivationCache | None) -> Cut | None:
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if cache is None or len(nested) != 1 or not nested[0].trainable_weights:
        return None
    return find_cut(model, nested[0], cache.cut, cache.dtype)


def _frozen_backbone(model: keras.Model) -> keras.Model | None:
    """The classifier's backbone (its one nested model, see build_classifier) when none of its weights train."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1 or nested[0].trainable_weights:
        return None
    return nested[0]


def _run_head(head: keras.Model, features: np.ndarray, batch_size: int) -> np.ndarray:
    """The head called eagerly, batch by batch: a few dense layers, cheaper to run than to trace a predict step for
    (a new one every fold and epoch). No cache of the head model: a weakref-keyed one swallowed Ctrl-C (an
    interrupt that lands in a weakref callback during garbage collection is printed and ignored)."""
    if len(features) == 0:
        return np.zeros((0, head.output_shape[-1]), "float32")
    return np.concatenate([keras.ops.convert_to_numpy(head(features[start:start + batch_size], training=False))
                           for start in range(0, len(features), max(1, batch_size))])

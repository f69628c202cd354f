"""Frozen-phase feature caching: the cached warm-up gives the uncached fit's results, and the disk store hits,
misses, invalidates and evicts as it should."""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.models.backbones import build_backbone, set_trainable_top
from mtl_suite.models.heads import build_classifier
from mtl_suite.training import features as features_module
from mtl_suite.training import fit as fit_module
from mtl_suite.training.features import FeatureStore, backbone_features, feature_key
from mtl_suite.training.fit import ArrayData, fit_classifier, predict_proba

SIZE = 32


def toy_data(n_classes: int, n: int = 36, seed: int = 0) -> tuple[ArrayData, ArrayData]:
    """Learnable (brightness per class), imbalanced (class weights matter) images and a validation part."""
    rng = np.random.default_rng(seed)
    labels = np.array([i % n_classes if i % 4 else 0 for i in range(n)])
    images = rng.integers(0, 120, (n, SIZE, SIZE, 3)).astype(np.uint8)
    images += (labels * 60).astype(np.uint8)[:, None, None, None]
    return ArrayData(images[:-12], labels[:-12]), ArrayData(images[-12:], labels[-12:])


class Recorder(keras.callbacks.Callback):
    """What an injected callback (e.g. the MLflow epoch logger) sees: the model's input shape and the log keys."""

    def __init__(self, phase: str, seen: list):
        super().__init__()
        self.phase, self.seen = phase, seen

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((self.phase, tuple(self.model.input_shape), tuple(sorted(logs or {}))))


def run(cfg: TrainConfig, n_classes: int, store: FeatureStore, extra=None):
    train, val = toy_data(n_classes)
    keras.utils.set_random_seed(cfg.seed)
    backbone, _ = build_backbone("tiny", SIZE, "none", cfg.precision)
    # dropout: its random draws must match too
    model = build_classifier(backbone, "dense_dropout", n_classes, (16,), 0.5, cfg.precision)
    seen: list = []

    def factory(phase, first_epoch):
        return [Recorder(phase, seen)] + (extra() if extra else [])

    history = fit_classifier(model, backbone, train, val, cfg, n_classes, factory, feature_store=store)
    return history, model.predict(val.images, verbose=0), seen


@pytest.mark.slow
@pytest.mark.parametrize(("n_classes", "precision"), [(2, "float32"), (3, "float32"), (3, "mixed")])
def test_cached_warmup_gives_the_uncached_results(tmp_path, n_classes, precision):
    # lr 0.3 with patience 1: early stopping fires during the warm-up and restores the best epoch's weights.
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=6, finetune_epochs=2, unfreeze_layers=2,
                      batch_size=8, learning_rate=0.3, early_stopping_patience=1, class_weights=True, seed=3,
                      precision=precision)
    plain_store, cached_store = FeatureStore(tmp_path / "plain", 2**30), FeatureStore(tmp_path / "cached", 2**30)
    plain = run(dataclasses.replace(cfg, feature_cache=False), n_classes, plain_store)
    cached = run(cfg, n_classes, cached_store)

    assert plain_store.entries() == [] and len(cached_store.entries()) == 2  # train and validation features
    plain_history, cached_history = plain[0], cached[0]
    assert sorted(cached_history) == sorted(plain_history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    warmup_epochs = sum(1 for phase, _, _ in plain[2] if phase == "warmup")
    assert warmup_epochs < cfg.warmup_epochs, "early stopping should have fired: the test would not cover it"
    for key in plain_history:  # measured: equal to the last bit on CPU; 1e-5 leaves room for other kernels
        np.testing.assert_allclose(cached_history[key], plain_history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(cached[1], plain[1], rtol=1e-5, atol=1e-6)  # after fine-tuning too
    # Injected callbacks see the whole classifier (raw images in) and the same log keys in both paths.
    assert cached[2] == plain[2]
    assert all(shape == (None, SIZE, SIZE, 3) for _, shape, _ in cached[2])


class StopAtFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def test_a_stop_requested_by_an_injected_callback_ends_the_cached_warmup(tmp_path):
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=4, finetune_epochs=0, batch_size=8,
                      early_stopping_patience=0)
    history, _, seen = run(cfg, 2, FeatureStore(tmp_path, 2**30), extra=lambda: [StopAtFirstEpoch()])
    assert len(history["loss"]) == 1 and len(seen) == 1


def test_a_classifier_trained_on_cached_features_saves_and_loads_whole(tmp_path):
    train, val = toy_data(3)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (8,), 0.2)
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=2, finetune_epochs=0, batch_size=8)
    fit_classifier(model, backbone, train, val, cfg, 3, feature_store=FeatureStore(tmp_path / "f", 2**30))
    model.save(tmp_path / "model.keras")  # the head model's extra use of the layers must not leak into the save
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(loaded.predict(val.images, verbose=0), model.predict(val.images, verbose=0),
                               rtol=1e-6)


def test_augmentation_or_the_flag_turns_the_cache_off(tmp_path):
    store = FeatureStore(tmp_path, 2**30)
    train, val = toy_data(2)
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=1, finetune_epochs=0, batch_size=8)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 2, (8,), 0.0)
    fit_classifier(model, backbone, train, val, cfg, 2, augment=lambda batch, rng: batch, feature_store=store)
    fit_classifier(model, backbone, train, val, dataclasses.replace(cfg, feature_cache=False), 2,
                   feature_store=store)
    assert store.entries() == []


def test_prediction_of_a_frozen_backbone_runs_only_the_head_on_cached_features(tmp_path, monkeypatch):
    """The fold's validation predictions after a cached warm-up: the features come from the store (no backbone
    run), the probabilities equal the whole network's; once the backbone is fine-tuned, the whole network runs."""
    store = FeatureStore(tmp_path, 2**30)
    train, val = toy_data(3)
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=2, finetune_epochs=0, batch_size=8)
    keras.utils.set_random_seed(0)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (8,), 0.2)
    fit_classifier(model, backbone, train, val, cfg, 3, feature_store=store)  # stores the validation features
    assert fit_module._frozen_backbone(model) is backbone
    calls = counting(monkeypatch)
    whole = predict_proba(model, val.images, 8)
    whole_network_runs = []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda *a, **k: whole_network_runs.append(1) or predict(*a, **k))
    on_features = predict_proba(model, val.images, 8, store)
    assert calls == []  # a lookup: the backbone did not run
    assert whole_network_runs == []  # nor the classifier: only its head, on the stored features
    np.testing.assert_allclose(on_features, whole, rtol=1e-5, atol=1e-6)
    assert on_features.shape == (len(val), 3)

    set_trainable_top(backbone, 2)  # as a fine-tune phase leaves it
    assert fit_module._frozen_backbone(model) is None
    entries = store.entries()
    np.testing.assert_allclose(predict_proba(model, val.images, 8, store), whole, rtol=1e-5, atol=1e-6)
    assert store.entries() == entries and calls == []  # the whole network ran; nothing read or written
    assert whole_network_runs == [1]


# --- the disk store ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backbone():
    keras.utils.set_random_seed(0)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    return backbone


def counting(monkeypatch) -> list:
    calls: list = []
    compute = features_module._compute

    def counted(backbone, images, batch_size):
        calls.append(len(images))
        return compute(backbone, images, batch_size)

    monkeypatch.setattr(features_module, "_compute", counted)
    return calls


def test_second_request_is_a_hit_with_identical_features(tmp_path, tiny_backbone, monkeypatch):
    calls = counting(monkeypatch)
    store = FeatureStore(tmp_path, 2**30)
    images = toy_data(2)[0].images
    first = backbone_features(tiny_backbone, images, store)
    second = backbone_features(tiny_backbone, images.copy(), store)  # same content, another array object
    assert calls == [len(images)]
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == (len(images), tiny_backbone.output_shape[-1])
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npy"]  # no temporary files left behind


def test_changed_images_or_weights_miss(tmp_path, tiny_backbone, monkeypatch):
    calls = counting(monkeypatch)
    store = FeatureStore(tmp_path, 2**30)
    images = toy_data(2)[0].images
    backbone_features(tiny_backbone, images, store)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # one bit of one pixel
    backbone_features(tiny_backbone, changed, store)
    backbone_features(tiny_backbone, images[:10], store)  # fewer images
    assert len(calls) == 3

    keras.utils.set_random_seed(1)
    other, _ = build_backbone("tiny", SIZE, "none")  # same architecture, other weights
    key = feature_key(tiny_backbone, images)
    assert feature_key(other, images) != key
    variable = other.get_layer("base").get_layer("tiny_bn0").moving_mean  # a non-trainable weight counts too
    other.set_weights(tiny_backbone.get_weights())
    assert feature_key(other, images) == key  # same content, built separately: same key
    variable.assign(variable.numpy() + 0.5)
    assert feature_key(other, images) != key
    fresh = backbone_features(other, images, store)
    assert len(calls) == 4
    assert not np.allclose(fresh, store.load(key))


def test_unreadable_entry_is_recomputed(tmp_path, tiny_backbone, monkeypatch):
    calls = counting(monkeypatch)
    store = FeatureStore(tmp_path, 2**30)
    images = toy_data(2)[0].images
    good = backbone_features(tiny_backbone, images, store)
    store.path(feature_key(tiny_backbone, images)).write_bytes(b"not an array")
    np.testing.assert_array_equal(backbone_features(tiny_backbone, images, store), good)
    assert len(calls) == 2


def test_size_limit_evicts_the_least_recently_used(tmp_path):
    entry = np.zeros((256, 64), "float32")  # 64 KiB (+128 bytes of .npy header)
    store = FeatureStore(tmp_path, 3 * entry.nbytes + 1024)  # room for three entries, not four
    for i, key in enumerate(["a", "b", "c"]):
        store.save(key, entry + i)
        os.utime(store.path(key), (time.time() - 100 + i, time.time() - 100 + i))  # a < b < c in age
    assert store.load("a") is not None  # use refreshes "a": now "b" is the oldest
    store.save("d", entry + 3)
    assert {p.stem for p, _, _ in store.entries()} == {"a", "c", "d"}
    assert sum(size for _, size, _ in store.entries()) <= store.max_bytes
    np.testing.assert_array_equal(store.load("d"), entry + 3)


def test_an_entry_larger_than_the_limit_or_a_zero_limit_writes_nothing(tmp_path, tiny_backbone):
    FeatureStore(tmp_path, 10).save("big", np.zeros(100, "float32"))
    images = toy_data(2)[0].images
    backbone_features(tiny_backbone, images, FeatureStore(tmp_path, 0))
    assert list(tmp_path.iterdir()) == []


def test_default_store_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_SUITE_CACHE", str(tmp_path))
    monkeypatch.setenv("MTL_SUITE_FEATURE_CACHE_MB", "1.5")
    store = FeatureStore.default()
    assert store.root == tmp_path / "features" and store.max_bytes == int(1.5 * 2**20)

"""Fine-tuning on cached activations: the same weights and metrics as fine-tuning through the whole network, the full
classifier predicts what the cached top predicted, a cut that would leave a trainable layer below it is refused,
and each image's activations are computed once."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import build_backbone, set_trainable_top
from mtl_suite.models.heads import build_classifier
from mtl_suite.training import activations as activations_module
from mtl_suite.training.activations import ActivationStore, cut_activations, find_cut
from mtl_suite.training.fit import ArrayData, activation_cache_for, fit_classifier, predict_proba


def toy_data(size: int, n: int = 30, seed: int = 0) -> tuple[ArrayData, ArrayData]:
    rng = np.random.default_rng(seed)
    labels = np.array([i % 3 if i % 4 else 0 for i in range(n)])
    images = rng.integers(0, 120, (n, size, size, 3)).astype(np.uint8)
    images += (labels * 60).astype(np.uint8)[:, None, None, None]
    return ArrayData(images[:-10], labels[:-10]), ArrayData(images[-10:], labels[-10:])


def fine_tune(backbone_name: str, size: int, cfg: TrainConfig, store: ActivationStore):
    train, val = toy_data(size)
    keras.utils.set_random_seed(cfg.seed)
    backbone, _ = build_backbone(backbone_name, size, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (16,), 0.5)  # dropout: its draws must match too
    history = fit_classifier(model, backbone, train, val, cfg, 3, activation_store=store)
    return history, model, backbone, val


CASES = [("tiny", 32, 2), ("xception", 71, 12)]  # a chain, and a network with skip connections (cut at a block end)


@pytest.mark.slow
@pytest.mark.parametrize(("backbone_name", "size", "unfreeze"), CASES)
def test_cached_fine_tuning_gives_the_uncached_weights_and_metrics(tmp_path, backbone_name, size, unfreeze):
    # lr high, patience 1: early stopping fires in the fine-tuning phase and restores its best epoch.
    cfg = TrainConfig(backbone=backbone_name, weights="none", warmup_epochs=1, finetune_epochs=4,
                      unfreeze_layers=unfreeze, batch_size=8, finetune_learning_rate=0.05, early_stopping_patience=1,
                      seed=5)
    store = ActivationStore(tmp_path / "activations", 2**30)
    plain = fine_tune(backbone_name, size, dataclasses.replace(cfg, activation_cut="none"), store)
    assert store.entries() == []
    cached = fine_tune(backbone_name, size, cfg, store)
    assert len(store.entries()) == 30  # one file per image: 20 training and 10 validation images

    for key in plain[0]:  # measured: equal to float rounding on CPU
        np.testing.assert_allclose(cached[0][key], plain[0][key], rtol=1e-4, atol=1e-5, err_msg=key)
    for ours, theirs in zip(cached[1].get_weights(), plain[1].get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_full_classifier_predicts_what_the_cached_top_predicted(tmp_path):
    cfg = TrainConfig(backbone="xception", weights="none", warmup_epochs=0, finetune_epochs=2, unfreeze_layers=12,
                      batch_size=8, seed=1)
    store = ActivationStore(tmp_path / "activations", 2**30)
    _, model, backbone, val = fine_tune("xception", 71, cfg, store)
    cut = find_cut(model, backbone)
    assert cut is not None and cut.layer.startswith("add")  # a block boundary of Xception's middle flow
    whole = model.predict(val.images, verbose=0)
    real_predict = model.predict
    model.predict = lambda *args, **kwargs: pytest.fail("predicted through the whole network, not the cached top")
    through_top = predict_proba(model, val.images, 8, activation_cache=activation_cache_for(cfg))
    model.predict = real_predict
    np.testing.assert_allclose(through_top, whole, rtol=1e-4, atol=1e-5)


def test_each_image_is_extracted_once_and_float16_stays_within_tolerance(tmp_path, monkeypatch):
    backbone, _ = build_backbone("tiny", 32, "none")
    model = build_classifier(backbone, "dense_dropout", 3)
    set_trainable_top(backbone, 1)
    images = toy_data(32)[0].images
    store = ActivationStore(tmp_path / "activations", 2**30)
    cut = find_cut(model, backbone)
    digests = []
    real_digest = activations_module.backbone_digest
    with monkeypatch.context() as patch:
        patch.setattr(activations_module, "backbone_digest", lambda model: digests.append(1) or real_digest(model))
        first = cut_activations(cut, images, store, "float32")
    assert len(digests) == 1, "the weights below the cut are hashed once per call, not once per image"
    calls = []
    original = cut.lower.predict
    cut.lower.predict = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    again = cut_activations(cut, images[::-1], store, "float32")  # the same images, another order: all cached
    assert calls == [] and np.array_equal(again, first[::-1])

    half = cut_activations(cut, images, store, "float16")
    assert half.dtype == np.float16 and calls  # another storage dtype is another entry
    np.testing.assert_allclose(half.astype("float32"), first, rtol=2e-3, atol=2e-3)


def test_a_cut_above_a_trainable_layer_is_refused_naming_the_layer():
    backbone, _ = build_backbone("tiny", 32, "none")
    model = build_classifier(backbone, "dense_dropout", 3)
    set_trainable_top(backbone, 2)  # tiny_conv1 and tiny_conv2 train
    with pytest.raises(UserError, match="trainable layer tiny_conv1 is at or below it"):
        find_cut(model, backbone, "tiny_relu1")
    with pytest.raises(UserError, match="not a layer"):
        find_cut(model, backbone, "nope")
    assert find_cut(model, backbone, "tiny_relu0").layer == "tiny_relu0"
    assert find_cut(model, backbone, "none") is None


def test_a_cut_crossed_by_a_skip_connection_is_refused():
    backbone, _ = build_backbone("xception", 71, "none")
    model = build_classifier(backbone, "dense_dropout", 3)
    set_trainable_top(backbone, 2)  # block14's two separable convolutions
    inside_block = "block13_sepconv1_act"  # the block's shortcut reads the tensor before it
    with pytest.raises(UserError, match="skip connection"):
        find_cut(model, backbone, inside_block)


def test_offline_augmentation_balances_the_training_part_only_and_repeats_with_its_seed():
    from mtl_suite.training.cv import training_part

    train, _ = toy_data(32)
    outside = np.full((4, 32, 32, 3), 255, np.uint8)  # white: no augmented copy of a training image looks like it
    data = ArrayData(np.concatenate([train.images, outside]), np.concatenate([train.labels, [1, 1, 2, 2]]))
    index = np.arange(len(train))  # the last four images are not in the training part
    cfg = TrainConfig(augment="paper", augment_mode="offline")
    part = training_part(data, index, cfg, seed=7)
    counts = np.bincount(part.labels)
    assert counts.tolist() == [counts.max()] * 3 and len(part) > len(train)
    assert np.array_equal(part.images[:len(train)], train.images)  # the originals first, unchanged
    copies = part.images[len(train):]
    assert not (copies == 255).all(axis=(1, 2, 3)).any()
    assert np.array_equal(training_part(data, index, cfg, seed=7).images, part.images)
    assert np.array_equal(training_part(data, index, dataclasses.replace(cfg, augment_mode="online"), 7).images,
                          train.images)


def test_a_model_built_again_finds_its_activations_although_keras_renamed_its_layers(tmp_path):
    """Xception's Add layers are unnamed: Keras numbers them per process (add_11, add_23, ...), so every fold's new
    model has other names. The cache goes by the cut's position and the weights, so it still hits."""
    store = ActivationStore(tmp_path / "activations", 2**30)
    images = toy_data(71, n=6)[0].images
    cuts = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        backbone, _ = build_backbone("xception", 71, "none")
        set_trainable_top(backbone, 2)
        cuts.append(find_cut(build_classifier(backbone, "dense_dropout", 3), backbone))
    assert cuts[0].layer != cuts[1].layer and cuts[0].index == cuts[1].index
    first = cut_activations(cuts[0], images, store, "float32")
    cuts[1].lower.predict = lambda *args, **kwargs: pytest.fail("extracted again")
    np.testing.assert_array_equal(cut_activations(cuts[1], images, store, "float32"), first)


def test_warm_up_features_through_the_cut_come_chunk_by_chunk_and_equal_the_backbones(tmp_path, monkeypatch):
    """The warm-up's features are computed CHUNK images at a time (the stage's activations are never all held at
    once): the same features as the frozen backbone's own, in order, cached, with the weights hashed once."""
    from mtl_suite.training.activations import ActivationCache, features_through_cut

    backbone, _ = build_backbone("tiny", 32, "none")
    model = build_classifier(backbone, "dense_dropout", 3)
    images = toy_data(32)[0].images  # 20 images: chunks of 7, 7 and 6
    set_trainable_top(backbone, 1)
    cut = find_cut(model, backbone)
    set_trainable_top(backbone, 0)
    store = ActivationStore(tmp_path / "activations", 2**30)
    cache = ActivationCache(store=store, unfreeze_layers=1)
    monkeypatch.setattr(activations_module, "CHUNK", 7)
    digests, real_digest = [], activations_module.backbone_digest
    monkeypatch.setattr(activations_module, "backbone_digest", lambda m: digests.append(1) or real_digest(m))

    sizes, pooled = [], cut.pooled.predict
    cut.pooled.predict = lambda activations, **kwargs: sizes.append(len(activations)) or pooled(activations, **kwargs)

    features = features_through_cut(cut, images, cache, batch_size=4)
    assert sizes == [7, 7, 6]
    np.testing.assert_allclose(features, backbone.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert len(store.entries()) == len(images) and len(digests) == 1

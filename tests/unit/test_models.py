"""Backbones: registry, in-graph normalisation, real ImageNet weights, weight transfer between stages."""

from __future__ import annotations

import glob

import keras
import numpy as np
import pytest

from mtl_suite.errors import UserError
from mtl_suite.models.backbones import BACKBONES, build_backbone, set_trainable_top
from mtl_suite.models.heads import build_classifier
from mtl_suite.models.transfer import load_backbone, save_backbone
from mtl_suite.paths import SAMPLE_IMAGES

PAPER_AND_SMALL = ["inception_v3", "xception", "inception_resnet_v2", "mobilenet_025", "mobilenet_v2",
                   "efficientnet_b0", "tiny"]


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        build_backbone("resnet9000", 128)
    for name in PAPER_AND_SMALL:
        assert name in str(err.value)


def test_image_size_below_minimum_is_refused():
    with pytest.raises(UserError, match="below inception_v3's minimum of 75"):
        build_backbone("inception_v3", 64, "none")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_AND_SMALL)
def test_every_backbone_builds_at_its_minimum_size_and_normalises_inside(name):
    spec = BACKBONES[name]
    backbone, choice = build_backbone(name, spec.min_size, "none")
    assert choice.kind == "none"
    raw = np.random.default_rng(0).integers(0, 256, (2, spec.min_size, spec.min_size, 3)).astype("float32")
    # The model's own normalisation layer, applied by hand, then the base: must equal the model on raw pixels.
    normalised = backbone.get_layer("normalise")(raw)
    base_features = keras.ops.mean(backbone.get_layer("base")(normalised, training=False), axis=(1, 2))
    np.testing.assert_allclose(backbone(raw), base_features, rtol=1e-4, atol=1e-4)
    scaled = keras.ops.convert_to_numpy(normalised)
    if name == "efficientnet_b0":  # rescales inside its own graph: raw pixels pass through
        np.testing.assert_array_equal(scaled, raw)
    else:
        assert scaled.min() >= -1.0001 and scaled.max() <= 1.0001 and scaled.max() - scaled.min() > 0.5


def _crops(n_images: int = 8, per_image: int = 3, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    from mtl_suite.data.images import read_rgb, resize

    paths = sorted(glob.glob(str(SAMPLE_IMAGES / "*" / "*.jpg")))[::12][:n_images]
    rng = np.random.default_rng(0)
    crops, owner = [], []
    for i, path in enumerate(paths):
        image = read_rgb(path)
        for _ in range(per_image):
            y, x = rng.integers(0, image.shape[0] - 112, 2)
            crops.append(resize(image[y:y + 112, x:x + 112], size))
            owner.append(i)
    return np.stack(crops).astype("float32"), np.array(owner)


def _within_minus_across_similarity(weights: str) -> float:
    crops, owner = _crops()
    keras.utils.set_random_seed(1)
    backbone, _ = build_backbone("mobilenet_025", 96, weights)
    features = backbone.predict(crops, verbose=0)
    features = features - features.mean(axis=0)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-9
    similarity = features @ features.T
    same = owner[:, None] == owner[None, :]
    off_diagonal = ~np.eye(len(owner), dtype=bool)
    return float(similarity[same & off_diagonal].mean() - similarity[~same].mean())


def test_bundled_mobilenet_weights_are_real_imagenet_features():
    """ImageNet features put crops of one smear closer together than crops of different smears; a randomly
    initialised network (BN in inference mode) gives near-constant features and no such structure."""
    pretrained = _within_minus_across_similarity("imagenet")
    random_init = _within_minus_across_similarity("none")
    assert pretrained > 0.2, pretrained
    assert random_init < 0.1, random_init


def test_imagenet_weights_provenance_is_the_bundled_file_with_its_hash():
    _, choice = build_backbone("mobilenet_025", 64, "imagenet")
    assert choice.kind == "imagenet"
    assert choice.sha256 == BACKBONES["mobilenet_025"].bundled_weights[1]


def test_weights_file_of_another_architecture_names_the_problem(tmp_path):
    mobilenet, _ = build_backbone("mobilenet_025", 64, "none")
    path = tmp_path / "mobilenet.weights.h5"
    mobilenet.get_layer("base").save_weights(path)
    with pytest.raises(UserError, match="does not fit backbone mobilenet_v2"):
        build_backbone("mobilenet_v2", 64, str(path))


def test_missing_weights_file_is_a_user_error():
    with pytest.raises(UserError, match="no such file"):
        build_backbone("mobilenet_025", 64, "/nonexistent/weights.h5")


def test_saved_backbone_loads_exactly_and_refuses_another_architecture(tmp_path):
    keras.utils.set_random_seed(0)
    source, _ = build_backbone("tiny", 32, "none")
    target, _ = build_backbone("tiny", 48, "none")  # another input size: same weights fit
    path = save_backbone(source, tmp_path / "b.npz", {"backbone": "tiny"})
    assert any(not np.array_equal(a, b) for a, b in zip(source.get_weights(), target.get_weights()))
    meta = load_backbone(target, path)
    assert meta["backbone"] == "tiny"
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)
    other, _ = build_backbone("mobilenet_025", 32, "none")
    with pytest.raises(UserError, match="do not fit this backbone"):
        load_backbone(other, path)


def test_fine_tuning_unfreezes_only_top_non_bn_layers():
    backbone, _ = build_backbone("mobilenet_025", 64, "none")
    unfrozen = set_trainable_top(backbone, 4)
    base = backbone.get_layer("base")
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert unfrozen == 4 and len(trainable) == 4
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert set_trainable_top(backbone, 0) == 0 and not backbone.trainable_weights


@pytest.mark.parametrize("n_classes,units", [(2, 1), (4, 4)])
def test_heads_give_sigmoid_for_binary_and_softmax_for_multiclass(n_classes, units):
    backbone, _ = build_backbone("tiny", 32, "none")
    model = build_classifier(backbone, "dense_dropout", n_classes, (16,), 0.2)
    out = model.predict(np.zeros((3, 32, 32, 3), "float32"), verbose=0)
    assert out.shape == (3, units)
    if units > 1:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_mixed_precision_computes_in_16_bits_with_a_float32_output_layer():
    from mtl_suite.models.precision import policy_name

    backbone, _ = build_backbone("tiny", 32, "none", precision="mixed")
    model = build_classifier(backbone, "dense_dropout", 3, (8,), 0.1, precision="mixed")
    sixteen = policy_name("mixed").split("_")[1]  # float16 on a GPU, bfloat16 on this CPU
    assert model.get_layer("head_dense0").compute_dtype == sixteen
    assert backbone.get_layer("base").get_layer("tiny_conv0").compute_dtype == sixteen
    assert model.get_layer("head_dense0").kernel.dtype == "float32"  # master weights stay float32
    output = model.get_layer("head_output")
    assert output.dtype_policy.name == "float32" and output.compute_dtype == "float32"
    proba = model.predict(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32"), verbose=0)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert keras.config.dtype_policy().name == "float32"  # the policy was set only while building
    assert build_classifier(backbone, "dense_dropout", 3).get_layer("head_dense0").compute_dtype == "float32"


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="unknown precision 'half'. Expected one of: float32, mixed"):
        build_backbone("tiny", 32, "none", precision="half")

"""Colour fusion (`train.colour_fusion`): the colour classifier inside the model computes the shortcut check's
features and gives the fitted regression's probabilities; the fused model averages it with the CNN, loads in safe
mode and is scored part by part with the whole graph's probabilities."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mtl_suite.analysis.shortcut import VARIANTS, channel_histograms
from mtl_suite.data.images import read_resized
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.colour import colour_feature_model
from mtl_suite.models.ensemble import prediction_parts, with_colour
from mtl_suite.models.heads import build_classifier
from mtl_suite.paths import SAMPLE_IMAGES
from mtl_suite.training.colour import fit_colour_classifier
from mtl_suite.training.fit import ArrayData, predict_proba

SIZE = 32


def sample_images(n: int = 12, size: int = SIZE) -> np.ndarray:
    return np.stack([read_resized(path, size) for path in sorted(SAMPLE_IMAGES.rglob("*.jpg"))[:n]])


def colour_coded(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class sets their mean colour, with labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = np.array([[200, 80, 120], [90, 160, 200], [150, 150, 60], [60, 60, 60]])[labels]
    noise = rng.normal(0, 40, (n, SIZE, SIZE, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8), labels


def tiny_cnn(classes: int, seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    return build_classifier(backbone, "dense_dropout", classes, (8,), 0.0)


def test_the_layer_computes_the_shortcut_checks_features_exactly():
    """hist32 + statistics from the graph equal the numpy/OpenCV ones on real smears and on noise (every level,
    so OpenCV's fixed-point luminance and the percentile boundaries are exercised)."""
    noise = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    for images in (sample_images(size=64), noise):
        expected = VARIANTS["hist32_stats"].features(channel_histograms(images))
        graph = colour_feature_model(images.shape[1:]).predict(images.astype("float32"), verbose=0)
        np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("classes", [4, 2])
def test_the_colour_classifier_gives_the_regressions_probabilities(classes):
    images, labels = colour_coded(40, classes)
    cnn = tiny_cnn(classes)
    colour = fit_colour_classifier(cnn, ArrayData(images, labels), "none", 16)
    assert colour.output_shape == cnn.output_shape  # one sigmoid column for a binary head

    x = VARIANTS["hist32_stats"].features(channel_histograms(images))
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=0))
    expected = reference.fit(x, labels).predict_proba(x)
    got = colour.predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(got, expected[:, 1:] if classes == 2 else expected, atol=1e-4)
    assert (expected.argmax(axis=1) == labels).mean() > 0.9  # the colours tell the classes: a real fit


def test_a_class_the_fold_never_saw_gets_no_probability():
    images, labels = colour_coded(30, 3)
    colour = fit_colour_classifier(tiny_cnn(4), ArrayData(images, labels), "none", 16)
    probabilities = colour.predict(images.astype("float32"), verbose=0)
    assert probabilities.shape == (30, 4) and probabilities[:, 3].max() < 1e-9


def test_the_fused_model_averages_loads_in_safe_mode_and_is_scored_by_parts(tmp_path):
    images, labels = colour_coded(24, 4)
    cnn = tiny_cnn(4)
    colour = fit_colour_classifier(cnn, ArrayData(images, labels), "gray", 8)
    fused = with_colour(cnn, colour)
    x = images.astype("float32")
    expected = (cnn.predict(x, verbose=0) + colour.predict(x, verbose=0)) / 2
    np.testing.assert_allclose(fused.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)

    fused.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert [member.name for _, member in prediction_parts(loaded)] == [cnn.name, "colour"]
    assert loaded.get_layer("colour").get_layer("stain").mode == "gray"
    np.testing.assert_allclose(predict_proba(loaded, images, 8), expected, rtol=1e-4, atol=1e-5)


def test_final_form_fits_the_colour_part_on_the_training_images_only():
    """cv.final_form, which the folds, the refit and the fold ensemble all use: with colour_fusion average the model
    gains a colour part fit on the images at train_idx, not on the images it will then score."""
    from mtl_suite.config import TrainConfig
    from mtl_suite.training.cv import final_form

    images, labels = colour_coded(40, 4)
    images[20:] = 255 - images[20:]  # the second half's colours tell the classes differently
    data, train_idx = ArrayData(images, labels), np.arange(20)
    cnn = tiny_cnn(4)
    assert final_form(cnn, TrainConfig(batch_size=8), data, train_idx) is cnn
    fused = final_form(cnn, TrainConfig(batch_size=8, colour_fusion="average"), data, train_idx)
    colour = [member for _, member in prediction_parts(fused)][1]
    x = images.astype("float32")
    on_train = fit_colour_classifier(cnn, ArrayData(images[:20], labels[:20]), "none", 8).predict(x, verbose=0)
    on_all = fit_colour_classifier(cnn, data, "none", 8).predict(x, verbose=0)
    np.testing.assert_allclose(colour.predict(x, verbose=0), on_train, atol=1e-6)
    assert not np.allclose(on_train, on_all, atol=1e-3)

"""Stain control inside the model graph (models/stain.py): what each mode does to pixels, that it sits before the
normalisation and survives a safe-mode save and load, that a served model needs nothing else, and that backbone
archives fit with or without it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from mtl_suite.data.images import read_resized
from mtl_suite.models import stain
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.heads import build_classifier
from mtl_suite.models.transfer import load_backbone, save_backbone
from mtl_suite.paths import SAMPLE_IMAGES


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    files = sorted(Path(SAMPLE_IMAGES).rglob("*.jpg"))
    return np.stack([read_resized(f, 224) for f in files])


def _apply(mode: str, images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(stain.StainControl(mode)(images.astype("float32")))


def test_gray_gives_three_equal_luminance_channels(sample):
    out = _apply("gray", sample[:4])
    assert out.shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    expected = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in sample[:4]]).astype("float32")
    assert np.abs(out[..., 0] - expected).max() <= 1.0  # OpenCV rounds to uint8
    # two images that differ only in hue but not in luminance become the same
    orange = np.full((1, 8, 8, 3), (200, 100, 50), np.float32)
    gray = np.full((1, 8, 8, 3), 0.299 * 200 + 0.587 * 100 + 0.114 * 50, np.float32)  # same luminance
    np.testing.assert_allclose(_apply("gray", orange), _apply("gray", gray), atol=1e-3)


def test_lab_conversion_matches_opencv_and_inverts(sample):
    images = sample[:4].astype("float32")
    lab = keras.ops.convert_to_numpy(stain.rgb_to_lab(keras.ops.convert_to_tensor(images)))
    reference = np.stack([cv2.cvtColor(im / 255.0, cv2.COLOR_RGB2Lab) for im in images])
    assert np.abs(lab - reference).max() < 0.5  # L in [0, 100], a/b about [-128, 127]
    back = keras.ops.convert_to_numpy(stain.lab_to_rgb(keras.ops.convert_to_tensor(lab)))
    assert np.abs(back - images).max() < 0.01


def test_reference_statistics_are_the_bundled_samples(sample):
    """The constants in the code are what they say: the sample's mean per-image L*a*b* statistics at 224 px."""
    mean, std = stain.lab_statistics(sample)
    np.testing.assert_allclose(mean, stain.REFERENCE_MEAN, atol=0.01)
    np.testing.assert_allclose(std, stain.REFERENCE_STD, atol=0.01)


def test_reinhard_maps_each_images_lab_statistics_to_the_reference(sample):
    picked = sample[[0, 30, 60, 90]]
    before_mean, _ = stain.lab_statistics(picked[:1])
    out = _apply("reinhard", picked)
    assert out.min() >= 0 and out.max() <= 255
    for image in out:
        mean, std = stain.lab_statistics(image[None])
        # gamut clipping and the round trip move the statistics a little; the source was far from the reference
        np.testing.assert_allclose(mean, stain.REFERENCE_MEAN, atol=1.5)
        np.testing.assert_allclose(std, stain.REFERENCE_STD, rtol=0.15)
    assert np.abs(np.subtract(before_mean, stain.REFERENCE_MEAN)).max() > 3
    # a global colour cast (another stain batch) is taken out: shifted and original images come out alike
    cast = np.clip(picked.astype(np.int16) + np.array([25, -15, 10]), 0, 255).astype(np.uint8)
    assert np.abs(_apply("reinhard", cast) - out).mean() < 0.25 * np.abs(cast.astype(float) - picked).mean()
    # a blank image stays finite (its spread is floored, not divided by zero)
    blank = _apply("reinhard", np.full((1, 16, 16, 3), 128, np.uint8))
    assert np.isfinite(blank).all()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="Expected one of: gray, reinhard"):
        stain.StainControl("macenko")


@pytest.mark.parametrize("mode", ["gray", "reinhard"])
def test_layer_sits_before_normalisation_and_base(mode):
    backbone, _ = build_backbone("tiny", 32, "none", stain=mode)
    names = [layer.name for layer in backbone.layers]
    assert names[:4] == ["image", "stain", "normalise", "base"]
    assert backbone.get_layer("stain").mode == mode
    plain, _ = build_backbone("tiny", 32, "none")
    assert "stain" not in [layer.name for layer in plain.layers]


def test_stain_layer_computes_in_float32_under_mixed_precision():
    backbone, _ = build_backbone("tiny", 32, "none", precision="mixed", stain="reinhard")
    assert backbone.get_layer("stain").compute_dtype == "float32"
    assert backbone.get_layer("normalise").compute_dtype != "float32"


def test_backbone_archives_fit_with_or_without_stain(tmp_path):
    """A stage may control stain where its parent did not: the weightless layer does not move the weight keys."""
    keras.utils.set_random_seed(3)
    plain, _ = build_backbone("tiny", 32, "none")
    keras.utils.set_random_seed(4)  # another random init: only the archive can make the two equal
    archive = save_backbone(plain, tmp_path / "w.npz", {"backbone": "tiny"})
    stained, _ = build_backbone("tiny", 32, "none", stain="gray")
    load_backbone(stained, archive)
    for a, b in zip(plain.weights, stained.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    gray = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 1)).repeat(3, axis=-1).astype("float32")
    np.testing.assert_allclose(stained.predict(gray, verbose=0), plain.predict(gray, verbose=0), atol=1e-3)


def test_feature_cache_key_depends_on_the_stain():
    from mtl_suite.training.features import backbone_digest

    digests = {mode: backbone_digest(build_backbone("tiny", 32, "none", stain=mode)[0])
               for mode in ("none", "gray", "reinhard")}
    assert len(set(digests.values())) == 3


@pytest.mark.parametrize("mode", ["gray", "reinhard"])
def test_safe_mode_round_trip_keeps_the_layer_and_predictions(tmp_path, sample, mode):
    backbone, _ = build_backbone("tiny", 48, "none", stain=mode)
    model = build_classifier(backbone, "dense_dropout", 3)
    images = np.stack([cv2.resize(im, (48, 48)) for im in sample[:5]]).astype("float32")
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    layer = loaded.get_layer("backbone").get_layer("stain")
    assert layer.mode == mode and layer.reference_mean == stain.REFERENCE_MEAN
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_served_pyfunc_loads_and_predicts_without_anything_else(tmp_path, sample):
    """The pyfunc as the scoring server runs it: a fresh interpreter that imports only serving/pyfunc.py loads a
    logged Keras model with a stain layer (safe mode) and gives the model's own probabilities on raw images."""
    import mlflow.keras

    from mtl_suite.serving.pyfunc import INFO_ARTIFACT, KERAS_ARTIFACT

    backbone, _ = build_backbone("tiny", 48, "none", stain="reinhard")
    model = build_classifier(backbone, "dense_dropout", 3)
    images = np.stack([cv2.resize(im, (48, 48)) for im in sample[:3]])
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", model.predict(images.astype("float32"), verbose=0))
    mlflow.keras.save_model(model, str(tmp_path / "keras"))
    (tmp_path / "info.json").write_text(json.dumps({"class_names": ["a", "b", "c"], "image_size": 48}))
    script = textwrap.dedent(f"""
        import sys, types
        import numpy as np, pandas as pd
        from mtl_suite.serving.pyfunc import MtlImageClassifier
        assert "mtl_suite.models.stain" not in sys.modules
        m = MtlImageClassifier()
        m.load_context(types.SimpleNamespace(artifacts={{{KERAS_ARTIFACT!r}: {str(tmp_path / 'keras')!r},
                                                         {INFO_ARTIFACT!r}: {str(tmp_path / 'info.json')!r}}}))
        images = np.load({str(tmp_path / 'images.npy')!r})
        out = m.predict(None, pd.DataFrame({{"image": list(images)}}))
        got = np.array(out["probabilities"].tolist())
        assert np.allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5), got
        print("served ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served ok" in done.stdout


def test_activation_cache_lower_part_applies_the_stain(tmp_path):
    """Fine-tuning on cached activations: the part below the cut is built from every backbone layer before the
    base, so the cached activations are those of stain-controlled pixels and top(cached) equals the whole model."""
    from mtl_suite.models.backbones import set_trainable_top
    from mtl_suite.training.activations import ActivationStore, cut_activations, find_cut

    backbone, _ = build_backbone("tiny", 32, "none", stain="reinhard")
    model = build_classifier(backbone, "dense_dropout", 3)
    set_trainable_top(backbone, 1)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    cut = find_cut(model, backbone)
    assert cut is not None
    cached = cut_activations(cut, images, ActivationStore(tmp_path / "a", 2**30), "float32")
    np.testing.assert_allclose(cut.top.predict(cached, verbose=0), model.predict(images.astype("float32"), verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_controlled_pixels_are_what_the_model_sees_as_whole_levels():
    """The shortcut check scores colour on these pixels: under gray every channel is the rounded luminance (within
    one level of OpenCV's), under none the images themselves."""
    import cv2
    import numpy as np

    from mtl_suite.models.stain import controlled_pixels

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    assert controlled_pixels(images, "none") is images
    gray = controlled_pixels(images, "gray", batch=2)
    assert gray.dtype == np.uint8 and gray.shape == images.shape
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    reference = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images])
    assert np.abs(gray[..., 0].astype(int) - reference).max() <= 1

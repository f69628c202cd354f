import keras
import numpy as np
import pytest

from mtl_suite.imaging.evaluate import dice_iou
from mtl_suite.imaging.masks import load_pairs
from mtl_suite.imaging.unet import (bce_dice_loss, build_unet, compile_unet, dice_coef, iou_coef,
                                    predict_probabilities)
from mtl_suite.paths import SAMPLE_IMAGES, SAMPLE_SEGMENTED


@pytest.fixture(scope="module")
def tiny():
    return build_unet(depth=2, width=8)


@pytest.mark.parametrize("height,width", [(32, 32), (64, 48), (30, 45), (17, 100)])
def test_output_is_one_probability_per_pixel_for_any_size(tiny, height, width):
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    probs = predict_probabilities(tiny, images)
    assert probs.shape == (2, height, width)
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.parametrize("depth,size", [(1, 16), (3, 64), (4, 128)])
def test_fixed_size_models_keep_the_spatial_shape(depth, size):
    model = build_unet(depth=depth, width=4, input_shape=(size, size, 3))
    assert model.output_shape == (None, size, size, 1)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == depth


def test_model_owns_its_rescaling(tiny):
    assert isinstance(tiny.layers[1], keras.layers.Rescaling)
    assert tiny.layers[1].scale == pytest.approx(1 / 255)


def test_blocks_have_residual_shortcuts(tiny):
    adds = [layer for layer in tiny.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 2 * 2 + 1  # encoder + decoder blocks per level, plus the bottleneck


def test_metrics_and_loss_on_known_masks():
    truth = np.zeros((1, 4, 4, 1), "float32")
    truth[0, :2] = 1
    half = np.zeros_like(truth)
    half[0, :1] = 1  # 4 of the 8 true pixels
    assert float(dice_coef(truth, truth)) == pytest.approx(1.0)
    assert float(dice_coef(truth, half)) == pytest.approx((2 * 4 + 1) / (12 + 1))
    assert float(iou_coef(truth, half)) == pytest.approx((4 + 1) / (8 + 1))
    assert float(bce_dice_loss(truth, truth * 0.98 + 0.01)) < float(bce_dice_loss(truth, half * 0.98 + 0.01))


def test_saved_model_loads_with_its_loss_and_metrics(tmp_path, tiny):
    model = compile_unet(build_unet(depth=2, width=4))
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = np.full((1, 32, 32, 3), 128, np.uint8)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_tiny_unet_overfits_eight_real_sample_images():
    paths = sorted(SAMPLE_IMAGES.glob("Benign/*.jpg"))[:4] + sorted(SAMPLE_IMAGES.glob("Early/*.jpg"))[:4]
    pairs = load_pairs(paths, 64, "segmented", SAMPLE_IMAGES, SAMPLE_SEGMENTED)
    assert len(pairs.paths) == 8
    keras.utils.set_random_seed(0)
    model = compile_unet(build_unet(depth=2, width=8), learning_rate=1e-2)
    # About 20 s on 2 idle CPU cores.
    model.fit(pairs.images, pairs.masks[..., None].astype("float32"), epochs=60, batch_size=4, verbose=0)
    pred = predict_probabilities(model, pairs.images) > 0.5
    assert np.mean([dice_iou(p, t)[0] for p, t in zip(pred, pairs.masks)]) > 0.8

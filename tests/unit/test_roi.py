import time

import numpy as np
import pytest

from mtl_suite.errors import UserError
from mtl_suite.imaging.roi import RoiParams, apply_mask, clean_mask, isolate_wbc, monochrome, roi, roi_mask

BACKGROUND = (240, 230, 235)  # -> (152, 189, 215) -> luma 181: not a cell
RED_CELL = (200, 160, 170)  # -> (112, 119, 150) -> luma 120: not a cell
NUCLEUS = (100, 60, 160)  # -> (12, 19, 140) -> luma 31: cell


def synthetic_field() -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((40, 60, 3), np.uint8)
    image[:] = BACKGROUND
    image[5:15, 5:20] = RED_CELL
    image[20:30, 30:45] = NUCLEUS
    expected = np.zeros((40, 60), bool)
    expected[20:30, 30:45] = True
    return image, expected


def test_roi_gives_the_exact_mask_on_known_colours():
    image, expected = synthetic_field()
    mask, masked = roi(image)
    np.testing.assert_array_equal(mask, expected)
    assert (masked[~expected] == 0).all()
    assert (masked[expected] == NUCLEUS).all()


def test_threshold_is_strict_and_offsets_saturate():
    # (186, 139, 118) minus the offsets is grey 98: on the threshold, so not a cell; one less is.
    image = np.array([[[186, 139, 118], [185, 138, 117], [10, 10, 10]]], np.uint8)
    assert monochrome(image).tolist() == [[98, 97, 0]]  # (10,10,10) saturates at 0 instead of wrapping
    assert roi_mask(image).tolist() == [[False, True, True]]


def test_add_mode_is_the_literal_reading_and_saturates_at_255():
    image = np.array([[[250, 250, 250], [0, 0, 0]]], np.uint8)
    assert monochrome(image, RoiParams(mode="add")).tolist() == [[255, 53]]  # 0.299*88 + 0.587*41 + 0.114*20 = 52.65


def test_all_four_numbers_are_parameters():
    image, expected = synthetic_field()
    assert not roi_mask(image, RoiParams(threshold=20)).any()
    assert roi_mask(image, RoiParams(threshold=200)).all()
    np.testing.assert_array_equal(roi_mask(image, RoiParams(red=0, green=0, blue=0, threshold=98)), expected)


@pytest.mark.parametrize("kwargs", [{"mode": "multiply"}, {"red": 300}, {"threshold": -1}])
def test_bad_parameters_are_user_errors(kwargs):
    with pytest.raises(UserError):
        RoiParams(**kwargs)


def test_non_rgb_input_is_a_user_error():
    with pytest.raises(UserError, match="RGB uint8"):
        roi_mask(np.zeros((10, 10), np.uint8))


def test_roi_is_vectorised_on_a_large_field():
    image = np.random.default_rng(0).integers(0, 256, (1944, 2592, 3), dtype=np.uint8)  # ALL-IDB1 size
    start = time.process_time()  # CPU time: a loaded machine must not fail this; a per-pixel loop takes minutes
    roi_mask(image)
    assert time.process_time() - start < 1.0


def test_clean_mask_removes_specks_and_fills_holes():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    mask[18:22, 18:22] = False  # a hole in a nucleus
    mask[45, 45] = True  # a speck
    cleaned = clean_mask(mask, open_px=3, close_px=0)
    assert not cleaned[45, 45]
    assert cleaned[18:22, 18:22].all()


def test_apply_mask_rejects_a_mask_of_another_size():
    with pytest.raises(UserError, match="does not match"):
        apply_mask(np.zeros((10, 10, 3), np.uint8), np.zeros((9, 10), bool))


def test_isolate_wbc_keeps_blue_dominant_pixels_on_black():
    image = np.array([[[100, 60, 160], [200, 160, 170]]], np.uint8)
    out = isolate_wbc(image, np.ones((1, 2), bool))
    assert out[0, 0].tolist() == [100, 60, 160]
    assert out[0, 1].tolist() == [0, 0, 0]

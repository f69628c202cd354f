"""Input handling of the raw-image pyfunc, without a model: what is accepted, and the message for what is not."""

from __future__ import annotations

import base64
import builtins
import io
import os
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtl_suite.data.images import read_rgb
from mtl_suite.paths import SAMPLE_IMAGES
from mtl_suite.serving.pyfunc import ImageError, check_array, input_items, read_file, to_image

SAMPLE = sorted(SAMPLE_IMAGES.rglob("*.jpg"))[0]


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_path_base64_and_bytes_decode_like_training():
    expected = read_rgb(SAMPLE)
    encoded = base64.b64encode(SAMPLE.read_bytes()).decode()
    for item in (encoded, "data:image/jpeg;base64," + encoded, SAMPLE.read_bytes(), encoded[:40] + "\n" + encoded[40:]):
        np.testing.assert_array_equal(to_image(item), expected)
    for path in (str(SAMPLE), SAMPLE):  # where paths are turned on
        np.testing.assert_array_equal(to_image(path, allow_paths=True), expected)
    np.testing.assert_array_equal(read_file(SAMPLE), expected)  # what in-process callers send instead


def test_base64_and_bytes_are_decoded_in_memory(monkeypatch):
    """A request's image never becomes a file on the server: decoding opens no file and makes no temporary one."""
    raw = SAMPLE.read_bytes()
    encoded, expected = base64.b64encode(raw).decode(), read_rgb(SAMPLE)
    to_image(encoded)  # PIL's format plugins imported before files are refused

    def refuse(*args, **kwargs):
        raise AssertionError(f"a file was opened while decoding: {args[:1]}")

    for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (tempfile, "mkstemp"),
                         (tempfile, "mkdtemp")):
        monkeypatch.setattr(module, name, refuse)
    np.testing.assert_array_equal(to_image(encoded), expected)
    np.testing.assert_array_equal(to_image(raw), expected)


def test_lossless_base64_round_trips_exactly():
    array = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_image(png_b64(array)), array)


def test_paths_are_off_unless_turned_on():
    for item in (str(SAMPLE), SAMPLE):
        with pytest.raises(ImageError, match="file paths are turned off here: send the file's bytes as base64"):
            to_image(item)


def test_read_file_names_why_and_leaves_the_file_to_the_caller(tmp_path, write_bad):
    with pytest.raises(ImageError) as info:
        read_file(write_bad(tmp_path / "cut.jpg", "truncated-jpeg"))
    assert str(info.value).startswith("truncated or corrupt image")


@pytest.mark.parametrize("item, fragment", [
    ("", "empty string"),
    (None, "empty entry"),
    (b"", "0 bytes"),
    ("@@@", "not valid base64"),
    (base64.b64encode(b"hello").decode(), "not an image"),
    (np.zeros((4, 4, 3), np.float32), "dtype uint8"),
    (np.zeros((4, 4), np.uint8), "(H, W, 3)"),
    (np.zeros((4, 4, 4), np.uint8), "(4, 4, 4)"),
    (np.zeros((0, 4, 3), np.uint8), "no pixels"),
    (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3)), "too large"),
    ([[[0, 0, 300]]], "integers 0..255"),
    ([[[0, 0]], [[1, 2, 3]]], "(H, W, 3)"),
    (3.5, "unsupported value"),
])
def test_bad_items_name_the_problem(item, fragment):
    with pytest.raises(ImageError, match=None) as info:
        to_image(item)
    assert fragment in str(info.value)


def test_json_integer_lists_are_accepted_as_pixels():
    np.testing.assert_array_equal(check_array([[[1, 2, 3], [4, 5, 255]]]),
                                  np.array([[[1, 2, 3], [4, 5, 255]]], np.uint8))


def test_input_containers():
    image = np.zeros((5, 6, 3), np.uint8)
    assert len(input_items(pd.DataFrame({"image": ["a", "b"]}))) == 2
    assert len(input_items({"image": np.array(["a", "b"])})) == 2  # the server's {"inputs": {...}} form
    assert len(input_items({"image": np.zeros((3, 5, 6, 3), np.int64)})) == 3
    assert len(input_items(image)) == 1
    assert len(input_items([image, image])) == 2
    with pytest.raises(Exception, match="column named 'image'"):
        input_items(pd.DataFrame({"x": [1], "y": [2]}))


def test_inputs_form_row_holding_a_list_of_strings_is_several_images():
    # what MLflow's server makes of {"inputs": {"image": ["a", "b"]}}
    frame = pd.DataFrame({"image": pd.Series([["a", "b"]], dtype=object)})
    assert input_items(frame) == ["a", "b"]
    pixels = [[[1, 2, 3]]]
    assert input_items(pd.DataFrame({"image": pd.Series([pixels], dtype=object)})) == [pixels]

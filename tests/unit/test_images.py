"""read_rgb: every valid mode becomes sensible 8-bit RGB; every unusable file is one BadImageError naming it.
decode_rgb (a file's bytes in memory) says and returns the same."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtl_suite.data.images import decode_rgb, image_size, read_resized, read_rgb, resize
from mtl_suite.errors import BadImageError, UserError


@pytest.mark.parametrize(
    ("kind", "name", "words"),
    [
        ("zero-byte", "empty.jpg", "empty file"),
        ("truncated-jpeg", "cut.jpg", "truncated"),
        ("text-as-jpg", "notes.jpg", "not an image"),
        ("bomb", "bomb.png", "too large: 8000x6000 pixels"),
        ("huge-bomb", "huge.png", "too large"),
    ],
)
def test_bad_files_raise_one_error_naming_the_file(tmp_path, write_bad, kind, name, words):
    path = write_bad(tmp_path / name, kind)
    with pytest.raises(BadImageError) as info:
        read_rgb(path)
    assert isinstance(info.value, UserError)  # the CLI turns it into one line and exit code 2
    assert info.value.path == str(path)
    assert str(info.value).startswith(str(path)) and words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated-jpeg", "text-as-jpg", "bomb", "huge-bomb"])
def test_bytes_in_memory_are_refused_as_their_file_is(tmp_path, write_bad, kind):
    path = write_bad(tmp_path / "bad.png", kind)
    with pytest.raises(BadImageError) as from_file:
        read_rgb(path)
    with pytest.raises(BadImageError) as from_bytes:
        decode_rgb(path.read_bytes(), "request")
    assert from_bytes.value.reason == from_file.value.reason and from_bytes.value.path == "request"


def test_bytes_in_memory_decode_as_their_file_does(tmp_path, make_image):
    for name in ("a.png", "b.jpg", "c.bmp", "d.tif"):
        path = make_image(tmp_path / name, seed=3)
        np.testing.assert_array_equal(decode_rgb(path.read_bytes(), name), read_rgb(path))


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        read_rgb(tmp_path / "nope.png")


def test_size_limit_is_checked_before_decoding(tmp_path, make_image):
    path = make_image(tmp_path / "big.png", size=(100, 80))
    with pytest.raises(BadImageError, match="100x80 pixels, limit 5000"):
        read_rgb(path, max_pixels=5000)
    with pytest.raises(BadImageError, match="too large"):
        image_size(path, max_pixels=5000)
    assert read_rgb(path, max_pixels=8000).shape == (80, 100, 3)


def test_bomb_header_is_rejected_without_allocating(tmp_path, write_bad):
    import resource

    path = write_bad(tmp_path / "huge.png", "huge-bomb")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BadImageError):
        read_rgb(path)
    # 100,000 x 100,000 RGB would be 30 GB; peak memory must not move by more than a few MB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_rgb_jpeg_and_png_round_trip(tmp_path, make_image):
    array = np.zeros((30, 40, 3), np.uint8)
    array[:, :20] = (200, 30, 10)
    array[:, 20:] = (10, 40, 220)
    png = read_rgb(make_image(tmp_path / "a.png", array))
    assert png.dtype == np.uint8 and png.shape == (30, 40, 3)
    np.testing.assert_array_equal(png, array)
    jpg = read_rgb(make_image(tmp_path / "a.jpg", array))
    assert np.abs(jpg.astype(int) - array).mean() < 6  # lossy, but the same picture
    assert image_size(tmp_path / "a.jpg") == (40, 30)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    path = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(path)
    out = read_rgb(path)
    assert out.shape == (8, 25, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:5, :, 3] = 255  # top half opaque, bottom half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_rgb(path)
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:5].reshape(-1, 3), np.tile([255, 0, 0], (50, 1)))
    np.testing.assert_array_equal(out[5:].reshape(-1, 3), np.tile([255, 255, 255], (50, 1)))  # slide background


def test_palette_image_gives_its_colours(tmp_path):
    palette_image = Image.new("P", (6, 4))
    palette_image.putpalette([0, 0, 0, 250, 10, 20, 5, 200, 60] + [0] * (256 * 3 - 9))
    palette_image.putdata([1, 1, 1, 2, 2, 2] * 4)
    path = tmp_path / "p.png"
    palette_image.save(path)
    out = read_rgb(path)
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [250, 10, 20])
    np.testing.assert_array_equal(out[0, 5], [5, 200, 60])


def test_palette_with_transparency_is_composited(tmp_path):
    palette_image = Image.new("P", (4, 4))
    palette_image.putpalette([9, 9, 9, 250, 10, 20] + [0] * (256 * 3 - 6))
    palette_image.putdata([0, 1] * 8)
    path = tmp_path / "pt.png"
    palette_image.save(path, transparency=0)
    out = read_rgb(path)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent index -> white
    np.testing.assert_array_equal(out[0, 1], [250, 10, 20])


def test_16_bit_grayscale_tiff_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(3, axis=0)
    path = tmp_path / "g16.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")  # really a 16-bit file
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255])  # full 16-bit range -> full 8-bit range
    assert (out[..., 0] == out[..., 2]).all()


def test_16_bit_rgb_tiff_keeps_its_colours(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb16 = np.zeros((6, 8, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 32768, 0
    path = tmp_path / "rgb16.tif"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb16[..., ::-1]))  # OpenCV writes BGR
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 128, 0])


@pytest.mark.parametrize("mode", ["CMYK", "1", "LA", "I", "YCbCr"])
def test_other_modes_convert_to_rgb(tmp_path, make_image, mode):
    suffix = ".tif" if mode in ("CMYK", "I", "YCbCr") else ".png"
    if mode == "YCbCr":
        suffix = ".jpg"
    path = make_image(tmp_path / f"m{suffix}", np.full((8, 8, 3), 200, np.uint8), mode=mode)
    out = read_rgb(path)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out.mean() > 100  # a light image stays light, whatever the mode


def test_resize_shrinks_with_area_and_keeps_same_size():
    image = np.zeros((8, 8, 3), np.uint8)
    image[::2, ::2] = 255  # a checkerboard of single pixels: area averaging gives a flat grey
    small = resize(image, 4)
    assert small.shape == (4, 4, 3)
    assert np.all(np.abs(small.astype(int) - 64) <= 1)
    assert resize(image, 8) is image  # no copy when the size already fits
    assert resize(image, 16).shape == (16, 16, 3)


def test_read_resized_ignores_aspect_ratio(tmp_path, make_image):
    assert read_resized(make_image(tmp_path / "w.png", size=(60, 20)), 32).shape == (32, 32, 3)

"""Input pipelines: order, shape, masks, determinism under a seed, augmentation on training data only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtl_suite.data import pipeline
from mtl_suite.data.pipeline import load_image, load_image_array

COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250), (120, 60, 30),
          (30, 60, 120), (200, 200, 200), (10, 10, 10), (90, 180, 45), (45, 90, 180)]


@pytest.fixture
def colored(tmp_path, make_image) -> tuple[list[str], np.ndarray]:
    """Twelve solid-colour PNGs of different sizes, labelled 0..11: any mix-up of order shows in the pixels."""
    paths = []
    for i, color in enumerate(COLORS):
        size = (40 + 3 * i, 30 + 2 * i)
        paths.append(str(make_image(tmp_path / f"c{i:02d}.png", np.full((size[1], size[0], 3), color, np.uint8))))
    return paths, np.arange(len(paths), dtype=np.int32)


def mean_colors(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), -1, 3).mean(axis=1)


def collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


# --- load_image_array --------------------------------------------------------------------------------------------

def test_load_image_array_keeps_input_order_and_shape(colored):
    paths, _ = colored
    order = [5, 0, 11, 3, 3, 7]
    calls = []
    out = load_image_array([paths[i] for i in order], 32, workers=3, progress=calls.append)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(mean_colors(out), [COLORS[i] for i in order], atol=1)
    assert calls[-1] == 6 and sorted(calls) == calls


def test_load_image_array_applies_masks(tmp_path, colored, make_image):
    paths, _ = colored
    mask = np.zeros((30, 40, 3), np.uint8)
    mask[:, :20] = 255  # keep the left half: the paper's "cell on a black background"
    mask_path = str(make_image(tmp_path / "mask.png", mask))
    out = load_image_array(paths[:2], 16, masks=[mask_path, None])
    assert (out[0][:, 8:] == 0).all()
    np.testing.assert_array_equal(out[0][:, :8].reshape(-1, 3)[0], COLORS[0])
    np.testing.assert_allclose(mean_colors(out[1:]), [COLORS[1]], atol=1)  # no mask: untouched


def test_load_image_array_bad_file_names_it(tmp_path, colored, write_bad):
    from mtl_suite.errors import BadImageError

    paths, _ = colored
    bad = str(write_bad(tmp_path / "cut.jpg", "truncated-jpeg"))
    with pytest.raises(BadImageError, match="cut.jpg"):
        load_image_array([paths[0], bad], 16)


# --- tf.data pipelines -------------------------------------------------------------------------------------------

def test_file_dataset_without_shuffle_keeps_order_and_labels(colored):
    paths, labels = colored
    images, got = collect(pipeline.file_dataset(paths, labels, 24, batch_size=5))
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(mean_colors(images), COLORS, atol=1)


def test_file_dataset_is_deterministic_under_a_seed(colored):
    paths, labels = colored
    first = batches(pipeline.file_dataset(paths, labels, 16, 4, shuffle=True, seed=3))
    second = batches(pipeline.file_dataset(paths, labels, 16, 4, shuffle=True, seed=3))
    other = batches(pipeline.file_dataset(paths, labels, 16, 4, shuffle=True, seed=4))
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    order = np.concatenate([y for _, y in first])
    assert sorted(order) == list(labels) and list(order) != list(labels)  # shuffled, nothing lost
    assert list(order) != list(np.concatenate([y for _, y in other]))
    for x, y in first:  # images still travel with their labels
        np.testing.assert_allclose(mean_colors(x), [COLORS[i] for i in y], atol=1)


def test_file_dataset_reshuffles_each_epoch(colored):
    paths, labels = colored
    dataset = pipeline.file_dataset(paths, labels, 16, 12, shuffle=True, seed=1)
    epoch1, epoch2 = (np.concatenate([y.numpy() for _, y in dataset]) for _ in range(2))
    assert list(epoch1) != list(epoch2) and sorted(epoch1) == sorted(epoch2)


def test_file_dataset_matches_load_image_array(tmp_path, make_image):
    # Same decoder settings and resampling in both paths: training on either sees the same pixels.
    paths = [str(make_image(tmp_path / f"n{i}.jpg", seed=i, size=(224, 224))) for i in range(3)]
    paths += [str(make_image(tmp_path / f"n{i}.png", seed=10 + i, size=(97, 61))) for i in range(2)]
    for size in (64, 224):
        expected = load_image_array(paths, size)
        images, _ = collect(pipeline.file_dataset(paths, np.zeros(len(paths)), size, 2))
        assert np.abs(images.astype(int) - expected).max() <= 1, size


def test_file_dataset_applies_masks_and_allows_missing_ones(tmp_path, colored, make_image):
    paths, labels = colored
    mask = np.zeros((30, 40, 3), np.uint8)
    mask[15:] = 255  # keep the bottom half
    mask_path = str(make_image(tmp_path / "mask.png", mask))
    images, _ = collect(pipeline.file_dataset(paths[:3], labels[:3], 16, 3, masks=[mask_path, None, mask_path]))
    np.testing.assert_array_equal(images, load_image_array(paths[:3], 16, masks=[mask_path, None, mask_path]))
    assert (images[0][:8] == 0).all() and (images[0][8:] > 0).any()
    assert (images[1] > 0).any(axis=2).all()  # no mask: nothing blacked out


def test_tiff_goes_through_the_pil_path(tmp_path, monkeypatch):
    from PIL import Image

    gray16 = np.full((20, 30), 257 * 200, np.uint16)  # 16-bit: TF cannot decode TIFF at all
    Image.fromarray(gray16).save(tmp_path / "a.tif")
    Image.fromarray(np.full((20, 30, 3), (10, 20, 30), np.uint8)).save(tmp_path / "b.tiff")
    paths = [str(tmp_path / "a.tif"), str(tmp_path / "b.tiff")]

    def no_tf_loader(*args):
        raise AssertionError("TIFF must not go to the TF decoder")

    monkeypatch.setattr(pipeline, "_tf_loader", no_tf_loader)
    images, labels = collect(pipeline.file_dataset(paths, [1, 2], 16, 2))
    assert images.shape == (2, 16, 16, 3) and list(labels) == [1, 2]
    assert (images[0] == 200).all()
    assert (images[1] == (10, 20, 30)).all()


def test_transparent_png_matches_read_rgb(tmp_path):
    # TF's decoders drop alpha; read_rgb composites it on white. file_dataset must give read_rgb's pixels.
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 2] = 200
    rgba[:8, :, 3] = 255  # bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    images, _ = collect(pipeline.file_dataset([str(tmp_path / "a.png")], [0], 16, 1))
    assert (images[0][:8] == (0, 0, 200)).all()
    assert (images[0][8:] == 255).all()


def test_bmp_and_mixed_formats_match_load_image_array(tmp_path, make_image):
    bmps = [str(make_image(tmp_path / f"u{i}.bmp", seed=i, size=(40 + 20 * i, 50))) for i in range(3)]
    mixed = bmps[:1] + [str(make_image(tmp_path / "v.jpg", seed=7, size=(50, 50)))]
    for paths in (bmps, mixed):
        images, _ = collect(pipeline.file_dataset(paths, np.zeros(len(paths)), 48, 4))
        assert np.abs(images.astype(int) - load_image_array(paths, 48)).max() <= 1


def test_file_dataset_rejects_a_bad_file_before_training(tmp_path, colored, write_bad):
    from mtl_suite.errors import BadImageError

    paths, labels = colored
    bad = str(write_bad(tmp_path / "notes.jpg", "text-as-jpg"))
    with pytest.raises(BadImageError, match="notes.jpg: not an image"):
        pipeline.file_dataset(paths + [bad], list(labels) + [0], 16, 4)


def test_common_formats_take_the_native_path(colored, monkeypatch):
    paths, labels = colored

    def no_py_loader(size, with_masks):
        raise AssertionError("PNG/JPEG must be decoded by TF ops")

    monkeypatch.setattr(pipeline, "_py_loader", no_py_loader)
    images, _ = collect(pipeline.file_dataset(paths, labels, 16, 6))
    assert images.shape == (12, 16, 16, 3)


def invert(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - batch


def add_noise(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(batch.astype(int) + rng.integers(-20, 21, batch.shape), 0, 255)


def test_array_dataset_augments_training_only(colored):
    paths, labels = colored
    images = load_image_array(paths, 16)
    evaluation, eval_labels = collect(pipeline.array_dataset(images, labels, 5, training=False, seed=0, augment=invert))
    np.testing.assert_array_equal(evaluation, images)  # evaluation data never passes through the hook
    np.testing.assert_array_equal(eval_labels, labels)
    trained, train_labels = collect(pipeline.array_dataset(images, labels, 5, training=True, seed=0, augment=invert))
    assert list(train_labels) != list(labels)  # shuffled
    np.testing.assert_array_equal(trained, 255 - images[train_labels])  # augmented, still with its label


def test_array_dataset_is_deterministic_under_a_seed(colored):
    paths, labels = colored
    images = load_image_array(paths, 16)
    runs = [batches(pipeline.array_dataset(images, labels, 4, training=True, seed=s, augment=add_noise))
            for s in (7, 7, 8)]
    for (xa, ya), (xb, yb) in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(runs[0], runs[2]))


def test_file_dataset_augment_hook_is_deterministic(colored):
    paths, labels = colored
    runs = [collect(pipeline.file_dataset(paths, labels, 16, 4, shuffle=True, seed=2, augment=add_noise))
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    plain, plain_labels = collect(pipeline.file_dataset(paths, labels, 16, 4, shuffle=True, seed=2))
    np.testing.assert_array_equal(plain_labels, runs[0][1])
    assert not np.array_equal(plain, runs[0][0])  # the hook ran


def test_load_image_single(colored):
    paths, _ = colored
    image = load_image(paths[2], 8)
    assert image.shape == (8, 8, 3) and tuple(image[0, 0]) == COLORS[2]
    assert Path(paths[2]).exists()


def test_decoded_images_are_cached_by_content_and_size(colored, tmp_path, monkeypatch):
    from mtl_suite.cache import ArrayStore

    paths, _ = colored
    digests = [f"digest-{i}" for i in range(len(paths))]
    store = ArrayStore(tmp_path / "images", 2**30)
    decoded = []
    real = pipeline.load_image_array
    monkeypatch.setattr(pipeline, "load_image_array", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    pipeline._RECENT.clear()
    first = pipeline.cached_image_array(paths, digests, 16, store)
    assert decoded == [16] and len(store.entries()) == 1
    assert pipeline.cached_image_array(paths, digests, 16, store) is first  # this process: from memory
    pipeline._RECENT.clear()
    np.testing.assert_array_equal(pipeline.cached_image_array(paths, digests, 16, store), first)  # from disk
    assert decoded == [16]
    pipeline.cached_image_array(paths, digests, 24, store)  # another size: decoded
    pipeline.cached_image_array(paths, digests[::-1], 16, store)  # other content: decoded
    assert decoded == [16, 24, 16] and len(store.entries()) == 3
    pipeline._RECENT.clear()


def test_training_batches_with_a_real_policy_repeat_exactly():
    """The paper's albumentations policy seeds one shared transform per batch: batches must not be augmented
    concurrently, or their random streams mix (a resumed tuning trial once came out different)."""
    from mtl_suite.imaging.augment import get_batch_augment

    images = np.random.default_rng(0).integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(24)
    augment = get_batch_augment("paper")

    def run():
        dataset, _ = pipeline.training_batches(images, labels, 4, seed=3, first_epoch=0, epochs=3, augment=augment)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    first, second = run(), run()
    assert len(first) == 18
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert any(not np.array_equal(x, images[y]) for x, y in first)  # it did augment


def test_training_and_evaluation_batches_are_the_arrays_rows_in_their_order():
    """Batches are gathered from the numpy arrays by index (never copied whole into TensorFlow): each training
    epoch is epoch_order's permutation of the rows, the evaluation batches the rows in order, the last one short."""
    images = np.random.default_rng(1).random((11, 3, 3, 2), dtype=np.float32)
    labels = np.arange(11, dtype=np.int32)
    dataset, steps = pipeline.training_batches(images, labels, 4, seed=5, first_epoch=1, epochs=3)
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert steps == 3 and [len(y) for _, y in batches] == [4, 4, 3] * 2
    for epoch, start in ((1, 0), (2, 3)):
        order = np.concatenate([y for _, y in batches[start:start + 3]])
        np.testing.assert_array_equal(order, pipeline.epoch_order(11, 5, epoch))
    for x, y in batches:
        assert x.dtype == images.dtype
        np.testing.assert_array_equal(x, images[y])
    evaluation = [(x.numpy(), y.numpy()) for x, y in pipeline.evaluation_batches(images, labels, 4)]
    assert [len(y) for _, y in evaluation] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in evaluation]), images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in evaluation]), labels)


def test_batches_hold_their_arrays_exactly_as_long_as_their_dataset():
    """The dataset keeps its arrays (the caller may drop them); once it is gone, nothing does: TensorFlow keeps a
    numpy_function's callable for the life of an eager process, so a strong reference there kept every fold's arrays
    (the Xception chain once peaked at 17 GB)."""
    import gc
    import weakref

    images = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2, 1)
    labels = np.arange(10, dtype=np.int32)
    alive = weakref.ref(images)
    training, _ = pipeline.training_batches(images, labels, 4, seed=0, first_epoch=0, epochs=1)
    evaluation = pipeline.evaluation_batches(images, labels, 4)
    del images, labels
    gc.collect()
    assert sum(len(y) for _, y in training) == 10 and sum(len(y) for _, y in evaluation) == 10
    del training, evaluation
    gc.collect()
    assert alive() is None

"""Input pipelines.

Two paths, for two sizes of data:
- `load_image_array`: decode and resize every image once into a uint8 array (threads; PIL and OpenCV release the
  GIL). Cross-validation trains many folds on the same images, so decoding once and slicing per fold is the
  cheapest thing a 2-core machine can do. 2,779 images at 224 px take 420 MB.
- `file_dataset`: a streaming tf.data pipeline (parallel decode in TF ops, resize, batch, prefetch) for data that
  should not sit in memory, and for the loader benchmark against keras.utils.image_dataset_from_directory.
Augmentation is a hook applied to training batches only; evaluation data never passes through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mtl_suite.cache import ArrayStore
from mtl_suite.data.images import image_header, read_resized

# TF decodes these natively; anything else (TIFF) goes through PIL in a py-function.
TF_DECODABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

BatchAugment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def default_workers() -> int:
    return min(16, (os.cpu_count() or 1) + 2)


def load_image(path: str, size: int, mask: str | None = None) -> np.ndarray:
    """One image resized to size x size; with a mask, pixels outside it are set to black (the paper's 'WBC on a
    black background')."""
    image = read_resized(path, size)
    if mask:
        keep = read_resized(mask, size).max(axis=2) > 0
        image = image * keep[..., None].astype(np.uint8)
    return image


def load_image_array(
    paths: Sequence[str],
    size: int,
    masks: Sequence[str | None] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Decode all images into one (N, size, size, 3) uint8 array, in input order."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    masks = masks if masks is not None else [None] * len(paths)

    def work(i: int) -> None:
        out[i] = load_image(paths[i], size, masks[i])

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress:
                progress(done)
    return out


IMAGE_FORMAT = "images-v1"  # part of every cache key: bump when decoding or resizing changes
_RECENT: OrderedDict[str, np.ndarray] = OrderedDict()  # this process's last decoded arrays, newest last
_RECENT_MAX = 2  # a stage chain alternates between smears and cell crops


def cached_image_array(paths: Sequence[str], digests: Sequence[str], size: int, store: ArrayStore | None = None,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """`load_image_array` for data seen before: the same images (by content digest, whatever their paths) at the same
    size come from this process's memory or from `store` on disk, not decoded again. Stage chains, comparisons and
    repeated commands on one dataset decode it once. The array is shared: callers must not write into it."""
    key = hashlib.sha256(json.dumps([IMAGE_FORMAT, size, list(digests)]).encode()).hexdigest()[:32]
    if key in _RECENT:
        _RECENT.move_to_end(key)
        return _RECENT[key]
    array = store.load(key) if store is not None and store.max_bytes > 0 else None
    if array is None or array.shape != (len(paths), size, size, 3) or array.dtype != np.uint8:
        array = load_image_array(paths, size, progress=progress)
        if store is not None and store.max_bytes > 0:
            store.save(key, array)
    _RECENT[key] = array
    while len(_RECENT) > _RECENT_MAX:
        _RECENT.popitem(last=False)
    return array


def array_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool, seed: int,
                  augment: BatchAugment | None = None):
    """tf.data over in-memory arrays: shuffled and augmented only when `training`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment is not None:
        ds = ds.map(_wrap_augment(augment, seed), num_parallel_calls=1)  # one stream of random numbers: repeatable
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training images in one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def training_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int,
                     epochs: int, augment: BatchAugment | None = None):
    """tf.data of the training batches of epochs [first_epoch, epochs), for `model.fit(..., steps_per_epoch=...,
    initial_epoch=first_epoch)`; returns (dataset, steps per epoch).

    Each epoch's order and augmentation depend only on (seed, epoch), never on how many epochs this process has
    run, so a fit resumed at epoch k sees exactly the batches an uninterrupted fit saw from epoch k on. Batches of
    indices, each gathered from the arrays in place (`_gathered`), with our orders in place of Keras's shuffle."""
    import tensorflow as tf

    n = len(images)
    steps = math.ceil(n / batch_size)
    epoch_ids = np.arange(first_epoch, max(first_epoch, epochs), dtype=np.int64)
    orders = np.stack([epoch_order(n, seed, int(e)) for e in epoch_ids]) if len(epoch_ids) else np.zeros((0, n))
    index_batches = tf.data.Dataset.from_tensor_slices((epoch_ids, orders.astype(np.int64))).flat_map(
        lambda epoch, order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate().map(
            lambda step, index: (epoch, step, index)))
    take = _gathered(images, labels)
    dataset = index_batches.map(lambda epoch, step, index: (epoch, step, *take(index)),
                                num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # One batch at a time: a hook may hold a stateful transform (albumentations seeds one Compose per batch),
        # and two threads seeding and drawing from it at once would mix their random streams. Prefetching still
        # keeps augmentation off the training step's critical path.
        dataset = dataset.map(_seeded_augment(augment, seed), num_parallel_calls=1)
    dataset = dataset.map(lambda epoch, step, x, y: (x, y)).with_options(_deterministic())
    return _holding(dataset.prefetch(tf.data.AUTOTUNE), images, labels), steps


def evaluation_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """tf.data of (images, labels) in order, `batch_size` at a time, gathered in place like the training batches:
    for fit's validation data, which Keras would otherwise copy whole into TensorFlow."""
    import tensorflow as tf

    starts = np.arange(0, len(images), batch_size, dtype=np.int64)
    take = _gathered(images, labels)
    dataset = tf.data.Dataset.from_tensor_slices(starts).map(
        lambda start: take(tf.range(start, tf.minimum(start + batch_size, len(images)))),
        num_parallel_calls=tf.data.AUTOTUNE)
    return _holding(dataset.with_options(_deterministic()).prefetch(tf.data.AUTOTUNE), images, labels)


def _gathered(images: np.ndarray, labels: np.ndarray):
    """index tensor -> (images[index], labels[index]), read from the numpy arrays in place. Keras (and
    tf.data.from_tensors) would first copy each whole array into TensorFlow's memory and keep it for the fit: with
    2,191 cached Xception activations that is 1.25 GB more, twice over while it is made.

    The function TensorFlow keeps for the numpy call holds the arrays only weakly: in eager mode TensorFlow never
    releases it (it stays with the process-wide graph), so a strong reference would keep every fold's arrays alive.
    The dataset that reads them holds them instead (`_holding`)."""
    import tensorflow as tf

    refs = (weakref.ref(images), weakref.ref(labels))

    def rows(which: int):
        def read(index: np.ndarray) -> np.ndarray:
            array = refs[which]()
            if array is None:
                raise RuntimeError("a batch was asked of arrays already released: read a dataset of "
                                   "training_batches/evaluation_batches only while it exists")
            return array[index]
        return read

    def take(index):
        x = tf.numpy_function(rows(0), [index], tf.as_dtype(images.dtype), stateful=False)
        y = tf.numpy_function(rows(1), [index], tf.as_dtype(labels.dtype), stateful=False)
        x.set_shape((None, *images.shape[1:]))
        y.set_shape((None, *labels.shape[1:]))
        return x, y

    return take


def _holding(dataset, *arrays: np.ndarray):
    """`dataset`, keeping `arrays` alive as long as it is (plain attribute: tf.data's tracking would wrap them)."""
    object.__setattr__(dataset, "_source_arrays", arrays)
    return dataset


def _deterministic():
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.apply_default_optimizations = False  # as Keras: no graph rewrite overhead
    return options


def _seeded_augment(augment: BatchAugment, seed: int):
    """The hook on one batch with random numbers drawn from (seed, epoch, step): the same draws whatever ran before,
    so a resumed fit augments as the uninterrupted one did."""
    import tensorflow as tf

    def apply(batch: np.ndarray, epoch: np.int64, step: np.int64) -> np.ndarray:
        return augment(batch, np.random.default_rng([seed, int(epoch), int(step)])).astype(np.uint8)

    def tf_apply(epoch, step, x, y):
        out = tf.numpy_function(apply, [x, epoch, step], tf.uint8, stateful=False)
        out.set_shape(x.shape)
        return epoch, step, out, y

    return tf_apply


def _wrap_augment(augment: BatchAugment, seed: int):
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def apply(batch: np.ndarray) -> np.ndarray:
        return augment(batch, rng).astype(np.uint8)

    def tf_apply(x, y):
        out = tf.numpy_function(apply, [x], tf.uint8, stateful=True)
        out.set_shape(x.shape)
        return out, y

    return tf_apply


def file_dataset(paths: Sequence[str], labels: Sequence[int], size: int, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, masks: Sequence[str | None] | None = None,
                 augment: BatchAugment | None = None):
    """Streaming pipeline: parallel decode and resize in TF ops, deterministic order under a seed.

    The image headers are read once here (no decoding; an unreadable file fails now, naming it, not mid-epoch)
    to choose one decoder and one resampling for the whole list, so the usual per-image graph has no tf.cond
    (conds per image cost CPU and made the loader benchmark's throughput erratic). Images that TF would decode
    differently from `read_rgb` (transparency, 16-bit, CMYK, TIFF, mixed formats) and masked images go through
    PIL. Either way the pixels are those of `load_image_array` (within 1 level where an image is enlarged).
    """
    import tensorflow as tf

    paths = [str(p) for p in paths]
    plan = _native_plan(paths, size) if masks is None else None
    # An image without a mask (Entry.mask is None) travels as "": tf.data cannot hold None.
    columns = (paths, np.asarray(labels)) if masks is None else (paths, np.asarray(labels),
                                                                 [str(m) if m else "" for m in masks])
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    loader = _tf_loader(size, *plan) if plan else _py_loader(size, masks is not None)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).map(loader, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        ds = ds.map(_wrap_augment(augment, seed), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


# PIL modes that TF's decoders turn into the same 8-bit RGB as images.to_rgb_array.
_TF_SAME_MODES = frozenset({"RGB", "L", "P"})


def _native_plan(paths: Sequence[str], size: int) -> tuple[str, str] | None:
    """(decoder, resampling) for the TF path from the headers, or None when some image must go through PIL.

    decoder: "jpeg" (tf.io.decode_jpeg with the accurate DCT, which also reads PNG) or "bmp".
    resampling: "none" (all images already size x size), "area" (all shrink), "bilinear" (all grow), or
    "per-image" (a mix: chosen per image with tf.cond, like images.resize).
    """
    if not paths or any(Path(p).suffix.lower() not in TF_DECODABLE for p in paths):
        return None
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        headers = list(pool.map(image_header, paths))
    formats = {fmt for fmt, _, _, _, _ in headers}
    if any(mode not in _TF_SAME_MODES or transparent for _, mode, _, _, transparent in headers):
        return None
    if formats <= {"JPEG", "PNG"}:
        decoder = "jpeg"
    elif formats == {"BMP"} and {mode for _, mode, _, _, _ in headers} == {"RGB"}:  # 24/32-bit, no palette
        decoder = "bmp"
    else:
        return None
    sizes = {(width, height) for _, _, width, height, _ in headers}
    if sizes == {(size, size)}:
        resampling = "none"
    elif all(w >= size and h >= size for w, h in sizes):
        resampling = "area"
    elif all(w <= size and h <= size for w, h in sizes):
        resampling = "bilinear"
    else:
        resampling = "per-image"
    return decoder, resampling


def _tf_loader(size: int, decoder: str = "jpeg", resampling: str = "per-image"):
    """Decode and resize in TF ops with the same pixels as `read_resized` (images.resize): no resampling when the
    image already has the size (the aria-all fields are 224x224), area averaging on an axis that shrinks (what
    cv2.INTER_AREA does, for a fraction of the CPU of `tf.image.resize(..., antialias=True)`), bilinear on
    one that grows, one axis at a time when they differ."""
    import tensorflow as tf

    def to_uint8(image):
        # Area and bilinear weights are convex, so values stay in [0, 255]: no clipping needed. tf.round rounds
        # half to even, as OpenCV's saturate_cast does.
        return tf.cast(tf.round(image), tf.uint8)

    def area(image, height, width):
        return to_uint8(tf.image.resize(image, (height, width), method="area"))

    def bilinear(image, height, width):
        return to_uint8(tf.image.resize(image, (height, width), method="bilinear"))

    def resample(image, height, width, shrink):
        return tf.cond(shrink, lambda: area(image, height, width), lambda: bilinear(image, height, width))

    def per_image(image):
        shape = tf.shape(image)
        height, width = shape[0], shape[1]

        def one_pass():
            return resample(image, size, size, height >= size)

        def two_passes():
            narrowed = resample(image, height, size, width > size)
            return resample(narrowed, size, size, height > size)

        same = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
        return tf.cond(same, lambda: image,
                       lambda: tf.cond(tf.equal(height >= size, width >= size), one_pass, two_passes))

    resize = {
        "none": lambda image: image,
        "area": lambda image: area(image, size, size),
        "bilinear": lambda image: bilinear(image, size, size),
        "per-image": per_image,
    }[resampling]

    def decode(raw):
        if decoder == "bmp":
            return tf.io.decode_bmp(raw, channels=3)
        # The accurate integer DCT gives PIL's pixels exactly; TF's default fast DCT (the Keras loader's) is off
        # by about 1 level per pixel on average. decode_jpeg reads PNG as well.
        return tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")

    def load(path, label):
        image = resize(decode(tf.io.read_file(path)))
        image.set_shape((size, size, 3))
        return image, label

    return load


def _py_loader(size: int, with_masks: bool):
    import tensorflow as tf

    def load_py(path, mask=b""):
        mask_path = mask.decode() if isinstance(mask, bytes) and mask else None
        return load_image(path.decode(), size, mask_path)

    def load(path, label, mask=None):
        args = [path, mask] if with_masks else [path]
        image = tf.numpy_function(load_py, args, tf.uint8)
        image.set_shape((size, size, 3))
        return image, label

    return load

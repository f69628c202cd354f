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

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mtl_suite.data.images import read_resized

# TF decodes these natively (tf.io.decode_image); anything else (TIFF) goes through PIL in a py-function.
TF_DECODABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})

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
                 shuffle: bool = False, seed: int = 0, masks: Sequence[str] | None = None,
                 augment: BatchAugment | None = None):
    """Streaming pipeline: parallel decode and resize in TF ops, deterministic order under a seed."""
    import tensorflow as tf

    paths = [str(p) for p in paths]
    native = all(Path(p).suffix.lower() in TF_DECODABLE for p in paths) and masks is None
    columns = (paths, np.asarray(labels)) if masks is None else (paths, np.asarray(labels), list(masks))
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    loader = _tf_loader(size) if native else _py_loader(size, masks is not None)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).map(loader, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        ds = ds.map(_wrap_augment(augment, seed), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


def _tf_loader(size: int):
    import tensorflow as tf

    def load(path, label):
        raw = tf.io.read_file(path)
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

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

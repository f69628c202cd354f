"""Fine-tuning the top of a backbone on cached activations against fine-tuning through the whole network: seconds
per fine-tuning epoch, the one-off extraction, and peak memory.

The stage-3 task of a smear dataset (4-class, 5-fold split; fold 0's training part, validated on fold 0), the
backbone's top `--unfreeze-layers` weighted layers trainable (batch norm frozen, as the suite fine-tunes), the
stage-3 dense/dropout head. Cached: the activations at the cut (training/activations.py) are extracted once for
every image of the dataset, then the layers above the cut train for --epochs epochs on them; the per-epoch figure is
the median of the epochs after the first (the first also traces the step), validation included. Uncached: the whole
classifier trains on --uncached-images training images for 2 epochs and predicts them twice; the second epoch's and
the second prediction's time per image are scaled to fold 0's training and validation parts (extrapolated, and said
so: an epoch through the whole network on all of them takes many minutes). Beside them: the forward GFLOP per image
of the whole network and of the top above the cut (cut_flops.py), the most the cache can gain per epoch at equal
GFLOP/s, and the GFLOP/s the cached epoch reaches (to set against the machine's matmul limit).

    python benchmarks/bench_activation_cache.py --backbone xception \
        --weights ../shared/weights/xception_imagenet_notop.weights.h5 \
        --data ../shared/data/aria-all/original --sizes 224 299 --unfreeze-layers 5
    python benchmarks/bench_activation_cache.py --quick      # tiny backbone on the bundled sample: seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchlib import SAMPLE, add_quick, emit, quick_defaults  # noqa: E402
from cut_flops import cached_epoch_flops, epoch_bound, forward_flops  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--data", default=str(SAMPLE / "original"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--unfreeze-layers", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--uncached-images", type=int, default=96)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    add_quick(parser)
    args = parser.parse_args()
    return quick_defaults(parser, args, backbone="tiny", weights="none", sizes=[64], unfreeze_layers=1, epochs=3,
                          uncached_images=24, batch_size=16)


class EpochTimer:
    def __init__(self):
        import keras

        self.seconds: list[float] = []
        timer = self

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds.append(time.perf_counter() - self.start)

        self.callback = Timer()


def build(args, size: int, n_classes: int):
    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier

    backbone, _ = build_backbone(args.backbone, size, args.weights)
    model = build_classifier(backbone, "dense_dropout", n_classes)
    set_trainable_top(backbone, args.unfreeze_layers)
    return model, backbone


def fit(model, images, labels, val, args, n_classes: int, epochs: int) -> list[float]:
    from mtl_suite.training.fit import compile_for

    timer = EpochTimer()
    steps = -(-len(labels) // args.batch_size)
    compile_for(model, n_classes, 1e-4, 0.9, steps)
    model.fit(images, labels, batch_size=args.batch_size, epochs=epochs, validation_data=val, verbose=0,
              callbacks=[timer.callback])
    return timer.seconds


def predict_seconds(model, images, batch_size: int) -> float:
    model.predict(images, batch_size=batch_size, verbose=0)  # traces the step
    start = time.perf_counter()
    model.predict(images, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def measure(args, size: int) -> dict:
    import numpy as np

    from mtl_suite.config import DataConfig
    from mtl_suite.tasks import smear_task
    from mtl_suite.training.activations import ActivationStore, cut_activations, find_cut

    task = smear_task(DataConfig(path=args.data, image_size=size, folds=5), "multiclass", None)
    _, train_idx, val_idx = next(iter(task.split.fold_indices()))
    images, labels, n_classes = task.data.images, task.data.labels, len(task.class_names)
    model, backbone = build(args, size, n_classes)
    cut = find_cut(model, backbone, "auto", args.dtype)
    if cut is None:
        raise SystemExit(f"no cut below the top {args.unfreeze_layers} layers of {args.backbone}")
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(tmp, 2**40)
        start = time.perf_counter()
        activations = cut_activations(cut, images, store, args.dtype, args.batch_size)
        extraction = time.perf_counter() - start
        epochs = fit(cut.top, activations[train_idx], labels[train_idx],
                     (activations[val_idx], labels[val_idx]), args, n_classes, args.epochs)
    cached_epoch = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]

    model, backbone = build(args, size, n_classes)  # the same starting point for the uncached fit
    part = train_idx[:args.uncached_images]
    seconds = fit(model, images[part], labels[part], None, args, n_classes, 2)[1]
    validation = predict_seconds(model, images[part], args.batch_size)
    uncached_epoch = (seconds * len(train_idx) + validation * len(val_idx)) / len(part)
    whole, top = forward_flops(model, (size, size, 3)) / 1e9, forward_flops(cut.top, cut.shape) / 1e9
    return {
        "size": size, "images": len(images), "train": len(train_idx), "val": len(val_idx), "cut": cut.layer,
        "activation_shape": "x".join(map(str, cut.shape)), "activation_mb_per_image":
            round(float(np.prod(cut.shape)) * np.dtype(args.dtype).itemsize / 2**20, 3),
        "extraction_s": round(extraction, 1), "extraction_images_per_s": round(len(images) / extraction, 2),
        "cached_epoch_s": round(cached_epoch, 2), "uncached_epoch_s_extrapolated": round(uncached_epoch, 1),
        "uncached_measured_on": len(part), "speedup_per_epoch": round(uncached_epoch / cached_epoch, 1),
        "gflop_whole": round(whole, 3), "gflop_top": round(top, 3),
        "speedup_bound": round(epoch_bound(whole, top, len(train_idx), len(val_idx)), 1),
        "cached_gflop_per_s": round(cached_epoch_flops(top, len(train_idx), len(val_idx)) / cached_epoch, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    args = parse_args()
    import keras

    results = []
    for size in args.sizes:
        keras.utils.clear_session()
        row = measure(args, size)
        results.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"{args.backbone}, top {args.unfreeze_layers} weighted layers, {args.dtype} activations, "
          f"batch {args.batch_size}, {os.cpu_count()} CPU cores, {sys.version.split()[0]}")
    emit({f"{args.backbone}_{row['size']}": row for row in results})


if __name__ == "__main__":
    main()

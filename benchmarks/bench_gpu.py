"""Benchmark (not a test): the suite's classifiers on a GPU, float32 against `--precision mixed`, and the fraction
of the GPU's matrix-multiply limit they reach.

    python benchmarks/bench_gpu.py                    # on a GPU machine with TensorFlow (no GPU: says so, measures nothing)
    KERAS_BACKEND=jax PYTHONPATH=$PWD python benchmarks/bench_gpu.py   # on one with JAX but no TensorFlow
    python benchmarks/bench_gpu.py --quick            # the tiny test backbone on whatever is here: does it run?

The models are the suite's own (`build_backbone` + `build_classifier` with the precision's dtype policy, float32
output layer) compiled by the suite's `compile_for` (Adam with exponential decay); only the Keras backend and the
data (random images from host memory, as NumPy arrays) differ from a stage run. What is timed, per backbone, mode
and precision: `--epochs` epochs of `--steps` steps at `--batch-size`; images/s is the median of the epochs after
the first (which holds compilation). Modes: `finetune` trains every layer but batch norm (the suite's fine-tuning,
with --unfreeze-layers large), `frozen` trains the head with the backbone frozen (an augmented warm-up).
XLA: TensorFlow runs each setting with jit_compile off and on; JAX always compiles with XLA (its trainer's
jit_compile=False runs op by op and is not a setting anyone would use), so there it is one row.

The limit: the median TFLOP/s of `keras.ops.matmul` on two N x N matrices (N = 8192 on a GPU), in float32 and in
the mixed policy's 16-bit type. Fraction = training FLOPs per image x images/s / the limit of the precision's compute
type. Training FLOPs per image: 3 x the forward FLOPs for fine-tuning (forward, gradients of activations and of
weights), forward + 2 x the head's for `frozen`; forward FLOPs counted from the layers' shapes (convolutions and
dense layers). On a GPU, float32 matrix products use TF32 tensor cores by default (JAX and TensorFlow alike), so
the float32 limit is TF32's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

from benchlib import add_quick, emit, quick_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="mobilenet_025,inception_v3,xception")
    parser.add_argument("--modes", default="finetune,frozen")
    parser.add_argument("--precisions", default="float32,mixed")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--unfreeze-layers", type=int, default=10_000, help="fine-tune mode: top layers trained")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--json", help="also write the figures here")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), backbones="tiny", image_size=32, batch_size=8, steps=3,
                          epochs=2, matmul_size=256, modes="finetune", precisions="float32")

    import mtl_suite  # noqa: F401  (the suite's environment defaults before a backend loads)
    import keras

    from mtl_suite.models.precision import gpu_available, policy_name

    backend = keras.backend.backend()
    figures: dict = {"backend": backend, "keras": keras.__version__, "device": device_name(backend),
                     "image_size": args.image_size, "batch_size": args.batch_size}
    if not gpu_available() and not args.quick:
        print(f"no GPU visible to Keras's {backend} backend: nothing measured (--quick runs the script on a CPU)")
        emit({**figures, "measured": False})
        return
    print(f"backend {backend} (Keras {keras.__version__}), device {figures['device']}, {args.image_size} px, "
          f"batch {args.batch_size}, {args.steps} steps x {args.epochs} epochs", flush=True)
    limits = {}
    for precision in args.precisions.split(","):
        dtype = compute_dtype(policy_name(precision))
        if dtype not in limits:
            limits[dtype] = matmul_tflops(args.matmul_size, dtype)
            print(f"matmul limit {dtype}: {limits[dtype]:.3g} TFLOP/s", flush=True)
    figures["matmul_tflops"] = dict(limits)
    jits = [True] if backend == "jax" else [False, True]
    for backbone in args.backbones.split(","):
        for mode in args.modes.split(","):
            for precision in args.precisions.split(","):
                for jit in jits:
                    row = timed_fit(args, backbone, mode, precision, jit)
                    row["fraction_of_limit"] = round(
                        row["train_gflop_per_image"] * row["images_per_s"] / 1000 / limits[row["compute_dtype"]], 4)
                    figures[f"{backbone}/{mode}/{precision}/{'xla' if jit else 'no_xla'}"] = row
                    print(f"{backbone:14s} {mode:8s} {precision:8s} ({row['policy']}) xla={jit!s:5s} "
                          f"{row['images_per_s']:9.1f} img/s  first epoch {row['first_epoch_s']:6.1f} s  "
                          f"{row['fraction_of_limit']:.1%} of the {row['compute_dtype']} limit", flush=True)
    emit(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)


def device_name(backend: str) -> str:
    if backend == "jax":
        import jax

        return ", ".join(sorted({device.device_kind for device in jax.devices()}))
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def compute_dtype(policy: str) -> str:
    return {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(policy, "float32")


def matmul_tflops(n: int, dtype: str, repeats: int = 10) -> float:
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((n, n)), dtype=dtype)
    b = keras.ops.convert_to_tensor(rng.standard_normal((n, n)), dtype=dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0])  # warm-up (and compilation)
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            product = keras.ops.matmul(a, b)
        keras.ops.convert_to_numpy(product[0, 0])  # waits for the device
        seconds.append((time.perf_counter() - started) / repeats)
    return 2 * n ** 3 / statistics.median(seconds) / 1e12


def timed_fit(args, backbone_name: str, mode: str, precision: str, jit: bool) -> dict:
    import keras
    import numpy as np

    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.training.fit import compile_for
    from mtl_suite.training.session import free_models

    keras.utils.set_random_seed(0)
    # random weights: the speed does not depend on their values, and pretrained files need not travel
    backbone, _ = build_backbone(backbone_name, args.image_size, "none", precision)
    classifier = build_classifier(backbone, "dense_dropout", 2, (128,), 0.3, precision)
    set_trainable_top(backbone, args.unfreeze_layers if mode == "finetune" else 0)
    if mode == "frozen":
        backbone.trainable = False
    compile_for(classifier, 2, 1e-3, 0.9, args.steps, jit_compile=jit)
    n = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n).astype("float32")
    seconds: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.append(seconds.pop() + time.perf_counter()))
    classifier.fit(images, labels, batch_size=args.batch_size, epochs=args.epochs, shuffle=False, verbose=0,
                   callbacks=[timer])
    forward = forward_gflop(classifier)
    head = forward - forward_gflop(backbone)
    row = {"policy": classifier.dtype_policy.name, "compute_dtype": compute_dtype(classifier.dtype_policy.name),
           "output_dtype": str(classifier.output.dtype), "jit_compile": jit,
           "images_per_s": round(n / statistics.median(seconds[1:]), 1),
           "first_epoch_s": round(seconds[0], 2), "forward_gflop_per_image": round(forward, 4),
           "train_gflop_per_image": round(3 * forward if mode == "finetune" else forward + 2 * head, 4)}
    free_models()
    return row


def forward_gflop(model) -> float:
    """Forward FLOPs of one image: 2 x the multiply-adds of every convolution and dense layer, from the layers'
    shapes (batch norm, activations and pooling left out, as usual). Counted, not asked of the backend: XLA's cost
    analysis on a GPU leaves out the convolutions it hands to cuDNN."""
    import keras

    total = 0
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            continue
        _, height, width, channels_out = layer.output.shape
        channels_in, window = layer.input.shape[-1], math.prod(layer.kernel_size)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            per_pixel = channels_in * layer.depth_multiplier * window
        elif isinstance(layer, keras.layers.SeparableConv2D):
            per_pixel = channels_in * layer.depth_multiplier * (window + channels_out)
        else:
            per_pixel = channels_in // layer.groups * channels_out * window
        total += 2 * height * width * per_pixel
    return total / 1e9


def leaf_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


if __name__ == "__main__":
    main()

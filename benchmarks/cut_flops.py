"""FLOPs above the activation cut, and this machine's matmul limit: what the fraction-of-limit figure of cached
fine-tuning (benchmarks/RESULTS.md, "The paper's backbones in CPU time") is computed from.

    python benchmarks/cut_flops.py --backbone xception --size 224 --unfreeze-layers 5 [--matmul]

Prints the auto cut for that many trainable layers, the forward GFLOP per image of the whole classifier and of the
top above the cut (TensorFlow's profiler on the frozen inference graph; weights do not change the count), and with
--matmul the median GFLOP/s of a 2048 x 2048 float32 matmul as the suite runs TensorFlow (oneDNN on x86). A
fine-tuning epoch on cached activations costs about 3 x top forward per training image + 1 x per validation image;
through the whole network it also runs the frozen bottom's forward pass for every image. The ratio of the two is the
most a cache can gain per epoch when both run at the same GFLOP/s (printed for --train/--val images: by default
stage 3's fold 0 on aria-all, 1,753 and 438)."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def forward_flops(model, shape: tuple[int, ...]) -> int:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *shape], tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = convert_variables_to_constants_v2(function).graph
    return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops


def cached_epoch_flops(top: float, train: int, val: int) -> float:
    """An epoch on cached activations: the top forward and backward (about 2 x forward) per training image, forward
    per validation image."""
    return train * 3 * top + val * top


def epoch_bound(whole: float, top: float, train: int, val: int) -> float:
    """Epoch FLOPs through the whole network over those on cached activations: the same plus the frozen bottom's
    forward pass for every image."""
    uncached = cached_epoch_flops(top, train, val) + (train + val) * (whole - top)
    return uncached / cached_epoch_flops(top, train, val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--unfreeze-layers", type=int, default=5)
    parser.add_argument("--train", type=int, default=1753, help="training images per epoch")
    parser.add_argument("--val", type=int, default=438, help="validation images per epoch")
    parser.add_argument("--matmul", action="store_true", help="also measure the matmul limit (run on a quiet machine)")
    args = parser.parse_args()

    import mtl_suite  # noqa: F401  sets TF_ENABLE_ONEDNN_OPTS as the suite runs
    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.training.activations import find_cut

    backbone, _ = build_backbone(args.backbone, args.size, "none", "float32", "none")
    classifier = build_classifier(backbone, "dense_dropout", 4)
    set_trainable_top(backbone, args.unfreeze_layers)
    cut = find_cut(classifier, backbone)
    whole = forward_flops(classifier, (args.size, args.size, 3))
    top = forward_flops(cut.top, cut.shape)
    print(f"{args.backbone} {args.size} px, top {args.unfreeze_layers} weighted layers trainable: cut {cut.layer} "
          f"{cut.shape}; forward GFLOP per image: whole {whole / 1e9:.3f}, above the cut {top / 1e9:.3f} "
          f"({top / whole:.1%})")
    print(f"per-epoch speed-up bound at equal GFLOP/s ({args.train} training, {args.val} validation images): "
          f"{epoch_bound(whole, top, args.train, args.val):.1f}x")
    if args.matmul:
        from bench_throughput import matmul_gflops

        wall, cpu = matmul_gflops(2048, 15)
        print(f"matmul 2048 x 2048 float32: {wall:.1f} GFLOP/s per wall second, {cpu:.1f} per CPU-second")


if __name__ == "__main__":
    main()

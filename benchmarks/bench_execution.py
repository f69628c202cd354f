"""Benchmark (not a test): what tracing a training step costs against running it eagerly, for the three ways the
suite trains, and where the break-even lies (train.execution "auto", training/fit.py:EAGER_STEP_LIMITS).

    python benchmarks/bench_execution.py                      # mobilenet_025, 128 px, batch 16, 4 steps per epoch
    python benchmarks/bench_execution.py --image-size 224 --batch-size 48
    python benchmarks/bench_execution.py --quick              # the tiny test backbone at 32 px: seconds

Every fold of a cross-validation and every tuning trial builds a new model, so each of its training phases pays
for tracing the training step (and the validation step) again. For each mode (head on cached features; the whole
network with the backbone frozen, as an augmented warm-up trains; fine-tuning with the top layers unfrozen) and
each execution (graph, eager), a fresh model trains three epochs of `--steps` steps with one validation batch per
epoch, as fit_classifier does: the first epoch holds the tracing, the later ones the steady cost. A phase of n steps
then costs first + (n/steps - 1) x later, and the break-even is the n where graph and eager cost the same.
"""

from __future__ import annotations

import argparse
import json
import time

from benchlib import add_quick, emit, quick_defaults

MODES = ("head", "frozen", "finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    parser.add_argument("--unfreeze-layers", type=int, default=30)
    parser.add_argument("--json", help="also write the figures here")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), backbone="tiny", image_size=32, batch_size=8)

    import mtl_suite  # noqa: F401  (oneDNN on before TensorFlow loads, as in the suite)
    from mtl_suite.training.fit import EAGER_STEP_LIMITS

    figures: dict = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                     "steps_per_epoch": args.steps}
    print(f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, {args.steps} steps per epoch "
          f"(+1 validation batch); seconds")
    print(f"{'mode':9s} {'graph 1st':>9s} {'graph later':>11s} {'eager 1st':>9s} {'eager later':>11s} "
          f"{'break-even steps':>16s} {'suite limit':>11s}")
    for mode in MODES:
        timings = {execution: epoch_times(args, mode, execution == "eager") for execution in ("graph", "eager")}
        row = {f"{execution}_{which}_s": round(value, 3) for execution, (first, later) in timings.items()
               for which, value in (("first_epoch", first), ("later_epoch", later))}
        row["break_even_steps"] = break_even(timings["graph"], timings["eager"], args.steps)
        row["suite_eager_step_limit"] = EAGER_STEP_LIMITS["features" if mode == "head" else "images"]
        figures[mode] = row
        print(f"{mode:9s} {row['graph_first_epoch_s']:9.2f} {row['graph_later_epoch_s']:11.3f} "
              f"{row['eager_first_epoch_s']:9.2f} {row['eager_later_epoch_s']:11.3f} "
              f"{row['break_even_steps']:16.1f} {row['suite_eager_step_limit']:11d}")
    emit(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)


def epoch_times(args, mode: str, eager: bool) -> tuple[float, float]:
    """(first epoch, fastest later epoch) wall seconds of a fresh model's fit in `mode`."""
    import keras
    import numpy as np

    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier, head_on_features
    from mtl_suite.training.fit import compile_for
    from mtl_suite.training.session import free_models

    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    images = rng.integers(0, 255, (n, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.integers(0, 4, n)
    keras.utils.set_random_seed(0)
    backbone, _ = build_backbone(args.backbone, args.image_size, "imagenet" if args.backbone != "tiny" else "none")
    classifier = build_classifier(backbone, "dense_dropout", 4, (128,), 0.3)
    set_trainable_top(backbone, args.unfreeze_layers if mode == "finetune" else 0)
    if mode == "head":
        model, inputs = head_on_features(classifier, backbone), backbone.predict(images, verbose=0)
    else:
        model, inputs = classifier, images
    compile_for(model, 4, 1e-3, 0.9, args.steps, run_eagerly=eager)
    validation = (inputs[:args.batch_size], labels[:args.batch_size])
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        model.fit(inputs, labels, batch_size=args.batch_size, epochs=1, validation_data=validation, verbose=0)
        seconds.append(time.perf_counter() - started)
    free_models()
    return seconds[0], min(seconds[1:])


def break_even(graph: tuple[float, float], eager: tuple[float, float], steps: int) -> float:
    """Steps of a phase at which graph and eager execution cost the same (inf: eager is never slower)."""
    (graph_first, graph_later), (eager_first, eager_later) = graph, eager
    if eager_later <= graph_later:
        return float("inf")
    return round(steps * (1 + (graph_first - eager_first) / (eager_later - graph_later)), 1)


if __name__ == "__main__":
    main()

"""Issue 9: what fraction of the machine's float32 limit a bare `model.fit` of the suite's mobilenet_025 classifier
reaches, what bounds it, and which settings change it.

    python benchmarks/bench_throughput.py                      # the default tries at 128 and 224 px, 3 rounds
    python benchmarks/bench_throughput.py --tries all          # every try (several hours on 2 cores)
    python benchmarks/bench_throughput.py --tries baseline onednn_on xla --sizes 128 --rounds 5
    python benchmarks/bench_throughput.py --tries bn_frozen bn_frozen_onednn_on --profile bn_frozen bn_frozen_onednn_on
    python benchmarks/bench_throughput.py --quick              # one short try at 64 px: does the script run?

Figures:
- the limit: float32 `tf.matmul` of two N x N matrices (N = 2048), 2 N^3 FLOPs each, median of several timed
  repetitions after a warm-up, measured in every worker process (so under the same load and settings as its fit);
  the limit is the best try's median (TF_ENABLE_ONEDNN_OPTS=1 multiplies faster than TensorFlow's default Eigen
  kernels here), per wall second and per CPU-second (process CPU time: moves far less with other jobs on the VM);
- forward FLOPs per image: TensorFlow's profiler (`float_operation`) on the frozen graph of the classifier's
  forward pass at batch 1, with an analytic count per layer kind (3x3 depthwise, 1x1 pointwise, first 3x3 conv,
  head) beside it. Training FLOPs per image = 3 x forward when the whole network trains (forward, gradient with
  respect to activations, gradient with respect to weights: the usual estimate), 1 x forward of the backbone when
  it is frozen (no backward pass through it);
- images/s of a bare `compile` + `model.fit` (the suite's `compile_for`: Adam with exponential decay, binary
  cross-entropy) on random uint8 images, the median of the per-epoch rates after the first epoch (tracing);
- fraction of the limit = training FLOPs per image x images/s / matmul FLOP/s (and the same per CPU-second:
  training FLOPs per image / CPU seconds per image / matmul FLOPs per CPU-second).

Every try is its own worker process (`--worker JSON`), so environment variables (TF_ENABLE_ONEDNN_OPTS,
OMP_NUM_THREADS) and thread settings take effect; the rounds interleave the tries so that all meet the same
background load; each figure is the median over the rounds. The classifier is the suite's own:
`build_backbone('mobilenet_025', size, 'imagenet')` + `build_classifier(backbone, 'dense_dropout', 2)`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import add_quick, emit, quick_defaults

# name -> (description, environment, worker settings). Defaults: batch 48, whole network trained (batch norm
# included), TensorFlow's default threads, no XLA, channels_last, the unchanged MobileNet.
TRIES: dict[str, tuple[str, dict[str, str], dict]] = {
    "baseline": ("whole network trained, batch 48, TensorFlow's defaults", {}, {}),
    "frozen": ("backbone frozen (bench_stages' fit-overhead model)", {}, {"train": "frozen"}),
    "bn_frozen": ("all layers but batch norm trained (the suite's fine-tune)", {}, {"train": "bn_frozen"}),
    "intra1_inter1": ("1 intra-op, 1 inter-op thread", {}, {"intra": 1, "inter": 1}),
    "intra2_inter1": ("2 intra-op, 1 inter-op thread", {}, {"intra": 2, "inter": 1}),
    "intra4_inter2": ("4 intra-op, 2 inter-op threads (oversubscribed)", {}, {"intra": 4, "inter": 2}),
    "omp1": ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"}, {}),
    "batch16": ("batch 16", {}, {"batch": 16}),
    "batch32": ("batch 32", {}, {"batch": 32}),
    "batch96": ("batch 96", {}, {"batch": 96}),
    "onednn_off": ("TF_ENABLE_ONEDNN_OPTS=0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "onednn_on": ("TF_ENABLE_ONEDNN_OPTS=1", {"TF_ENABLE_ONEDNN_OPTS": "1"}, {}),
    "xla": ("jit_compile=True (XLA)", {}, {"jit": True}),
    "channels_first": ("keras image_data_format channels_first (NCHW model, random init)", {},
                       {"layout": "channels_first"}),
    "no_depthwise": ("every 3x3 depthwise conv replaced by a (nearly free) strided slice (ablation, random init)", {},
                     {"variant": "no_depthwise"}),
    # the same questions for the modes the suite trains in: batch norm frozen (fine-tune), backbone frozen (warm-up
    # and the feature cache's extraction)
    "bn_frozen_onednn_on": ("bn_frozen + oneDNN: the suite's fine-tune as it runs", {"TF_ENABLE_ONEDNN_OPTS": "1"},
                            {"train": "bn_frozen"}),
    "bn_frozen_no_depthwise": ("bn_frozen + no_depthwise", {}, {"train": "bn_frozen", "variant": "no_depthwise"}),
    "bn_frozen_batch96": ("bn_frozen + batch 96", {}, {"train": "bn_frozen", "batch": 96}),
    "frozen_onednn_on": ("frozen + oneDNN: the suite's uncached warm-up and feature extraction as they run",
                         {"TF_ENABLE_ONEDNN_OPTS": "1"}, {"train": "frozen"}),
}
# The default run (about 30 minutes on 2 quiet cores): the whole network trained and the suite's two training modes,
# each with TensorFlow's default kernels and with oneDNN, and the depthwise ablation in the fine-tune mode. The
# thread, batch, XLA and layout tries changed nothing or made it slower (benchmarks/RESULTS.md): name them with
# --tries (or --tries all).
DEFAULT_TRIES = ("baseline", "onednn_on", "bn_frozen", "bn_frozen_onednn_on", "frozen", "frozen_onednn_on",
                 "bn_frozen_no_depthwise")
DEFAULT_SIZES = (128, 224)
WORKER = {"size": 128, "batch": 48, "images": 576, "epochs": 4, "train": "all", "intra": 0, "inter": 0,
          "jit": False, "layout": "channels_last", "variant": "full", "matmul_n": 2048, "matmul_reps": 7,
          "profile": False, "flops": False}


# ---------------------------------------------------------------------------------------------------- worker --

def worker(settings: dict) -> dict:
    """One try in this process: thread settings first (before TensorFlow starts its pools), then the matmul limit,
    then the timed fit."""
    cfg = {**WORKER, **settings}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow before mtl_suite: the package turns oneDNN on when imported first (mtl_suite/__init__.py), and the
    # tries without TF_ENABLE_ONEDNN_OPTS measure TensorFlow's own default
    import tensorflow as tf

    if cfg["intra"]:
        tf.config.threading.set_intra_op_parallelism_threads(cfg["intra"])
    if cfg["inter"]:
        tf.config.threading.set_inter_op_parallelism_threads(cfg["inter"])
    import keras

    if cfg["layout"] != "channels_last":
        keras.config.set_image_data_format(cfg["layout"])
    out: dict = {"settings": cfg, "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                 "onednn_on": _onednn_on(), "load_start": os.getloadavg()[0]}
    # GFLOP/s of wall time, and GFLOP per CPU-second (all threads added): the second moves far less with the
    # VM's other jobs, and "FLOPs per CPU-second" of the fit over it is the load-robust fraction of the limit
    out["matmul_gflops"], out["matmul_gflops_per_cpu_s"] = matmul_gflops(cfg["matmul_n"], cfg["matmul_reps"])
    classifier, backbone = build(cfg)
    if cfg["flops"]:
        out["flops"] = count_flops(classifier, cfg["size"])
    out.update(timed_fit(classifier, backbone, cfg))
    out["load_end"] = os.getloadavg()[0]
    return out


def _onednn_on() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # private API: absent in some versions
        return None


def matmul_gflops(n: int, reps: int) -> tuple[float, float]:
    """Median GFLOP/s of float32 (n x n) @ (n x n), per wall second and per CPU-second of all threads; the result
    is fetched every time, so each repetition is finished before the clock stops."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    for _ in range(2):
        float(tf.reduce_sum(tf.matmul(a, b)))
    rates, cpu_rates = [], []
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.process_time()
        c = tf.matmul(a, b)
        c.numpy()
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
        cpu_rates.append(2 * n**3 / max(time.process_time() - cpu, 1e-9) / 1e9)
    return statistics.median(rates), statistics.median(cpu_rates)


def build(cfg: dict):
    """The suite's classifier (ImageNet weights), or for the layout and ablation tries the same architecture
    with random weights (speed does not depend on the weights)."""
    import keras

    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier

    keras.utils.set_random_seed(0)
    size = cfg["size"]
    if cfg["layout"] == "channels_first":
        backbone = _backbone_channels_first(size)
    elif cfg["variant"] == "no_depthwise":
        backbone = _backbone_without_depthwise(size)
    else:
        backbone, _ = build_backbone("mobilenet_025", size, "imagenet")
    classifier = build_classifier(backbone, "dense_dropout", 2)
    if cfg["train"] == "frozen":
        backbone.trainable = False
    elif cfg["train"] == "bn_frozen":
        set_trainable_top(backbone, 10_000)  # every weighted layer but batch norm, as a full fine-tune does
    else:
        backbone.trainable = True  # batch norm too: it then uses batch statistics in training
    return classifier, backbone


def _backbone_channels_first(size: int):
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)
    base = keras.applications.MobileNet(input_shape=(3, size, size), alpha=0.25, include_top=False, weights=None)
    base.name = "base"
    x = base(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap", data_format="channels_first")(x)
    return keras.Model(inputs, outputs, name="backbone")


def _subsample_layer(stride: int, name: str):
    import keras

    class SubsampleLayer(keras.layers.Layer):
        """Stands in for a 3x3 depthwise conv: the same output shape, next to no work (a strided slice)."""

        def __init__(self, stride: int, **kwargs):
            super().__init__(**kwargs)
            self.stride = stride

        def call(self, x):
            if self.stride == 1:
                return x
            # after MobileNet's ((0, 1), (0, 1)) padding a 'valid' stride-2 3x3 conv gives H/2: drop the pad row
            return x[:, :-1:2, :-1:2, :]

    return SubsampleLayer(stride, name=name)


def _backbone_without_depthwise(size: int):
    """The suite's MobileNet with every DepthwiseConv2D replaced by a strided slice; batch norm, ReLU and the 1x1 convs
    stay, so full minus this is what the depthwise convs themselves cost."""
    import keras

    from mtl_suite.models.backbones import build_backbone

    backbone, _ = build_backbone("mobilenet_025", size, "none")
    base = backbone.get_layer("base")

    def swap(layer):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return _subsample_layer(layer.strides[0], layer.name + "_skip")
        return layer.__class__.from_config(layer.get_config())

    new_base = keras.models.clone_model(base, clone_function=swap)
    new_base.name = "base"
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap")(new_base(x))
    return keras.Model(inputs, outputs, name="backbone")


def count_flops(classifier, size: int) -> dict:
    """Forward FLOPs for one image: the profiler's count on the frozen inference graph, and an analytic count of
    the multiply-adds (x2) per layer kind."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: classifier(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32))
    graph = convert_variables_to_constants_v2(function).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profiled = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops

    kinds = {"depthwise 3x3": 0, "pointwise 1x1": 0, "first 3x3 conv": 0, "head (dense)": 0}
    for layer in _all_layers(classifier):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kinds["depthwise 3x3"] += 2 * h * w * c * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            key = "pointwise 1x1" if layer.kernel_size == (1, 1) else "first 3x3 conv"
            kinds[key] += 2 * h * w * c_out * c_in * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Dense):
            kinds["head (dense)"] += 2 * layer.input.shape[-1] * layer.units
    return {"profiler_forward": int(profiled), "analytic_forward": int(sum(kinds.values())),
            "analytic_by_kind": {k: int(v) for k, v in kinds.items()}}


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _all_layers(layer)
        else:
            yield layer


def timed_fit(classifier, backbone, cfg: dict) -> dict:
    import keras
    import numpy as np

    from mtl_suite.training.fit import compile_for

    n, batch = cfg["images"], cfg["batch"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, cfg["size"], cfg["size"], 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n).astype("float32")
    compile_for(classifier, 2, 1e-3, 0.9, -(-n // batch), jit_compile=cfg["jit"])

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.walls, self.cpus = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.walls.append(time.perf_counter() - self.wall)
            self.cpus.append(time.process_time() - self.cpu)

    clock = Clock()
    start = time.perf_counter()
    classifier.fit(images, labels, batch_size=batch, epochs=1, verbose=0, shuffle=True, callbacks=[clock])
    first = time.perf_counter() - start  # compile + trace (+ XLA compilation) + one epoch
    out = {}
    if cfg["profile"]:
        out["op_time"] = profiled_epochs(classifier, images, labels, batch, max(1, cfg["epochs"] - 1))
    clock.walls, clock.cpus = [], []
    classifier.fit(images, labels, batch_size=batch, epochs=max(1, cfg["epochs"] - 1), verbose=0, shuffle=True,
                   callbacks=[clock])
    return {**out, "first_epoch_s": first, "epoch_s": clock.walls,
            "img_s": n / statistics.median(clock.walls),
            "cpu_ms_per_img": statistics.median(clock.cpus) * 1000 / n}


def profiled_epochs(classifier, images, labels, batch: int, epochs: int) -> dict:
    """Op time by layer kind and op type from a TensorFlow profiler trace of `epochs` epochs (host CPU ops, all
    threads added up: CPU seconds, not wall time)."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory(prefix="bench-throughput-trace-") as logdir:
        tf.profiler.experimental.start(logdir)
        classifier.fit(images, labels, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[-1]).read_bytes())
    by_kind: dict[str, float] = {}
    by_type: dict[str, float] = {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                if ":" not in meta.name or not meta.display_name:
                    continue  # not a TensorFlow op
                seconds = event.duration_ps / 1e12
                kind = _layer_kind(meta.name)
                by_kind[kind] = by_kind.get(kind, 0.0) + seconds
                by_type[meta.display_name] = by_type.get(meta.display_name, 0.0) + seconds
    top = dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:12])
    return {"by_kind": by_kind, "top_op_types": top}


# MobileNet layer kinds by op name, first match first: batch-norm and ReLU ops carry their conv block's name too
LAYER_KINDS = [(re.compile(pattern, flags), kind) for pattern, kind, flags in (
    (r"conv_dw_\d+_bn|conv_pw_\d+_bn|conv1_bn", "batch norm", 0),
    (r"conv_dw_\d+_relu|conv_pw_\d+_relu|conv1_relu", "ReLU6", 0),
    (r"conv_dw_\d+", "depthwise 3x3", 0),
    (r"conv_pw_\d+", "pointwise 1x1", 0),
    (r"conv_pad_\d+|conv1_pad", "padding", 0),
    (r"/conv1", "first 3x3 conv", 0),
    (r"adam|AssignAdd|AssignSub|AssignVariable", "optimizer", re.I),
    (r"head_|gap|dense|dropout|loss|binary_crossentropy", "head and loss", re.I),
)]


def _layer_kind(op_name: str) -> str:
    """Which MobileNet layer an op belongs to, from its name (forward and gradient ops alike)."""
    name = op_name.split(":", 1)[0]
    return next((kind for pattern, kind in LAYER_KINDS if pattern.search(name)), "other")


# ------------------------------------------------------------------------------------------------ orchestrator --

def run_worker(settings: dict, env: dict[str, str], timeout: float = 900) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(settings)]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    proc = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line.strip() for line in lines if "Error" in line and ":" in line]  # the exception's own message
    return {"error": f"exit {proc.returncode}: {(errors or lines or [''])[-1][:300]}"}


def train_flops(forward: float, train: str) -> float:
    """Training FLOPs per image: 3 x forward when the backbone trains, 1 x forward when it is frozen (the head's
    backward pass is negligible)."""
    return forward * (1 if train == "frozen" else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tries", nargs="+", default=list(DEFAULT_TRIES), choices=["all", *TRIES],
                        help=f"default: {' '.join(DEFAULT_TRIES)}")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--images", type=int, default=WORKER["images"], help="random images per epoch")
    parser.add_argument("--epochs", type=int, default=WORKER["epochs"], help="epochs per try (the first untimed)")
    parser.add_argument("--profile", nargs="+", choices=list(TRIES), metavar="TRY",
                        help="tries to trace with TensorFlow's profiler (op time by layer kind; default: baseline, "
                             "or the first try named)")
    parser.add_argument("--no-profile", action="store_true", help="no profiler trace")
    parser.add_argument("--json", help="write every worker's raw result here")
    parser.add_argument("--out", help="write the Markdown tables here too")
    add_quick(parser)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    args = quick_defaults(parser, args, tries=["baseline"], sizes=[64], rounds=1, images=96, epochs=2,
                          no_profile=True)
    if "all" in args.tries:
        args.tries = list(TRIES)
    args.matmul_n = 512 if args.quick else WORKER["matmul_n"]
    common = {"images": args.images, "epochs": args.epochs, "matmul_n": args.matmul_n,
              "matmul_reps": 3 if args.quick else WORKER["matmul_reps"]}
    load_start = os.getloadavg()
    print(f"load average at start: {load_start}", file=sys.stderr, flush=True)

    # A profiler trace of the reference try (baseline, or the first one named) per size, in its own process:
    # tracing slows the fit it watches
    reference = "baseline" if "baseline" in args.tries else args.tries[0]
    profiles: dict[tuple[str, int], dict] = {}
    for name in ([] if args.no_profile else args.profile or [reference]):
        for size in args.sizes:
            _, env, settings = TRIES[name]
            r = run_worker({**common, **settings, "size": size, "profile": True, "matmul_n": 256, "matmul_reps": 1,
                            "epochs": 2, "images": min(args.images, 192)}, env)
            if "error" in r:
                raise SystemExit(f"profiler trace of {name} at {size} px failed: {r['error']}")
            profiles[(name, size)] = r["op_time"]

    # FLOPs are counted once per size and model variant (the count is deterministic), in the first worker of each
    flops: dict[tuple[int, str], dict] = {}
    results: dict[tuple[str, int], list[dict]] = {(t, s): [] for t in args.tries for s in args.sizes}
    for round_ in range(args.rounds):
        order = list(results) if round_ % 2 == 0 else list(reversed(results))  # alternate the order each round
        for name, size in order:
            _, env, settings = TRIES[name]
            key = (size, settings.get("variant", "full"))
            count = key not in flops and settings.get("layout", "channels_last") == "channels_last"
            r = run_worker({**common, **settings, "size": size, "flops": count}, env)
            if "flops" in r:
                flops[key] = r["flops"]
            results[(name, size)].append(r)
            shown = r.get("error") or f"{r['img_s']:.1f} img/s, matmul {r['matmul_gflops']:.0f} GFLOP/s"
            print(f"round {round_ + 1}/{args.rounds} {name} {size} px: {shown}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()

    text, figures = report(args, results, flops, profiles, load_start, load_end)
    print(text)
    emit(figures)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": {f"{s}/{v}": f for (s, v), f in flops.items()},
                                               "profiles": {f"{n}/{s}": p for (n, s), p in profiles.items()},
                                               "runs": {f"{t}/{s}": rs for (t, s), rs in results.items()},
                                               "load_start": load_start, "load_end": load_end}, indent=1))


def report(args, results, flops, profiles, load_start, load_end) -> tuple[str, dict]:
    ok = lambda runs: [r for r in runs if "error" not in r]  # noqa: E731
    median = lambda values: statistics.median(values) if values else float("nan")  # noqa: E731
    reference = "baseline" if "baseline" in args.tries else args.tries[0]
    # The machine's limit: matmul is measured in every worker just before its fit (same load, same settings); the
    # limit is the best of the tries' medians (oneDNN's matmul beats Eigen's on this CPU), per wall second and per
    # CPU-second of all threads added.
    by_try: dict[str, list[dict]] = {}
    for (name, _), runs in results.items():
        by_try.setdefault(name, []).extend(ok(runs))
    medians = {name: (median([r["matmul_gflops"] for r in runs]), median([r["matmul_gflops_per_cpu_s"] for r in runs]))
               for name, runs in by_try.items() if runs}
    best = max(medians, key=lambda name: medians[name][0]) if medians else reference
    best_cpu = max(medians, key=lambda name: medians[name][1]) if medians else reference
    limit, limit_cpu = medians.get(best, (float("nan"),))[0], medians.get(best_cpu, (0, float("nan")))[1]
    walls = [r["matmul_gflops"] for runs in by_try.values() for r in runs]
    lines = [f"Command: `python benchmarks/bench_throughput.py {' '.join(sys.argv[1:])}`", "",
             f"Load average (1/5/15 min) at start: {' / '.join(f'{v:.2f}' for v in load_start)}, "
             f"at end: {' / '.join(f'{v:.2f}' for v in load_end)}.", "",
             f"Limit: float32 matmul ({args.matmul_n} x {args.matmul_n}), the best try's median: "
             f"**{limit:.0f} GFLOP/s** of wall time (`{best}`), **{limit_cpu:.0f} GFLOP per CPU-second** (all threads "
             f"added; `{best_cpu}`). Median per try (wall / per CPU-s): "
             + ", ".join(f"{name} {w:.0f} / {c:.0f}" for name, (w, c) in medians.items())
             + f"; single workers {min(walls, default=0):.0f}-{max(walls, default=0):.0f} GFLOP/s.", ""]
    figures: dict = {"matmul_gflops": limit, "matmul_gflops_per_cpu_s": limit_cpu}
    lines += ["| size | variant | forward MFLOP/img (profiler) | analytic | depthwise | pointwise 1x1 | first conv | "
              "head |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (size, variant), f in sorted(flops.items()):
        k = f["analytic_by_kind"]
        total = f["analytic_forward"]
        share = lambda key: f"{k[key] / 1e6:.1f} ({100 * k[key] / total:.0f}%)"  # noqa: E731
        lines.append(f"| {size} | {variant} | {f['profiler_forward'] / 1e6:.1f} | {total / 1e6:.1f} | "
                     f"{share('depthwise 3x3')} | {share('pointwise 1x1')} | {share('first 3x3 conv')} | "
                     f"{share('head (dense)')} |")
        figures[f"{size}px/{variant}/forward_mflop"] = f["profiler_forward"] / 1e6
    lines += ["", f"| try | setting | size | img/s (median) | runs | vs {reference} | CPU ms/img | CPU vs {reference} | "
              "train GFLOP/s | fraction of limit (wall) | fraction of limit (per CPU-s) | first epoch s |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        base = ok(results.get((reference, size), []))
        base_img = median([r["img_s"] for r in base])
        base_cpu = median([r["cpu_ms_per_img"] for r in base])
        for name in args.tries:
            runs = results[(name, size)]
            good = ok(runs)
            description, _, settings = TRIES[name]
            if not good:
                error = runs[0]["error"].splitlines()[-1][:160] if runs else "not run"
                lines.append(f"| {name} | {description} | {size} | failed: {error.replace('|', '/')} |"
                             + " |" * 8)
                continue
            img_s = median([r["img_s"] for r in good])
            cpu = median([r["cpu_ms_per_img"] for r in good])
            forward = flops.get((size, settings.get("variant", "full")), {}).get("profiler_forward", float("nan"))
            per_image = train_flops(forward, settings.get("train", "all"))
            gflops = per_image * img_s / 1e9
            fraction = gflops / limit
            fraction_cpu = per_image / (cpu / 1000) / (limit_cpu * 1e9)
            first = median([r["first_epoch_s"] for r in good])
            lines.append(f"| {name} | {description} | {size} | {img_s:.1f} | "
                         f"{', '.join(format(r['img_s'], '.0f') for r in good)} | {img_s / base_img:.2f}x | "
                         f"{cpu:.2f} | {cpu / base_cpu:.2f}x | {gflops:.1f} | {100 * fraction:.1f}% | "
                         f"{100 * fraction_cpu:.1f}% | {first:.0f} |")
            figures.update({f"{size}px/{name}/img_s": img_s, f"{size}px/{name}/cpu_ms_per_img": cpu,
                            f"{size}px/{name}/fraction_of_limit": fraction,
                            f"{size}px/{name}/fraction_of_limit_per_cpu_s": fraction_cpu})
    if profiles:
        traced = list(profiles)
        kinds = sorted({k for p in profiles.values() for k in p["by_kind"]},
                       key=lambda k: -sum(p["by_kind"].get(k, 0.0) / sum(p["by_kind"].values())
                                          for p in profiles.values()))
        lines += ["", "Op time by layer kind (TensorFlow profiler trace of 1-2 epochs in a separate worker; CPU "
                  "seconds of all threads added, as a share of all op time):", "",
                  "| layer kind | " + " | ".join(f"{name} {size} px" for name, size in traced) + " |",
                  "|---|" + "---:|" * len(traced)]
        for kind in kinds:
            cells = []
            for name, size in traced:
                by_kind = profiles[(name, size)]["by_kind"]
                share = by_kind.get(kind, 0.0) / sum(by_kind.values())
                cells.append(f"{100 * share:.1f}%")
                figures[f"{size}px/profile/{name}/{kind}_share"] = share
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        for (name, size), profile in profiles.items():
            total = sum(profile["by_kind"].values())
            lines += ["", f"Top op types, {name} {size} px: " + ", ".join(
                f"{k} {100 * v / total:.1f}%" for k, v in profile["top_op_types"].items())]
    return "\n".join(lines) + "\n", figures


if __name__ == "__main__":
    main()

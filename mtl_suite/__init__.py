"""mtl-suite: multistage transfer learning for ALL classification, tracked with MLflow and tuned with Optuna."""

import os
import platform

__version__ = "0.1.0"

# oneDNN's CPU kernels. TensorFlow turns them on by itself only on x86 CPUs with AVX-512 VNNI/BF16 or AMX; on
# others (the reference 2-core AMD EPYC: AVX2) the suite's fine-tune and frozen-backbone training ran 1.3-2.5x
# faster with them (benchmarks/RESULTS.md, "Fraction of the CPU's limit"). TensorFlow reads the variable when it
# loads, so it is set when this package is imported, before any module of it imports TensorFlow; a value the user
# exported wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# TensorFlow's start-up lines (absl, oneDNN, CUDA probes) off on every path unless asked for: see output.py.
from mtl_suite.output import quiet_start_up  # noqa: E402

quiet_start_up()

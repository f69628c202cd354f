"""Serving speed of the registered raw-image pyfunc (issue 6): `mlflow models serve` latency (p50, p95) and
throughput for single images and batches of 32, and `mtl-suite predict` images/s on a folder.

Not a test. Trains mobilenet_025 quickly on the bundled sample (classical TL, 1 split, 1 epoch: the speed of
serving does not depend on how well it was trained), promotes it, serves it on 127.0.0.1 and measures.

    python benchmarks/bench_serving.py [--image-size 128] [--single 50] [--batches 10] [--store DIR]
    python benchmarks/bench_serving.py --tracking-uri URI --run-id RUN   # serve an existing stage run instead
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent

from benchlib import add_quick, emit, quick_defaults  # noqa: E402
SAMPLE = Path(__file__).resolve().parents[1] / "mtl_suite" / "assets" / "sample" / "original"
NAME = "bench-serving"


def sh(args: list[str], env: dict, timeout: int = 1800) -> str:
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, records: list[dict]) -> float:
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - start
    assert len(answer["predictions"]) == len(records) and all(r["error"] is None for r in answer["predictions"])
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--single", type=int, default=50, help="single-image requests")
    parser.add_argument("--batches", type=int, default=10, help="requests of 32 images")
    parser.add_argument("--store", type=Path, help="reuse a store made by an earlier run of this script")
    parser.add_argument("--tracking-uri", help="with --run-id: the store that holds the run")
    parser.add_argument("--run-id", help="promote and serve this stage run (e.g. a fold ensemble) instead of "
                        "training a model")
    add_quick(parser)  # the tiny backbone at 32 px, a few requests: the whole path, not its speed
    args = quick_defaults(parser, parser.parse_args(), image_size=32, single=5, batches=2)
    backbone = ["--backbone", "tiny", "--weights", "none"] if args.quick else ["--backbone", "mobilenet_025"]

    root = args.store or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    root.mkdir(parents=True, exist_ok=True)  # --store may name a folder not made yet
    uri = args.tracking_uri or f"sqlite:///{root}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cli = str(BIN / "mtl-suite")
    times: dict[str, float] = {}
    model = f"{backbone[1]} at {args.image_size} px (classical run, promoted as {NAME})"
    if args.run_id:
        start = time.perf_counter()
        sh([cli, "promote", args.run_id, "--name", NAME, "--force", "-q"], env)
        times["promote_s"] = time.perf_counter() - start
        model = f"stage run {args.run_id} of {uri}, promoted as {NAME}"
    elif not (root / "mlflow.db").exists():
        start = time.perf_counter()
        sh([cli, "classical", *backbone, "--image-size", str(args.image_size), "--folds", "1",
            "--epochs", "1", "--finetune-epochs", "0", "--experiment", "bench", "-q"], env)
        times["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        sh([cli, "promote", "--stage", "classical", "--experiment", "bench", "--name", NAME, "-q"], env)
        times["promote_s"] = time.perf_counter() - start

    files = sorted(p for p in SAMPLE.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in files]
    port = free_port()
    log = open(root / "serve.log", "wb")
    start = time.perf_counter()
    server = subprocess.Popen([cli, "serve", "--model", f"models:/{NAME}@champion", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {root / 'serve.log'}")
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        times["server_start_s"] = time.perf_counter() - start
        for i in range(3):  # warm-up: first calls trace the Keras predict function
            post(f"{url}/invocations", [{"image": encoded[i]}])
            post(f"{url}/invocations", [{"image": e} for e in encoded[:32]])
        single = [post(f"{url}/invocations", [{"image": encoded[i % len(encoded)]}]) for i in range(args.single)]
        batch = [post(f"{url}/invocations", [{"image": encoded[(i * 32 + j) % len(encoded)]} for j in range(32)])
                 for i in range(args.batches)]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        log.close()

    start = time.perf_counter()
    sh([cli, "predict", str(SAMPLE), "--model", f"models:/{NAME}@champion", "--format", "csv", "-q"], env)
    predict_wall = time.perf_counter() - start
    in_process = measure_in_process(uri, files)

    sizes = {Image_size(p) for p in files[:5]}
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, Python "
                   f"{platform.python_version()}, load average at end {os.getloadavg()[0]:.1f}",
        "model": model,
        "images": f"{len(files)} bundled sample smears, {', '.join(sorted(sizes))} JPEG, sent as base64",
        "single_p50_ms": 1000 * statistics.median(single), "single_p95_ms": 1000 * percentile(single, 0.95),
        "single_images_per_s": len(single) / sum(single),
        "batch32_p50_ms": 1000 * statistics.median(batch), "batch32_p95_ms": 1000 * percentile(batch, 0.95),
        "batch32_images_per_s": 32 * len(batch) / sum(batch),
        "predict_cli_wall_s": predict_wall, "predict_cli_images_per_s_end_to_end": len(files) / predict_wall,
        **in_process, **times, "requests": {"single": args.single, "batch32": args.batches},
        "store": str(root),
    }
    print(json.dumps(result, indent=2))
    emit({k: v for k, v in result.items() if isinstance(v, (int, float)) or k == "requests"})
    if args.quick and not args.store:
        shutil.rmtree(root, ignore_errors=True)  # a smoke run's store is not worth keeping


def Image_size(path: Path) -> str:  # noqa: N802
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.size[0]}x{image.size[1]}"


def measure_in_process(uri: str, files: list[Path]) -> dict[str, float]:
    """`mtl-suite predict`'s own work without interpreter start-up: model load, then images/s over the folder."""
    import mlflow

    from mtl_suite.workflows.predict import load_pyfunc, predict_files

    mlflow.set_tracking_uri(uri)
    start = time.perf_counter()
    pyfunc = load_pyfunc(f"models:/{NAME}@champion", uri)
    loaded = time.perf_counter() - start
    predict_files(pyfunc, files[:32])  # warm-up
    start = time.perf_counter()
    frame = predict_files(pyfunc, files)
    elapsed = time.perf_counter() - start
    assert frame["error"].isna().all() or frame["error"].map(lambda e: e is None).all()
    return {"predict_model_load_s": loaded, "predict_folder_images_per_s": len(files) / elapsed}


if __name__ == "__main__":
    main()

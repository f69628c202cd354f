"""Decoded-image cache (issue 9): decoding a dataset the first time, from the disk cache in a later command, and
from memory in the same process.

    python benchmarks/bench_images.py                       # ../shared/data/aria-all/original, 128 and 224 px
    python benchmarks/bench_images.py --data PATH --sizes 128
    python benchmarks/bench_images.py --quick               # the bundled sample at 64 px

Each size is measured in a fresh cache folder: cold decode, then a new process reading the disk cache (what the next
`mtl-suite` command does), then the same call again in that process (what a stage chain or `compare` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, SAMPLE, add_quick, emit, quick_defaults

ARIA = REPO.parent / "shared" / "data" / "aria-all" / "original"


def measure(data: str, size: int) -> dict:
    """Runs in a worker process: (build the manifest), decode through the cache twice."""
    from mtl_suite.cache import image_store
    from mtl_suite.data.manifest import build_manifest
    from mtl_suite.data.pipeline import cached_image_array

    manifest = build_manifest(data, "auto", duplicates="drop")
    paths, digests = [e.path for e in manifest.entries], [e.sha256 for e in manifest.entries]
    started = time.perf_counter()
    array = cached_image_array(paths, digests, size, image_store())
    first = time.perf_counter() - started
    started = time.perf_counter()
    cached_image_array(paths, digests, size, image_store())
    return {"images": len(paths), "array_mb": round(array.nbytes / 2**20, 1), "load_s": round(first, 3),
            "memory_s": round(time.perf_counter() - started, 4)}


def in_worker(data: str, size: int, cache: Path) -> dict:
    env = {**os.environ, "MTL_SUITE_CACHE": str(cache)}
    out = subprocess.run([sys.executable, __file__, "--worker", data, str(size)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARIA))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), data=str(SAMPLE / "original"), sizes=[64])
    figures = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="mtl-images-") as cache:
            cold = in_worker(args.data, size, Path(cache))
            warm = in_worker(args.data, size, Path(cache))
        figures[f"{size}px"] = {"images": cold["images"], "array_mb": cold["array_mb"],
                                "first_decode_s": cold["load_s"], "next_command_disk_s": warm["load_s"],
                                "same_process_memory_s": warm["memory_s"],
                                "speedup_disk": round(cold["load_s"] / max(warm["load_s"], 1e-9), 1)}
        print(f"{size} px: {json.dumps(figures[f'{size}px'])}", flush=True)
    emit(figures)


if __name__ == "__main__":
    main()

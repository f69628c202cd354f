"""Benchmark (not a test) for issue 3: U-Net vs weak masks on held-out Aria fields, WBC box recall on BCCD for the
ROI method and the U-Net (trained on Aria only), and ROI preprocessing throughput.

    python benchmarks/bench_segmentation.py [--train-images 400] [--size 64] [--epochs 15]

Prints a JSON object with every figure; benchmarks/RESULTS.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from mtl_suite.data.images import read_rgb
from mtl_suite.data.manifest import build_manifest
from mtl_suite.data.splits import make_split
from mtl_suite.imaging.augment import get_pair_augment
from mtl_suite.imaging.evaluate import dice_iou, summarise_matches, voc_pairs
from mtl_suite.imaging.masks import split_pairs
from mtl_suite.imaging.roi import RoiParams, roi_mask
from mtl_suite.imaging.segment import box_recall, roi_masks, unet_masks
from mtl_suite.imaging.unet import build_unet, compile_unet, fit_unet, predict_probabilities

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

from benchlib import SAMPLE, add_quick, emit, quick_defaults  # noqa: E402


def throughput(shape: tuple[int, int], seconds: float = 3.0, source: Path | None = None) -> float:
    image = read_rgb(source or next((SHARED / "bccd" / "JPEGImages").glob("*.jpg")))
    import cv2

    image = cv2.resize(image, shape[::-1])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        roi_mask(image)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min-area-fraction", type=float, default=0.002)
    add_quick(parser)  # the bundled sample (its segmented/ masks) instead of aria-all; no BCCD part
    args = quick_defaults(parser, parser.parse_args(), train_images=16, val_images=8, size=32, depth=2, width=4,
                          epochs=1)
    out = {"args": vars(args), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"}
    aria = SAMPLE if args.quick else SHARED / "aria-all"
    probe = next((SAMPLE / "original").rglob("*.jpg")) if args.quick else None
    seconds = 0.5 if args.quick else 3.0
    out["roi_images_per_s"] = {"224x224": throughput((224, 224), seconds, probe),
                               "640x480": throughput((480, 640), seconds, probe)}

    manifest = build_manifest(aria / "original", duplicates="drop")
    split = make_split(manifest, folds=1, test_fraction=0.2, seed=args.seed)
    start = time.perf_counter()
    data = split_pairs(split, args.size, "segmented", aria / "segmented")
    out["left_out"] = data.problems.lines()
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(data.train.paths), min(args.train_images, len(data.train.paths)), replace=False)
    val = slice(0, args.val_images)
    model = compile_unet(build_unet(args.depth, args.width))
    fit_unet(model, (data.train.images[pick], data.train.masks[pick]), (data.val.images[val], data.val.masks[val]),
             args.epochs, 16, get_pair_augment("paper"), args.seed, verbose=2)
    out["train_seconds"] = time.perf_counter() - start
    out["train_pairs_used"] = int(len(pick))

    pred = predict_probabilities(model, data.test.images) > 0.5
    scores = np.array([dice_iou(p, t) for p, t in zip(pred, data.test.masks)])
    out["aria_test"] = {"images": len(scores), "dice_mean": float(scores[:, 0].mean()),
                        "iou_mean": float(scores[:, 1].mean())}
    roi_pred = [m for m in roi_masks(list(data.test.images))]
    roi_scores = np.array([dice_iou(p, t) for p, t in zip(roi_pred, data.test.masks)])
    out["aria_test_roi_method"] = {"dice_mean": float(roi_scores[:, 0].mean()),
                                   "iou_mean": float(roi_scores[:, 1].mean())}

    if args.quick:
        print(json.dumps(out, indent=2))
        emit(_figures(out))
        return
    pairs = voc_pairs(SHARED / "bccd")
    paths, boxes = [p for p, _ in pairs], [b for _, b in pairs]
    for name, fn in {
        "unet": lambda ims: unet_masks(model, ims, args.size),
        "roi_subtract": lambda ims: roi_masks(ims, RoiParams(mode="subtract")),
        "roi_add_literal": lambda ims: roi_masks(ims, RoiParams(mode="add")),
    }.items():
        t0 = time.perf_counter()
        out[f"bccd_{name}"] = summarise_matches(box_recall(paths, boxes, fn, args.min_area_fraction))
        out[f"bccd_{name}"]["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))
    emit(_figures(out))


def _figures(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("args", "machine", "left_out")}


if __name__ == "__main__":
    main()

"""Reading a smear through its white cells (candidate C7 of "Right outside the lab" in benchmarks/RESULTS.md).

Another lab's fields differ from Aria's in magnification and field size as well as stain; a classifier of whole fields
learns Aria's scale. This reader cuts each white cell out of the field with the suite's U-Net (a `segment train` run),
reads it at one fixed cell size and detail, classifies the cells with a model trained on such cells (a `classical` run
on the crops this script writes), and gives the field the mean of its cells' probabilities. A field is flagged as
unlike the training images when no cell is found in it or at least half of its cells are flagged by the cell model's
detector; a flag never changes the field's class.

    # 1. crops of the development fields of the field split (seed 42, one validation fold), for training
    python benchmarks/lab/cell_reader.py crops --unet-run RUN --tracking-uri URI --data ../shared/data/aria-all/original \
        --out CROPS
    # 2. train the cell model on them (the suite's own command; its split groups the cells by field)
    mtl-suite classical --data CROPS/dev/cells.csv ...
    # 3. read fields: the held-out development fields (as they are, re-stained, magnified), or the field split's
    #    outer test part, or another lab's folder of one known class; per-field rows to --predictions
    python benchmarks/lab/cell_reader.py read --unet-run RUN --cell-run RUN --tracking-uri URI --crops CROPS \
        --set development --data ../shared/data/aria-all/original
    python benchmarks/lab/cell_reader.py read ... --set test
    python benchmarks/lab/cell_reader.py read ... --set external --external ../shared/data/bccd/JPEGImages \
        --expect Benign
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mtl_suite.config import DataConfig
from mtl_suite.data.images import read_rgb
from mtl_suite.imaging.cells import crop_cell, find_cells

SPLIT = DataConfig(folds=1, seed=42)  # the field split of the other candidates: seed 42, one validation fold
CELL_SIZE = 96  # px: the cell model's input
MAX_CELLS = 8
MARGIN = 0.25  # of the cell's box, each side (imaging/cells.py:crop_cell)
MAGNIFICATION = 2.5  # as the suite's development-side shift probe (workflows/reliability.py)


@dataclass(frozen=True)
class Reader:
    unet: object
    unet_size: int
    detail: int  # px: every cell is brought to this many pixels across before it is resized to CELL_SIZE

    def cells(self, field: np.ndarray) -> list[np.ndarray]:
        """The field's white cells, largest first, each at the training cells' detail and CELL_SIZE across: a cell
        from a higher-magnification field is first shrunk to the detail an Aria cell has, so both read alike."""
        from mtl_suite.imaging.segment import unet_mask

        mask = unet_mask(self.unet, field, self.unet_size)
        crops = []
        for box in find_cells(mask)[:MAX_CELLS]:
            side = max(box.x1 - box.x0, box.y1 - box.y0) * (1 + 2 * MARGIN)
            crop = crop_cell(field, box, int(min(round(side), self.detail)))
            crops.append(cv2.resize(crop, (CELL_SIZE, CELL_SIZE), interpolation=cv2.INTER_LINEAR))
        return crops


def crop_sides(unet, unet_size: int, fields: list[str]) -> list[float]:
    from mtl_suite.imaging.segment import unet_mask

    sides = []
    for path in fields:
        for box in find_cells(unet_mask(unet, read_rgb(path), unet_size))[:MAX_CELLS]:
            sides.append(max(box.x1 - box.x0, box.y1 - box.y0) * (1 + 2 * MARGIN))
    return sides


def field_split(data: str):
    from mtl_suite.tasks import smear_split

    return smear_split(DataConfig(path=data, folds=SPLIT.folds, seed=SPLIT.seed))


def load_unet(run_id: str, uri: str):
    from mtl_suite.workflows.segment import load_trained

    trained = load_trained(run_id, uri, "cells")
    return trained.model, trained.size


def write_crops(args) -> None:
    """Crops of every development field (none of the outer test part) and the detail they are read at."""
    split = field_split(args.data)
    unet, size = load_unet(args.unet_run, args.tracking_uri)
    development = [split.entries[i] for i in split.development_indices]
    detail = int(round(float(np.median(crop_sides(unet, size, [e.path for e in development])))))
    reader = Reader(unet, size, detail)
    out = Path(args.out) / "dev"
    rows, empty = [], 0
    for n, entry in enumerate(development, 1):
        cells = reader.cells(read_rgb(entry.path))
        empty += not cells
        for k, cell in enumerate(cells):
            rel = Path(entry.label) / f"{Path(entry.path).stem}_cell{k:02d}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel), cv2.cvtColor(cell, cv2.COLOR_RGB2BGR))
            rows.append({"path": str(rel), "label": entry.label, "group": f"field:{entry.sha256[:16]}"})
        if n % 200 == 0:
            print(f"  {n}/{len(development)} fields", flush=True)
    with (out / "cells.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    meta = {"unet_run": args.unet_run, "detail_px": detail, "cell_size": CELL_SIZE, "fields": len(development),
            "fields_without_cells": empty, "cells": len(rows), "by_label": dict(Counter(r["label"] for r in rows))}
    (Path(args.out) / "crops.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    print(f"cells: {out / 'cells.csv'}")


def held_out_development(cell_run: str, split) -> list:
    """The development fields none of whose cells the cell model trained on: the fields of its validation fold and
    of its own outer part (its split groups cells by field)."""
    import mlflow

    from mtl_suite.data.splits import load_split

    cells = load_split(mlflow.artifacts.download_artifacts(run_id=cell_run, artifact_path="data/split.json"))
    trained = {e.group for e, role in zip(cells.entries, cells.roles) if role == -1}
    held = {e.group for e in cells.entries} - trained
    return [split.entries[i] for i in split.development_indices if f"field:{split.entries[i].sha256[:16]}" in held]


def read_fields(reader: Reader, model, fields: list[np.ndarray]) -> list[dict]:
    """Per field: the mean of its cells' probabilities, its class, how many cells and how many flagged."""
    import pandas as pd

    from mtl_suite.serving.pyfunc import COLUMN
    from mtl_suite.training.conformal import DEFAULT_COVERAGE

    out = []
    for field in fields:
        cells = reader.cells(field)
        if not cells:
            out.append({"cells": 0, "flagged_cells": 0, "probabilities": None, "called": None, "flagged": True})
            continue
        frame = model.predict(pd.DataFrame({COLUMN: pd.Series(cells, dtype=object)}), DEFAULT_COVERAGE)
        probs = np.mean(np.stack(frame["probabilities"].map(np.asarray)), axis=0)
        classes = list(frame["class_names"].iloc[0])
        flagged_cells = int((~frame["in_distribution"].astype(bool)).sum())
        out.append({"cells": len(cells), "flagged_cells": flagged_cells, "classes": classes,
                    "probabilities": probs, "called": classes[int(np.argmax(probs))],
                    "flagged": 2 * flagged_cells >= len(cells)})
    return out


def summarise(rows: list[dict], labels: list[str], expect: str | None) -> dict:
    n = len(rows)
    called = [r["called"] for r in rows]
    flagged = np.array([r["flagged"] for r in rows])
    right = np.array([c == label for c, label in zip(called, labels)])
    summary = {"fields": n, "without_cells": sum(r["cells"] == 0 for r in rows),
               "accuracy": float(right.mean()), "flagged_share": float(flagged.mean()),
               "accuracy_unflagged": float(right[~flagged].mean()) if (~flagged).any() else None,
               "mean_cells": float(np.mean([r["cells"] for r in rows]))}
    if expect:
        wrong_unflagged = np.array([c is not None and c != expect for c in called]) & ~flagged
        summary.update({"called_expected_share": float(right.mean()),
                        "confident_wrong_share": float(wrong_unflagged.mean()),
                        "calls": dict(Counter(str(c) for c in called))})
    return summary


def write_predictions(path: Path, names: list[str], digests: list[str], labels: list[str], rows: list[dict]) -> None:
    classes = next((r["classes"] for r in rows if r["probabilities"] is not None), [])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "sha256", "label", "cells", "flagged_cells", "called", "flagged",
                         *[f"p_{c}" for c in classes]])
        for name, digest, label, row in zip(names, digests, labels, rows):
            probs = row["probabilities"]
            writer.writerow([name, digest, label, row["cells"], row["flagged_cells"], row["called"] or "",
                             int(row["flagged"]), *([f"{p:.6f}" for p in probs] if probs is not None else
                                                    [""] * len(classes))])


def read(args) -> None:
    import hashlib

    from mtl_suite.imaging.augment import magnified, stain_shifted
    from mtl_suite.tracking.evaluation import load_model

    meta = json.loads((Path(args.crops) / "crops.json").read_text())
    unet, size = load_unet(args.unet_run, args.tracking_uri)
    reader = Reader(unet, size, meta["detail_px"])
    # the cell run's Keras model behind the served pyfunc's own class, with the run's detector (as `evaluate` reads it)
    model = load_model(f"runs:/{args.cell_run}/model", args.tracking_uri)
    if args.set == "external":
        paths = sorted(p for p in Path(args.external).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        names, labels = [p.name for p in paths], [args.expect] * len(paths)
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        fields = {"as they are": [read_rgb(p) for p in paths]}
    else:
        split = field_split(args.data)
        entries = (held_out_development(args.cell_run, split) if args.set == "development"
                   else [split.entries[i] for i in split.test_indices])
        names, labels, digests = [Path(e.path).name for e in entries], [e.label for e in entries], \
            [e.sha256 for e in entries]
        images = np.stack([read_rgb(e.path) for e in entries])
        fields = {"as they are": list(images)}
        if args.set == "development":
            fields["re-stained"] = list(stain_shifted(images))
            fields[f"magnified {MAGNIFICATION}x"] = [magnified(i, MAGNIFICATION) for i in images]
    results = {}
    for name, images in fields.items():
        rows = read_fields(reader, model, images)
        results[name] = summarise(rows, labels, args.expect)
        print(f"{args.set}, {name}: {json.dumps(results[name])}", flush=True)
        if args.predictions:
            target = Path(args.predictions)
            target.parent.mkdir(parents=True, exist_ok=True)
            suffix = "" if name == "as they are" else "-" + name.split()[0]
            write_predictions(target.with_name(target.stem + suffix + target.suffix), names, digests, labels, rows)
    print(json.dumps({"set": args.set, "cell_run": args.cell_run, "unet_run": args.unet_run, **results}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    crops = sub.add_parser("crops")
    reading = sub.add_parser("read")
    for p in (crops, reading):
        p.add_argument("--unet-run", required=True)
        p.add_argument("--tracking-uri", required=True)
        p.add_argument("--data", default="../shared/data/aria-all/original")
    crops.add_argument("--out", required=True)
    reading.add_argument("--cell-run", required=True)
    reading.add_argument("--crops", required=True, help="the crops folder (its crops.json names the detail)")
    reading.add_argument("--set", choices=["development", "test", "external"], required=True)
    reading.add_argument("--external")
    reading.add_argument("--expect")
    reading.add_argument("--predictions", help="per-field CSV (one per reading of the set)")
    args = parser.parse_args(argv)
    if args.command == "crops":
        write_crops(args)
    else:
        read(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

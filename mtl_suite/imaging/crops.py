"""Single-cell dataset from smear fields: masks from one of three sources, crops via `cells.write_cell_dataset`,
and each crop tagged with its parent's split role, so crops of test fields can only ever be test data."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mtl_suite.config import NO_GROUPING
from mtl_suite.data.grouping import parse_grouping
from mtl_suite.data.images import read_rgb
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.imaging.cells import write_cell_dataset
from mtl_suite.imaging.masks import Problems, find_mask_file
from mtl_suite.imaging.roi import RoiParams, clean_mask, roi_mask

CROP_METHODS = ("segmented", "roi", "unet")


@dataclass(frozen=True)
class CropJob:
    data: Path
    method: str = "segmented"
    split_file: Path | None = None
    layout: str = "auto"
    masks: Path | None = None
    run_id: str | None = None
    size: int = 96
    max_cells: int = 8
    min_area_fraction: float = 0.002
    drop_border: bool = False
    seed: int = 42
    folds: int = 10
    test_fraction: float = 0.2
    group_by: str = NO_GROUPING  # groups from file names for the new split (data/grouping.py); crops take them too
    roi: RoiParams = RoiParams()

    def __post_init__(self) -> None:
        """A bad or idle --group-by is refused before any mask or U-Net is loaded."""
        if parse_grouping(self.group_by).active and self.split_file is not None:
            raise UserError(f"--group-by {self.group_by!r} groups the split that crops makes; with --split "
                            f"{self.split_file} the file's split is used as it is. Expected one of them")


def job_split(job: CropJob, out_dir: Path):
    """The given split, or a new one (saved beside the crops so the roles can be traced)."""
    from mtl_suite.data.manifest import build_manifest
    from mtl_suite.data.splits import load_split, make_split, save_split

    if job.split_file is not None:
        return load_split(job.split_file)
    manifest = build_manifest(job.data, job.layout, duplicates="drop", on_bad_image="skip", group_by=job.group_by)
    split = make_split(manifest, folds=job.folds, test_fraction=job.test_fraction, seed=job.seed)
    save_split(split, out_dir / "split.json")
    return split


def _masks(job: CropJob, paths: list[str], root: Path, unet, problems: Problems) -> list:
    """One mask (array or segmented-image path) per path, or None where there is none."""
    if job.method == "segmented":
        if job.masks is None:
            raise UserError("--method segmented needs --masks (a folder of cells on black background)")
        if not Path(job.masks).is_dir():
            raise UserError(f"mask folder not found: {job.masks}")
        found = [find_mask_file(Path(p), root, Path(job.masks)) for p in paths]
        for path, mask in zip(paths, found):
            if mask is None:
                problems.add("images without a mask", Path(path).name)
        return found
    images = []
    for path in paths:
        try:
            images.append(read_rgb(path))
        except BadImageError as exc:
            problems.add(f"unreadable images ({exc.reason})", Path(path).name)
            images.append(None)
    if job.method == "roi":
        return [clean_mask(roi_mask(i, job.roi)) if i is not None else None for i in images]
    from mtl_suite.imaging.segment import unet_masks

    model, size = unet
    usable = [i for i in images if i is not None]
    predicted = iter(unet_masks(model, usable, size))
    return [next(predicted) if i is not None else None for i in images]


def make_crops(job: CropJob, out_dir: Path, label_policy_for: Callable[[set[str]], Callable[[str], str]],
               unet=None, progress_for: Callable[[int], Callable | None] = lambda n: None) -> tuple[Path, dict]:
    """Write the dataset; return the CSV path and a summary (counts, problems by name)."""
    if job.method not in CROP_METHODS:
        raise UserError(f"unknown crop method {job.method!r}. Expected one of: {', '.join(CROP_METHODS)}")
    out_dir = Path(out_dir)
    split = job_split(job, out_dir)
    rows = split.to_json()["rows"]
    root = Path(split.root) if split.root else Path(rows[0]["path"]).parent
    policy = label_policy_for({r["label"] for r in rows})
    problems = Problems()
    masks = _masks(job, [r["path"] for r in rows], root, unet, problems)
    keep = [i for i, m in enumerate(masks) if m is not None]
    if not keep:
        raise UserError("no field has a usable mask: " + "; ".join(problems.lines()))
    # grouped by name, each crop takes its field's group, so a split of the cells keeps one smear's cells together
    groups = [rows[i]["group"] for i in keep] if parse_grouping(job.group_by).active else None
    csv_path = write_cell_dataset(
        [rows[i]["path"] for i in keep], [masks[i] for i in keep], [rows[i]["label"] for i in keep],
        [rows[i]["role"] for i in keep], out_dir, size=job.size, max_cells_per_image=job.max_cells,
        min_area_fraction=job.min_area_fraction, drop_border=job.drop_border, label_policy=policy,
        progress=progress_for(len(keep)), groups=groups)
    return csv_path, _summary(csv_path, [rows[i]["path"] for i in keep], problems)


def _summary(csv_path: Path, parents: list[str], problems: Problems) -> dict:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        crops = list(csv.DictReader(handle))
    with_cells = {row["parent"] for row in crops}
    for parent in parents:
        if parent not in with_cells:
            problems.add("images where no cell was found", Path(parent).name)
    return {"crops": len(crops), "parents": len(with_cells), "by_label": dict(Counter(r["label"] for r in crops)),
            "problems": problems.lines()}

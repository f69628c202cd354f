"""Single-cell crops and (image, mask) pairing, including bad input."""

import csv
import json

import cv2
import numpy as np
import pytest

from mtl_suite.errors import UserError
from mtl_suite.imaging.cells import crop_cell, find_cells, write_cell_dataset
from mtl_suite.imaging.crops import CropJob, make_crops
from mtl_suite.imaging.masks import Problems, detect_mask_kind, load_pairs


def three_blobs(shape=(120, 160)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (30, 30), 12, 1, -1)
    cv2.circle(mask, (100, 60), 18, 1, -1)
    cv2.circle(mask, (140, 100), 9, 1, -1)
    mask[5, 150] = 1  # a speck below the area filter
    return mask.astype(bool)


def one_blob(shape=(60, 80)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (40, 30), 12, 255, -1)
    return mask


def write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    cv2.imwrite(str(path), bgr)


def test_three_blobs_give_three_crops_with_their_parent_as_group(tmp_path):
    mask = three_blobs()
    cells = find_cells(mask)
    assert len(cells) == 3 and cells[0].area > cells[1].area > cells[2].area
    image = np.full(mask.shape + (3,), 230, np.uint8)
    image[mask] = (100, 60, 160)
    write(tmp_path / "in" / "field_a.png", image)
    write(tmp_path / "in" / "field_b.png", image)
    csv_path = write_cell_dataset([str(tmp_path / "in" / "field_a.png"), str(tmp_path / "in" / "field_b.png")],
                                  [mask, mask], ["Benign", "Pro"], ["test", "fold-0"], tmp_path / "out", size=32,
                                  label_policy=lambda label: "normal" if label == "Benign" else "blast")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6
    assert {r["group"] for r in rows if r["label"] == "normal"} == {"parent:field_a.png"}
    assert {r["split"] for r in rows if r["group"] == "parent:field_a.png"} == {"test"}
    crop = cv2.imread(str(tmp_path / "out" / rows[0]["path"]))
    assert crop.shape == (32, 32, 3)


def test_crop_at_the_border_is_padded_white_and_square():
    image = np.zeros((50, 70, 3), np.uint8)
    mask = np.zeros((50, 70), bool)
    mask[0:10, 0:10] = True
    crop = crop_cell(image, find_cells(mask)[0], size=24)
    assert crop.shape == (24, 24, 3)
    assert (crop[0, 0] == 255).all()  # outside the field


def test_drop_border_filters_cells_cut_by_the_edge():
    mask = three_blobs()
    mask[50:70, 0:10] = True
    assert len(find_cells(mask, drop_border=True)) == 3
    assert len(find_cells(mask, drop_border=False)) == 4


@pytest.fixture()
def paired(tmp_path):
    """Two classes of fields; binary masks for some, with every kind of problem."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    for cls in ("A", "B"):
        for i in range(4):
            image = rng.integers(180, 255, (60, 80, 3), dtype=np.uint8)
            write(images / cls / f"{cls}{i}.jpg", image)
            good = one_blob()
            if i == 0:
                continue  # missing mask
            if i == 1 and cls == "A":
                good = cv2.resize(good, (40, 30))  # wrong size
            if i == 1 and cls == "B":
                good = rng.integers(0, 256, (60, 80), dtype=np.uint8)  # not binary
            write(masks / cls / f"{cls}{i}.png", good)
    write(masks / "A" / "stray.png", one_blob())
    tiny = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    write(images / "A" / "tiny.png", tiny)
    return images, masks


def test_bad_pairs_are_left_out_and_reported_by_name(paired):
    images, masks = paired
    assert detect_mask_kind(masks) == "binary"
    problems = Problems()
    paths = sorted(images.rglob("*.*"))
    pairs = load_pairs(paths, 32, "binary", images, masks, problems=problems)
    assert sorted(p.split("/")[-1] for p in pairs.paths) == ["A2.jpg", "A3.jpg", "B2.jpg", "B3.jpg"]
    assert pairs.images.shape == (4, 32, 32, 3) and pairs.masks.dtype == bool
    lines = "\n".join(problems.lines())
    assert "2 images without a mask: A0.jpg, B0.jpg" in lines
    assert "1 masks of the wrong size: A1.jpg" in lines
    assert "1 masks that are not binary: B1.jpg" in lines
    assert "images smaller than 16 px: tiny.png" in lines


def test_roi_weak_masks_report_fields_with_no_cell(tmp_path):
    write(tmp_path / "blank.png", np.full((40, 60, 3), 240, np.uint8))
    problems = Problems()
    pairs = load_pairs([tmp_path / "blank.png"], 32, "roi", problems=problems)
    assert len(pairs.paths) == 0
    assert problems.lines() == ["1 images where no cell was found: blank.png"]


def test_crops_from_a_folder_take_roles_from_the_split_and_name_missing_masks(paired, tmp_path):
    images, masks = paired
    (images / "A" / "tiny.png").unlink()
    job = CropJob(data=images, method="segmented", masks=masks, folds=2, test_fraction=0.25, size=24)
    csv_path, summary = make_crops(job, tmp_path / "cells", lambda labels: (lambda label: label.lower()))
    rows = list(csv.DictReader(csv_path.open()))
    split_rows = json.loads((tmp_path / "cells" / "split.json").read_text())["rows"]
    roles = {r["path"]: r["role"] for r in split_rows}
    assert rows and all(r["split"] == roles[r["parent"]] for r in rows)
    assert {r["label"] for r in rows} <= {"a", "b"}
    assert any("images without a mask" in line for line in summary["problems"])


def test_crops_stop_with_a_clear_error_when_no_mask_is_usable(tmp_path, paired):
    images, _ = paired
    empty = tmp_path / "no_masks"
    empty.mkdir()
    with pytest.raises(UserError, match="no field has a usable mask"):
        make_crops(CropJob(data=images, method="segmented", masks=empty, folds=2, test_fraction=0.25),
                   tmp_path / "cells", lambda labels: str)

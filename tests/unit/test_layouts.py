"""Layout readers (folder per class, ALL-IDB, C-NMC, CSV), auto-detection and their errors, on trees built here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_suite.data.layouts import LAYOUTS, detect_layout, read_csv_manifest, read_layout
from mtl_suite.errors import UserError


def labels_by_name(records) -> dict[str, str]:
    return {r.path.name: r.label for r in records}


# --- folder per class --------------------------------------------------------------------------------------------

def test_folder_layout_labels_from_folder_names(tmp_path, make_tree, make_image):
    root = make_tree(tmp_path / "d", {"Benign": 2, "Pro": 3}, suffix=".jpg")
    make_image(root / "Pro" / "sub" / "deep.png", seed=50)  # nested images belong to their class
    (root / "Pro" / "notes.txt").write_text("not an image")
    make_image(root / "Pro" / ".hidden.png", seed=51)
    make_image(root / "stray.png", seed=52)  # a loose file at the root is no class
    name, records = read_layout(root)
    assert name == "folder"
    assert sorted(labels_by_name(records).items()) == sorted(
        [("Benign_000.jpg", "Benign"), ("Benign_001.jpg", "Benign"), ("Pro_000.jpg", "Pro"),
         ("Pro_001.jpg", "Pro"), ("Pro_002.jpg", "Pro"), ("deep.png", "Pro")])
    assert all(r.group is None and r.mask is None for r in records)


def test_folder_layout_class_without_images_names_the_folder(tmp_path, make_tree):
    root = make_tree(tmp_path / "d", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("x")
    with pytest.raises(UserError) as info:
        read_layout(root)
    assert str(root / "c") in str(info.value) and "no images" in str(info.value)


def test_folder_of_loose_images_is_not_a_layout(tmp_path, make_image):
    for i in range(3):
        make_image(tmp_path / "d" / f"{i}.png", seed=i)
    with pytest.raises(UserError, match="no images found in a known layout"):
        read_layout(tmp_path / "d")
    with pytest.raises(UserError, match="no images found for layout 'folder'"):
        read_layout(tmp_path / "d", "folder")


# --- ALL-IDB -----------------------------------------------------------------------------------------------------

def test_allidb_names_give_labels(tmp_path, make_image):
    root = tmp_path / "ALL_IDB"
    for i, name in enumerate(["Im001_1.jpg", "Im002_0.jpg"]):
        make_image(root / "ALL_IDB1" / "im" / name, seed=i)
    for i, name in enumerate(["Im001_1.tif", "Im130_0.tif"]):
        make_image(root / "ALL_IDB2" / "img" / name, seed=10 + i)
    (root / "ALL_IDB1" / "xyc").mkdir()
    (root / "ALL_IDB1" / "xyc" / "Im001_1.xyc").write_text("10 20\n")  # blast centres: not images, ignored
    name, records = read_layout(root)
    assert name == "allidb"
    by_path = {str(r.path.relative_to(root)): r.label for r in records}
    assert by_path == {
        "ALL_IDB1/im/Im001_1.jpg": "leukemia",  # ALL-IDB1: smear fields, L=1 leukemic patient
        "ALL_IDB1/im/Im002_0.jpg": "normal",
        "ALL_IDB2/img/Im001_1.tif": "blast",  # ALL-IDB2: single cells, L=1 blast
        "ALL_IDB2/img/Im130_0.tif": "normal",
    }


@pytest.mark.parametrize("bad_name", ["Im003_2.jpg", "Im004.jpg", "image_1.jpg", "Im005_1.png", "Imx_0.tif"])
def test_allidb_name_that_does_not_parse_names_the_file(tmp_path, make_image, bad_name):
    root = tmp_path / "idb"
    make_image(root / "Im001_1.jpg", seed=1)
    make_image(root / "Im002_0.jpg", seed=2)
    make_image(root / bad_name, seed=3)
    with pytest.raises(UserError) as info:
        read_layout(root)  # auto-detected as ALL-IDB from the good names
    assert str(root / bad_name) in str(info.value) and "ImNNN_L" in str(info.value)


def test_allidb_layout_forced_on_other_names(tmp_path, make_tree):
    root = make_tree(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(UserError, match="not an ALL-IDB file name"):
        read_layout(root, "allidb")


# --- C-NMC -------------------------------------------------------------------------------------------------------

def test_cnmc_names_give_labels_and_patient_groups(tmp_path, make_image):
    root = tmp_path / "C-NMC" / "training_data"
    names = {
        "fold_0/all/UID_11_10_1_all.bmp": ("blast", "patient-11"),
        "fold_0/all/UID_11_12_2_all.bmp": ("blast", "patient-11"),
        "fold_0/all/UID_7_1_1_all.bmp": ("blast", "patient-7"),
        "fold_0/hem/UID_H10_43_1_hem.bmp": ("normal", "patient-H10"),
        "fold_1/hem/UID_H10_44_3_hem.bmp": ("normal", "patient-H10"),
    }
    for i, rel in enumerate(names):
        make_image(root / rel, seed=i, size=(24, 24))
    name, records = read_layout(root)
    assert name == "cnmc"
    got = {str(r.path.relative_to(root)): (r.label, r.group) for r in records}
    assert got == names


def test_cnmc_file_without_class_suffix_names_the_file(tmp_path, make_image):
    root = tmp_path / "cnmc"
    make_image(root / "all" / "UID_1_1_1_all.bmp", seed=1)
    make_image(root / "hem" / "UID_H1_1_1_hem.bmp", seed=2)
    make_image(root / "hem" / "UID_H1_2_1.bmp", seed=3)
    with pytest.raises(UserError) as info:
        read_layout(root)
    assert str(root / "hem" / "UID_H1_2_1.bmp") in str(info.value) and "_hem.bmp" in str(info.value)


# --- CSV ---------------------------------------------------------------------------------------------------------

def csv_dataset(tmp_path: Path, make_image, text: str) -> Path:
    for i, name in enumerate(["a.png", "b.png", "c.png", "m/a.png"]):
        make_image(tmp_path / "ds" / "img" / name, seed=i)
    path = tmp_path / "ds" / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_reads_path_label_group_mask(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image,
                       "path,label,group,mask\nimg/a.png,blast,P1,img/m/a.png\nimg/b.png,normal,P2,\n"
                       "img/c.png, blast ,,\n")
    name, records = read_layout(path)
    assert name == "csv"
    base = path.parent.resolve()
    assert [(r.path, r.label, r.group, r.mask) for r in records] == [
        (base / "img/a.png", "blast", "P1", base / "img/m/a.png"),
        (base / "img/b.png", "normal", "P2", None),
        (base / "img/c.png", "blast", None, None),
    ]


def test_csv_with_byte_order_mark_and_only_required_columns(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image, "")
    path.write_bytes("\ufeffpath,label\nimg/a.png,x\nimg/b.png,y\n".encode("utf-8"))  # as Excel saves it
    assert [r.label for r in read_csv_manifest(path)] == ["x", "y"]


def test_csv_missing_columns_are_named(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image, "file,class\nimg/a.png,x\n")
    with pytest.raises(UserError) as info:
        read_layout(path)
    message = str(info.value)
    assert str(path) in message and "missing column(s) label, path" in message and "Received: file, class" in message


def test_csv_duplicate_paths_name_the_line(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image, "path,label\nimg/a.png,x\nimg/b.png,y\n./img/../img/a.png,x\n")
    with pytest.raises(UserError) as info:
        read_layout(path)
    assert f"{path}:4" in str(info.value) and "listed twice" in str(info.value)


@pytest.mark.parametrize("outside", ["../secret.png", "/etc/passwd", "img/../../x.png"])
def test_csv_paths_outside_its_folder_are_refused(tmp_path, make_image, outside):
    make_image(tmp_path / "secret.png", seed=9)
    path = csv_dataset(tmp_path, make_image, f"path,label\nimg/a.png,x\n{outside},y\n")
    with pytest.raises(UserError) as info:
        read_layout(path)
    assert f"{path}:3" in str(info.value) and "outside the manifest's folder" in str(info.value)


def test_csv_absolute_path_inside_its_folder_is_fine(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image, "")
    path.write_text(f"path,label\n{(path.parent / 'img' / 'a.png').resolve()},x\n", encoding="utf-8")
    assert len(read_csv_manifest(path)) == 1


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ("img/a.png,\n", "empty label"),
        (",x\n", "empty path"),
        ("img/a.png\n", "empty label"),  # a short row
    ],
)
def test_csv_empty_cells_name_the_line(tmp_path, make_image, rows, words):
    path = csv_dataset(tmp_path, make_image, "path,label\n" + rows)
    with pytest.raises(UserError) as info:
        read_layout(path)
    assert f"{path}:2" in str(info.value) and words in str(info.value)


def test_csv_without_rows(tmp_path, make_image):
    path = csv_dataset(tmp_path, make_image, "path,label\n")
    with pytest.raises(UserError, match="no rows"):
        read_layout(path)


def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xd8\xff\xe0binary\x00\x81")
    with pytest.raises(UserError, match="not a UTF-8"):
        read_layout(path)


# --- choosing a layout -------------------------------------------------------------------------------------------

def test_unknown_layout_lists_valid_ones(tmp_path, class_tree):
    with pytest.raises(UserError) as info:
        read_layout(class_tree, "imagenet")
    message = str(info.value)
    assert "Received: 'imagenet'" in message
    assert all(name in message for name in ["auto", *LAYOUTS])


def test_layout_kind_must_match_the_path(tmp_path, class_tree, make_image):
    with pytest.raises(UserError, match="reads a .csv file"):
        read_layout(class_tree, "csv")
    path = csv_dataset(tmp_path, make_image, "path,label\nimg/a.png,x\n")
    with pytest.raises(UserError, match="reads a folder"):
        read_layout(path, "folder")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="data path not found"):
        read_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="data folder is empty"):
        read_layout(tmp_path / "empty")
    with pytest.raises(UserError, match="data folder is empty"):
        read_layout(tmp_path / "empty", "folder")


def test_detection_prefers_naming_schemes_over_folders(tmp_path, make_image):
    # A C-NMC tree is also a folder-per-class tree (all/, hem/): its names must win, or patients are lost.
    make_image(tmp_path / "c" / "all" / "UID_1_1_1_all.bmp", seed=1)
    make_image(tmp_path / "c" / "hem" / "UID_H2_1_1_hem.bmp", seed=2)
    assert detect_layout(tmp_path / "c").name == "cnmc"
    make_image(tmp_path / "i" / "x" / "Im001_1.jpg", seed=3)
    assert detect_layout(tmp_path / "i").name == "allidb"

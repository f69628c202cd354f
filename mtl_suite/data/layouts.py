"""Readers for the on-disk layouts of the datasets the paper and its successors use.

Each layout turns a root path into Records (path, label, optional group, optional mask). Layouts live in a
registry: `--layout NAME` picks one, `auto` tries their detectors in order.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mtl_suite.data.images import is_image_file
from mtl_suite.errors import UserError


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    group: str | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], list[Record]]


def _images_under(root: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if is_image_file(p))


# --- folder per class -------------------------------------------------------------------------------------------

def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _detect_folder(root: Path) -> bool:
    return root.is_dir() and any(_images_under(d, recursive=True) for d in _class_dirs(root))


def _read_folder(root: Path) -> list[Record]:
    records = []
    for class_dir in _class_dirs(root):
        images = _images_under(class_dir, recursive=True)
        if not images:
            raise UserError(f"class folder {class_dir} has no images (expected .jpg, .png, .bmp or .tif files)")
        records += [Record(path=p, label=class_dir.name) for p in images]
    return records


# --- ALL-IDB: ImNNN_L.jpg (ALL-IDB1 smear fields) / ImNNN_L.tif (ALL-IDB2 single cells), L = 1 blast, 0 normal -----

_ALLIDB_NAME = re.compile(r"^Im(\d+)_([01])$")
_ALLIDB_POSITIVE = {".jpg": "leukemia", ".jpeg": "leukemia", ".tif": "blast", ".tiff": "blast"}


def _detect_allidb(root: Path) -> bool:
    return root.is_dir() and any(_ALLIDB_NAME.match(p.stem) for p in _images_under(root, recursive=True))


def _read_allidb(root: Path) -> list[Record]:
    records = []
    for path in _images_under(root, recursive=True):
        match = _ALLIDB_NAME.match(path.stem)
        if not match or path.suffix.lower() not in _ALLIDB_POSITIVE:
            raise UserError(
                f"{path}: not an ALL-IDB file name. Expected ImNNN_L.jpg or ImNNN_L.tif with L = 0 (normal) or "
                f"1 (blast), e.g. Im001_1.jpg"
            )
        label = _ALLIDB_POSITIVE[path.suffix.lower()] if match.group(2) == "1" else "normal"
        records.append(Record(path=path, label=label))
    return records


# --- C-NMC 2019: UID_<patient>_<image>_<cell>_<all|hem>.bmp -------------------------------------------------------

_CNMC_NAME = re.compile(r"^UID_(H?\d+)_.*_(all|hem)$", re.IGNORECASE)


def _detect_cnmc(root: Path) -> bool:
    return root.is_dir() and any(p.stem.lower().endswith(("_all", "_hem")) for p in _images_under(root, True))


def _read_cnmc(root: Path) -> list[Record]:
    records = []
    for path in _images_under(root, recursive=True):
        stem = path.stem
        if not stem.lower().endswith(("_all", "_hem")):
            raise UserError(f"{path}: not a C-NMC file name. Expected *_all.bmp (blast) or *_hem.bmp (normal)")
        match = _CNMC_NAME.match(stem)
        # The patient id keeps all cells of one subject in one fold; names without it fall back to the file.
        group = f"patient-{match.group(1)}" if match else None
        label = "blast" if stem.lower().endswith("_all") else "normal"
        records.append(Record(path=path, label=label, group=group))
    return records


# --- CSV manifest: path,label[,group][,mask] ----------------------------------------------------------------------

def _detect_csv(root: Path) -> bool:
    return root.is_file() and root.suffix.lower() == ".csv"


def read_csv_manifest(csv_path: Path, allow_outside_root: bool = False) -> list[Record]:
    try:
        return _read_csv_rows(csv_path, allow_outside_root)
    except UnicodeDecodeError:
        raise UserError(f"{csv_path}: not a UTF-8 text file (expected a CSV with columns path,label)") from None
    except csv.Error as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({exc})") from None


def _read_csv_rows(csv_path: Path, allow_outside_root: bool) -> list[Record]:
    base = csv_path.parent.resolve()
    # utf-8-sig: spreadsheet programs start CSVs with a byte-order mark, which would otherwise hide the 'path' column.
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip() for name in reader.fieldnames or []}
        missing = {"path", "label"} - columns
        if missing:
            raise UserError(
                f"{csv_path}: missing column(s) {', '.join(sorted(missing))}. Expected columns: "
                f"path, label, optional group, optional mask. Received: {', '.join(reader.fieldnames or [])}"
            )
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        records, seen = [], {}
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip():
                raise UserError(f"{csv_path}:{line}: empty path. Received row: {row}")
            path = _resolve_inside(base, row["path"].strip(), csv_path, line, allow_outside_root)
            if path in seen:
                raise UserError(f"{csv_path}:{line}: path {row['path']!r} is listed twice (first on line "
                                f"{seen[path]}). Expected each image once")
            seen[path] = line
            if not (row.get("label") or "").strip():
                raise UserError(f"{csv_path}:{line}: empty label for {row['path']!r}")
            mask = (row.get("mask") or "").strip() or None
            records.append(Record(
                path=path,
                label=row["label"].strip(),
                group=(row.get("group") or "").strip() or None,
                mask=_resolve_inside(base, mask, csv_path, line, allow_outside_root) if mask else None,
            ))
    if not records:
        raise UserError(f"{csv_path}: no rows")
    return records


def _resolve_inside(base: Path, value: str, csv_path: Path, line: int, allow_outside: bool) -> Path:
    """Symbolic links are followed first, so a link inside the folder that points out of it is outside too."""
    path = (base / value).resolve()
    if not allow_outside and not path.is_relative_to(base):
        raise UserError(
            f"{csv_path}:{line}: path {value!r} is outside the manifest's folder {base}. Expected a path inside "
            f"that folder (relative to the CSV, or absolute); pass --allow-outside-root to accept it"
        )
    return path


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in [
        Layout("csv", "CSV file with columns path,label[,group][,mask]", _detect_csv, read_csv_manifest),
        Layout("cnmc", "C-NMC 2019 single cells: *_all.bmp / *_hem.bmp", _detect_cnmc, _read_cnmc),
        Layout("allidb", "ALL-IDB1/2: ImNNN_L.jpg / ImNNN_L.tif, L = 1 blast, 0 normal", _detect_allidb, _read_allidb),
        Layout("folder", "one sub-folder of images per class", _detect_folder, _read_folder),
    ]
}


def detect_layout(root: Path) -> Layout:
    for layout in LAYOUTS.values():  # order matters: specific naming schemes before the generic folder tree
        if layout.detect(root):
            return layout
    raise UserError(
        f"{root}: no images found in a known layout. Expected one of: "
        + "; ".join(f"{l.name} ({l.description})" for l in LAYOUTS.values())
    )


ONE_CLASS = "one-class"  # not a layout to detect: every image under a folder given one label (evaluate --expect)


def read_one_class(root: Path, label: str) -> list[Record]:
    """Every image under `root` (searched recursively, whatever the folder names), all labelled `label`."""
    if not root.is_dir():
        raise UserError(f"expected a folder of images. Received: {root}")
    records = [Record(path=p, label=label) for p in _images_under(root, recursive=True)]
    if not records:
        raise UserError(f"{root}: no image files (.jpg, .jpeg, .png, .bmp, .tif, .tiff) in it or its subfolders")
    return records


def read_layout(root: str | Path, layout: str = "auto", allow_outside_root: bool = False) -> tuple[str, list[Record]]:
    """`allow_outside_root`: a CSV manifest may list files outside its own folder (off by default, so that a
    manifest from elsewhere cannot make the suite read, hash and log arbitrary files)."""
    root = Path(root)
    if layout != "auto" and layout not in LAYOUTS:
        raise UserError(f"unknown layout. Expected one of: auto, {', '.join(LAYOUTS)}. Received: {layout!r}")
    if not root.exists():
        raise UserError(f"data path not found: {root}")
    if root.is_dir() and not any(root.iterdir()):
        raise UserError(f"data folder is empty: {root}")
    if layout == "auto":
        chosen = detect_layout(root)
    else:
        chosen = LAYOUTS[layout]
        wants_file = chosen.name == "csv"
        if wants_file != root.is_file():
            expected = "a .csv file" if wants_file else "a folder"
            raise UserError(f"layout {chosen.name!r} reads {expected}. Received: {root}")
    records = read_csv_manifest(root, allow_outside_root) if chosen.name == "csv" else chosen.read(root)
    if not records:
        raise UserError(f"{root}: no images found for layout {chosen.name!r} ({chosen.description})")
    return chosen.name, records

"""Groups from file names (`--group-by`, data.group_by): the values it parses and refuses, a grouped split that
never puts one group on two sides (over several seeds, on real image files with numbered names), identical files
still together on top, and splits byte-for-byte unchanged when the option is not set."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from mtl_suite.cli import app
from mtl_suite.config import NO_GROUPING, keyed_settings, load_config
from mtl_suite.data.grouping import name_groups, parse_grouping
from mtl_suite.data.manifest import build_manifest
from mtl_suite.data.splits import TEST, make_split
from mtl_suite.errors import UserError
from mtl_suite.paths import SAMPLE_IMAGES

CLASSES = ("Benign", "Early", "Pre")
# gaps in the numbering, as in aria-all (WBC-Benign-001, -002, -004, ...): blocks count numbers, not files
NUMBERS = [n for n in range(1, 73) if n % 7 != 5]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    """Three classes of small real images named like aria-all's, WBC-<class>-NNN.png."""
    from conftest import write_image

    root = tmp_path_factory.mktemp("numbered")
    for c, cls in enumerate(CLASSES):
        for n in NUMBERS:
            write_image(root / cls / f"WBC-{cls}-{n:03d}.png", seed=1000 * c + n, size=(12, 10))
    return root


def relative_name_group(grouping: str, root: Path, path: str) -> str:
    return parse_grouping(grouping).name_group(PurePosixPath(Path(path).relative_to(root).as_posix()))


def block_of(root: Path, path: str, size: int) -> tuple[str, int]:
    """The test's own reading of blocks:N: (class folder, file number // N)."""
    relative = Path(path).relative_to(root)
    return relative.parent.name, int(re.search(r"(\d+)$", relative.stem).group(1)) // size


def roles_per_group(split, key) -> dict:
    out = defaultdict(set)
    for entry, role in zip(split.entries, split.roles):
        out[key(entry)].add(role)
    return out


# --- parsing ------------------------------------------------------------------------------------------------------

def test_blocks_group_consecutive_numbers_within_one_folder_and_name():
    block = parse_grouping("blocks:20").name_group
    assert block(PurePosixPath("Benign/WBC-Benign-001.jpg")) == "Benign/WBC-Benign-[0-19]"
    assert block(PurePosixPath("Benign/WBC-Benign-019.jpg")) == block(PurePosixPath("Benign/WBC-Benign-001.jpg"))
    assert block(PurePosixPath("Benign/WBC-Benign-020.jpg")) == "Benign/WBC-Benign-[20-39]"
    assert block(PurePosixPath("Pro/WBC-Pro-001.jpg")) != block(PurePosixPath("Pre/WBC-Pre-001.jpg"))
    assert block(PurePosixPath("a/scan2-field007b.png")) == "a/scan2-field[0-19]b"  # the last run of digits
    assert block(PurePosixPath("12.png")) == "[0-19]"
    assert block(PurePosixPath("Benign/no-number.jpg")) is None
    assert parse_grouping("blocks:1").name_group(PurePosixPath("x/a-7.png")) == "x/a-[7-7]"


def test_regex_groups_by_the_first_capture_group_or_the_whole_match():
    by_capture = parse_grouping(r"regex:patient(\d+)_").name_group
    assert by_capture(PurePosixPath("blast/patient12_field3.png")) == "12"
    assert by_capture(PurePosixPath("normal/patient12_field9.png")) == "12"  # whatever the folder
    assert by_capture(PurePosixPath("normal/other.png")) is None
    whole = parse_grouping(r"regex:WBC-\w+-\d\d").name_group
    assert whole(PurePosixPath("Benign/WBC-Benign-123.jpg")) == "WBC-Benign-12"
    optional = parse_grouping(r"regex:x(\d*)y").name_group
    assert optional(PurePosixPath("a/xy.png")) is None  # an empty capture names no group


def test_none_groups_nothing():
    grouping = parse_grouping(NO_GROUPING)
    assert not grouping.active
    assert name_groups(grouping, [Path("/d/a/1.png")], Path("/d")) == {}


@pytest.mark.parametrize(("value", "words"), [
    ("blocks:0", "N must be at least 1"),
    ("blocks:-4", "N must be at least 1"),
    ("blocks:twenty", "N must be a whole number"),
    ("blocks", "blocks needs a value (blocks:N)"),
    ("regex:(", "not a valid regular expression (missing )"),
    ("regex:", "PATTERN is empty"),
    ("none:3", "none takes no value"),
    ("patient", "unknown grouping 'patient'"),
])
def test_bad_values_are_one_line_naming_the_value_and_what_was_expected(value, words):
    with pytest.raises(UserError) as info:
        parse_grouping(value)
    message = str(info.value)
    assert message.startswith(f"--group-by {value!r}: ") and words in message, message
    assert "Expected none, blocks:N" in message and "\n" not in message


def test_a_file_without_a_group_is_named(tmp_path, make_image):
    for name in ("WBC-Benign-001.png", "WBC-Benign-002.png", "scan-final.png"):
        make_image(tmp_path / "Benign" / name, seed=len(name))
    make_image(tmp_path / "Pro" / "WBC-Pro-001.png", seed=99)
    with pytest.raises(UserError) as info:
        build_manifest(tmp_path, group_by="blocks:20")
    assert str(info.value) == ("--group-by 'blocks:20': 1 of 4 images have no number in their file name, e.g. "
                               "Benign/scan-final.png. Expected every image to have a group; choose another "
                               "--group-by")
    with pytest.raises(UserError, match=r"2 of 4 images do not match the pattern .* e\.g\. Benign/WBC-Benign-001"):
        build_manifest(tmp_path, group_by="regex:(final|Pro)")


# --- splits -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [5, 12])
def test_a_grouped_split_never_puts_one_block_on_two_sides(numbered, size):
    """Property over seeds and fold counts: each block of `size` numbers (as the test reads the names) is in
    exactly one part, so never in the test part and the development part, nor in two folds."""
    manifest = build_manifest(numbered, group_by=f"blocks:{size}")
    assert len({e.group for e in manifest.entries}) == len({block_of(numbered, e.path, size) for e in manifest.entries})
    for seed in range(6):
        for folds in (2, 3):
            split = make_split(manifest, folds=folds, test_fraction=0.2, seed=seed)
            by_block = roles_per_group(split, lambda e: block_of(numbered, e.path, size))
            assert all(len(roles) == 1 for roles in by_block.values()), (seed, folds)
            assert TEST in set(split.roles)
            for _, train, val in split.fold_indices():
                assert not {block_of(numbered, split.entries[i].path, size) for i in train} & {
                    block_of(numbered, split.entries[i].path, size) for i in val}


def test_a_regex_grouped_split_keeps_each_match_on_one_side(numbered):
    # the first two digits: WBC-Early-013 and -017 together, across the block boundaries of blocks:N
    grouping = r"regex:^(\w+/WBC-\w+-\d\d)"
    manifest = build_manifest(numbered, group_by=grouping)
    for seed in range(4):
        split = make_split(manifest, folds=3, test_fraction=0.25, seed=seed)
        by_match = roles_per_group(split, lambda e: relative_name_group(grouping, numbered, e.path))
        assert len(by_match) == 3 * 8 and all(len(roles) == 1 for roles in by_match.values())


def test_identical_files_stay_together_on_top_of_the_name_groups(tmp_path, numbered):
    """A copy of a field filed under another number joins the two blocks: the same pixels are never on two sides."""
    root = shutil.copytree(numbered, tmp_path / "copied")
    shutil.copyfile(root / "Pre" / "WBC-Pre-003.png", root / "Pre" / "WBC-Pre-075.png")  # a new number, block 7
    manifest = build_manifest(root, group_by="blocks:10", duplicates="group")
    groups = {Path(e.path).name: e.group for e in manifest.entries}
    assert groups["WBC-Pre-003.png"] == groups["WBC-Pre-075.png"] == groups["WBC-Pre-071.png"]
    assert groups["WBC-Pre-009.png"] == groups["WBC-Pre-003.png"]
    for seed in range(4):
        split = make_split(manifest, folds=3, test_fraction=0.2, seed=seed)
        roles = roles_per_group(split, lambda e: e.sha256)
        assert all(len(r) == 1 for r in roles.values())
        joined = roles_per_group(split, lambda e: block_of(root, e.path, 10) in {("Pre", 0), ("Pre", 7)})
        assert len(joined[True]) == 1


def test_a_layout_group_and_a_name_group_both_hold(tmp_path, make_image):
    for i, n in enumerate((1, 11, 41, 61)):
        make_image(tmp_path / f"field-{n:03d}.png", seed=i)
    # P1 is in two blocks, and blocks:20 joins fields 1 and 11: those three end in one group, P2's field alone
    (tmp_path / "labels.csv").write_text("path,label,group\nfield-001.png,a,P1\nfield-011.png,a,\n"
                                         "field-041.png,a,P1\nfield-061.png,b,P2\n")
    manifest = build_manifest(tmp_path / "labels.csv", group_by="blocks:20")
    groups = {Path(e.path).name: e.group for e in manifest.entries}
    assert groups["field-001.png"] == groups["field-011.png"] == groups["field-041.png"] != groups["field-061.png"]


def _content_digest(split) -> str:
    """The split without its absolute paths (which differ between checkouts): images, groups and roles."""
    rows = sorted(f"{e.sha256} {e.group} {r}" for e, r in zip(split.entries, split.roles))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# Computed on the bundled sample before data.group_by existed (folds 5, test part 0.2): a split made without the
# option must stay exactly this, or runs keyed on it would no longer resume.
SPLITS_BEFORE = {42: "b7bd600e4c65209b785c40886aa747b3dcd5e9d021ed9c3b9ffb2f6c528e495e",
                 7: "73ab0e0f1095096b786a002353abc52204dad83b1bb0e553fae4bb7f02a1e325"}


@pytest.mark.parametrize("seed", sorted(SPLITS_BEFORE))
def test_without_the_option_splits_are_what_they_were(seed):
    default = make_split(build_manifest(SAMPLE_IMAGES), folds=5, test_fraction=0.2, seed=seed)
    named = make_split(build_manifest(SAMPLE_IMAGES, group_by="none"), folds=5, test_fraction=0.2, seed=seed)
    assert _content_digest(default) == _content_digest(named) == SPLITS_BEFORE[seed]
    grouped = make_split(build_manifest(SAMPLE_IMAGES, group_by="blocks:80"), folds=5, test_fraction=0.2, seed=seed)
    assert _content_digest(grouped) != SPLITS_BEFORE[seed]


def test_the_setting_enters_resume_and_comparison_keys_only_when_set(tmp_path):
    assert "data.group_by" not in keyed_settings(load_config())
    assert "data.group_by" not in keyed_settings(load_config(overrides={"data.group_by": "none"}))
    assert keyed_settings(load_config(overrides={"data.group_by": "blocks:20"}))["data.group_by"] == "blocks:20"
    (tmp_path / "exp.yaml").write_text("data:\n  group_by: 'blocks:80'\n")
    assert load_config(tmp_path / "exp.yaml").data.group_by == "blocks:80"


# --- the command line -----------------------------------------------------------------------------------------------

def _refusal(runner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", [["data", "split"], ["data", "inspect"], ["stage3", "-q"], ["tune", "-q"],
                                     ["compare", "-q"], ["segment", "train", "-q"], ["segment", "crops", "-q"]])
def test_a_bad_value_ends_in_one_line_before_anything_is_made(runner, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = _refusal(runner, *command, "--group-by", "blocks:0")
    assert "--group-by" in line and "'blocks:0': N must be at least 1" in line
    assert list(tmp_path.iterdir()) == []  # no store, no split file, no crops


def test_a_bad_value_in_an_experiment_file_names_the_key(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text("data:\n  group_by: 'regex:('\n")
    line = _refusal(runner, "classical", "--config", str(tmp_path / "exp.yaml"), "-q")
    assert line.startswith("error: --group-by (data.group_by) 'regex:(': not a valid regular expression")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_crops_refuse_a_grouping_beside_a_split_file(runner, tmp_path):
    line = _refusal(runner, "segment", "crops", "--split", str(tmp_path / "split.json"), "--group-by", "blocks:20",
                    "--out", str(tmp_path / "cells"))
    assert "--group-by 'blocks:20' groups the split that crops makes; with --split" in line


def test_data_split_and_inspect_report_the_groups(runner, tmp_path, numbered):
    out = tmp_path / "split.json"
    result = runner.invoke(app, ["data", "split", str(numbered), "--folds", "3", "--group-by", "blocks:12",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    n_blocks = len({block_of(numbered, str(p), 12) for p in numbered.rglob("*.png")})
    assert f"{n_blocks} independent groups (grouped by --group-by blocks:12 and byte-identical files)" in result.output
    header = next(line for line in result.output.splitlines() if line.strip().startswith("part"))
    assert header.split()[-1] == "groups"
    rows = json.loads(out.read_text())["rows"]
    assert len({r["group"] for r in rows}) == n_blocks
    inspected = runner.invoke(app, ["data", "inspect", str(numbered), "--group-by", "blocks:12", "--format", "json"])
    report = json.loads(inspected.output)
    assert report["groups"] == n_blocks and report["group_by"] == "blocks:12"
    plain = json.loads(runner.invoke(app, ["data", "inspect", str(numbered), "--format", "json"]).output)
    assert plain["groups"] == len(CLASSES) * len(NUMBERS) and plain["group_by"] == "none"


def test_crops_of_grouped_fields_take_their_field_group(tmp_path, make_image):
    """A single-cell dataset cut from grouped smears carries the smear's group, so its splits keep the cells of
    one smear together; without groups a crop's group is its field, as before."""
    import csv

    from mtl_suite.imaging.cells import write_cell_dataset

    mask = np.zeros((40, 40), dtype=bool)
    mask[10:22, 12:24] = True
    images = [str(make_image(tmp_path / f"WBC-Pre-00{i}.png", seed=i, size=(40, 40))) for i in (1, 2)]
    for groups, expected in ((["Pre/WBC-Pre-[0-19]"] * 2, {"group:Pre/WBC-Pre-[0-19]"}),
                             (None, {"parent:WBC-Pre-001.png", "parent:WBC-Pre-002.png"})):
        out = tmp_path / ("grouped" if groups else "plain")
        csv_path = write_cell_dataset(images, [mask, mask], ["Pre", "Pre"], ["fold-0", "fold-1"], out, size=16,
                                      groups=groups)
        with csv_path.open(newline="") as handle:
            assert {row["group"] for row in csv.DictReader(handle)} == expected

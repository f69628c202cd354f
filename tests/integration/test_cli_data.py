"""`mtl-suite data inspect|split` end to end through Typer's runner: the bundled sample, the bad-input corpus,
and (when present) the real aria-all data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mtl_suite.cli import app
from mtl_suite.data.splits import load_split
from mtl_suite.paths import SAMPLE_IMAGES

DUPLICATE_PAIR = ["Pro/WBC-Malignant-Pro-011.jpg", "Pro/WBC-Malignant-Pro-012.jpg"]


def invoke(runner, *args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *words: str) -> str:
    """Exit code 2, exactly one line, no traceback, and the line names what was wrong."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    output = result.output.strip()
    assert "Traceback" not in result.output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: ")
    for word in words:
        assert word in output, (word, output)
    return output


# --- help --------------------------------------------------------------------------------------------------------

def test_help_lists_the_data_group(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("data "))
    assert "Inspect and split datasets" in line


def test_data_commands_show_defaults(runner):
    result = invoke(runner, "data", "split", "--help")
    assert result.exit_code == 0
    for option, default in [("--folds", "10"), ("--seed", "42"), ("--on-bad-image", "fail"), ("--layout", "auto")]:
        assert option in result.output
        assert f"default: {default}" in result.output
    assert "default: skip" in invoke(runner, "data", "inspect", "--help").output


# --- the bundled sample ------------------------------------------------------------------------------------------

def test_inspect_sample_text(runner):
    result = invoke(runner, "data", "inspect")  # no path: the bundled sample
    assert result.exit_code == 0, result.output
    out = result.output
    assert "(layout: folder)" in out and "96 readable images in 4 classes" in out
    for name in ["Benign", "Early", "Pre", "Pro"]:
        assert any(line.split() == [name, "24"] for line in out.splitlines()), name
    assert "Duplicate sets (byte-identical files): 1" in out
    assert f"{DUPLICATE_PAIR[0]} = {DUPLICATE_PAIR[1]}" in out
    assert "Unreadable files: 0" in out
    assert "95 independent groups" in out  # the pair shares one group


def test_inspect_sample_json(runner):
    result = invoke(runner, "data", "inspect", SAMPLE_IMAGES, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == {"Benign": 24, "Early": 24, "Pre": 24, "Pro": 24}
    assert report["images"] == 96
    assert report["duplicate_sets"] == [DUPLICATE_PAIR]
    assert report["duplicate_files"] == 1
    assert report["unreadable"] == []
    assert report["size"]["most_common"] == {"224x224": 96}
    assert len(report["digest"]) == 64 and report["layout"] == "folder"


def test_split_writes_a_file_and_prints_its_sha256(runner, tmp_path):
    out = tmp_path / "splits" / "sample.json"
    result = invoke(runner, "data", "split", "--out", out, "--folds", "3", "--seed", "7")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"Split written to {out} (sha256 {digest})" in result.output
    assert "1 duplicate copies left out" in result.output
    split = load_split(out)
    assert split.folds == 3 and split.seed == 7 and len(split.entries) == 95  # duplicate dropped
    # The printed table matches the file.
    for part, counts in split.summary().items():
        row = next(line.split() for line in result.output.splitlines() if line.split()[:1] == [part])
        assert row[1:5] == [str(counts.get(c, 0)) for c in ["Benign", "Early", "Pre", "Pro"]]  # then its groups
    # Same options, same bytes.
    again = tmp_path / "again.json"
    assert invoke(runner, "data", "split", "--out", again, "--folds", "3", "--seed", "7").exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_split_group_policy_keeps_the_duplicate_pair_together(runner, tmp_path):
    out = tmp_path / "split.json"
    result = invoke(runner, "data", "split", "--out", out, "--folds", "4", "--duplicates", "group")
    assert result.exit_code == 0, result.output
    split = load_split(out)
    roles = {Path(e.path).name: r for e, r in zip(split.entries, split.roles)}
    assert roles["WBC-Malignant-Pro-011.jpg"] == roles["WBC-Malignant-Pro-012.jpg"]


def test_split_single_fold(runner, tmp_path):
    out = tmp_path / "split.json"
    result = invoke(runner, "data", "split", "--out", out, "--folds", "1")
    assert result.exit_code == 0, result.output
    assert set(load_split(out).summary()) == {"test", "train-only", "fold-0"}
    assert any(line.split()[:1] == ["train-only"] for line in result.output.splitlines())


def test_split_with_too_many_folds_fails_cleanly(runner, tmp_path):
    out = tmp_path / "split.json"
    result = invoke(runner, "data", "split", "--out", out, "--folds", "30")
    assert_user_error(result, "class 'Benign'", "needs at least 31", "--folds 30")
    assert list(tmp_path.iterdir()) == []


# --- the bad-input corpus ----------------------------------------------------------------------------------------

@pytest.fixture
def good_tree(tmp_path, make_tree) -> Path:
    return make_tree(tmp_path / "data", {"blast": 6, "normal": 6}, size=(24, 20))


def test_missing_path(runner, tmp_path):
    for command in ("inspect", "split"):
        assert_user_error(invoke(runner, "data", command, tmp_path / "nope"), "data path not found", "nope")


def test_empty_folder(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("inspect", "split"):
        assert_user_error(invoke(runner, "data", command, tmp_path / "empty"), "data folder is empty", "empty")


def test_class_folder_without_images(runner, good_tree):
    (good_tree / "monocyte").mkdir()
    (good_tree / "monocyte" / "README.txt").write_text("todo")
    for command in ("inspect", "split"):
        assert_user_error(invoke(runner, "data", command, good_tree), str(good_tree / "monocyte"), "no images")


def test_one_class_only(runner, tmp_path, make_tree):
    root = make_tree(tmp_path / "one", {"blast": 8})
    out = tmp_path / "split.json"
    assert_user_error(invoke(runner, "data", "split", root, "--out", out), "only one class found (blast)")
    assert not out.exists()
    report = json.loads(invoke(runner, "data", "inspect", root, "--format", "json").output)  # inspecting it is fine
    assert report["classes"] == {"blast": 8}


BAD = [  # kind, file name, words the error must contain
    ("zero-byte", "empty.jpg", "empty file"),
    ("truncated-jpeg", "cut.jpg", "truncated"),
    ("text-as-jpg", "notes.jpg", "not an image"),
    ("bomb", "bomb.png", "too large"),
    ("huge-bomb", "huge.png", "too large"),
]


@pytest.mark.parametrize(("kind", "name", "words"), BAD)
def test_bad_image_fails_split_and_writes_nothing(runner, tmp_path, good_tree, write_bad, kind, name, words):
    bad = write_bad(good_tree / "normal" / name, kind)
    out = tmp_path / "out" / "split.json"
    result = invoke(runner, "data", "split", good_tree, "--out", out, "--folds", "2")
    assert_user_error(result, str(bad), words, "--on-bad-image skip")
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no temp file either


@pytest.mark.parametrize(("kind", "name", "words"), BAD)
def test_bad_image_fails_inspect_when_asked(runner, good_tree, write_bad, kind, name, words):
    bad = write_bad(good_tree / "normal" / name, kind)
    assert_user_error(invoke(runner, "data", "inspect", good_tree, "--on-bad-image", "fail"), str(bad), words)


def test_inspect_skips_and_lists_every_bad_image(runner, good_tree, write_bad):
    for kind, name, _ in BAD:
        write_bad(good_tree / "normal" / name, kind)
    result = invoke(runner, "data", "inspect", good_tree, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    reasons = {u["path"]: u["reason"] for u in report["unreadable"]}
    assert set(reasons) == {f"normal/{name}" for _, name, _ in BAD}
    for _, name, words in BAD:
        assert words in reasons[f"normal/{name}"]
    assert report["classes"] == {"blast": 6, "normal": 6}
    text = invoke(runner, "data", "inspect", good_tree).output
    assert f"Unreadable files: {len(BAD)}" in text
    assert all(f"normal/{name}: " in text for _, name, _ in BAD)


def test_split_skip_lists_skipped_files_and_writes(runner, tmp_path, good_tree, write_bad):
    bad = [write_bad(good_tree / "normal" / "cut.jpg", "truncated-jpeg"),
           write_bad(good_tree / "blast" / "empty.png", "zero-byte")]
    out = tmp_path / "split.json"
    result = invoke(runner, "data", "split", good_tree, "--out", out, "--folds", "2", "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    for path in bad:
        assert f"skipped {path.resolve()}: " in result.output
    split = load_split(out)
    assert len(split.entries) == 12
    assert not {str(p.resolve()) for p in bad} & {e.path for e in split.entries}


def test_valid_unusual_modes_are_read(runner, good_tree, make_image):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((20, 24), 300 * 200, np.uint16)).save(good_tree / "normal" / "gray16.tif")
    make_image(good_tree / "normal" / "gray.png", mode="L", seed=101)
    make_image(good_tree / "normal" / "rgba.png", mode="RGBA", seed=102)
    make_image(good_tree / "normal" / "palette.png", mode="P", seed=103)
    result = invoke(runner, "data", "inspect", good_tree, "--format", "json", "--on-bad-image", "fail")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == {"blast": 6, "normal": 10} and report["unreadable"] == []


def test_unknown_layout(runner, good_tree):
    for command in ("inspect", "split"):
        assert_user_error(invoke(runner, "data", command, good_tree, "--layout", "coco"),
                          "'coco' is not one of", "folder", "allidb", "cnmc", "csv")


def test_unknown_policy_values(runner, good_tree):
    assert_user_error(invoke(runner, "data", "inspect", good_tree, "--on-bad-image", "ignore"),
                      "--on-bad-image", "'ignore' is not one of", "skip", "fail")
    assert_user_error(invoke(runner, "data", "split", good_tree, "--duplicates", "keep"),
                      "--duplicates", "'keep' is not one of", "drop", "group")


def test_allidb_names_that_do_not_parse(runner, tmp_path, make_image):
    root = tmp_path / "ALL_IDB2" / "img"
    for i, name in enumerate(["Im001_1.tif", "Im002_0.tif", "Im003_1.tif", "Im004_0.tif"]):
        make_image(root / name, seed=i, size=(20, 20))
    assert json.loads(invoke(runner, "data", "inspect", root, "--format", "json").output)["classes"] == {"blast": 2, "normal": 2}
    make_image(root / "Im005_x.tif", seed=9, size=(20, 20))
    for command in ("inspect", "split"):
        assert_user_error(invoke(runner, "data", command, root), str(root / "Im005_x.tif"), "ImNNN_L")


def test_csv_layout_through_the_cli(runner, tmp_path, good_tree):
    rows = ["path,label,group"] + [f"{p.relative_to(good_tree)},{p.parent.name},{p.stem[-1]}"
                                   for p in sorted(good_tree.rglob("*.png"))]
    (good_tree / "labels.csv").write_text("\n".join(rows) + "\n")
    report = json.loads(invoke(runner, "data", "inspect", good_tree / "labels.csv", "--format", "json").output)
    assert report["layout"] == "csv" and report["classes"] == {"blast": 6, "normal": 6}
    assert report["groups"] == 6  # group ids 0..5 shared across the two classes
    (good_tree / "bad.csv").write_text("path,label\n../../etc/passwd,x\n")
    assert_user_error(invoke(runner, "data", "split", good_tree / "bad.csv"), "bad.csv:2", "outside")


def test_split_out_is_a_folder(runner, tmp_path, good_tree):
    (tmp_path / "taken").mkdir()
    assert_user_error(invoke(runner, "data", "split", good_tree, "--out", tmp_path / "taken", "--folds", "2"),
                      "is a folder")


def test_split_keeps_the_old_file_when_a_new_split_fails(runner, tmp_path, good_tree, write_bad):
    out = tmp_path / "split.json"
    assert invoke(runner, "data", "split", good_tree, "--out", out, "--folds", "2").exit_code == 0
    before = out.read_bytes()
    write_bad(good_tree / "blast" / "cut.jpg", "truncated-jpeg")
    assert invoke(runner, "data", "split", good_tree, "--out", out, "--folds", "2", "--seed", "1").exit_code == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "split.json"]


# --- the real data -----------------------------------------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.slow
def test_inspect_real_aria_all(runner, shared_data):
    result = invoke(runner, "data", "inspect", shared_data / "aria-all" / "original", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == {"Benign": 428, "Early": 837, "Pre": 819, "Pro": 695}
    assert len(report["duplicate_sets"]) == 40
    assert all(len(s) == 2 and all(p.startswith("Pro/") for p in s) for s in report["duplicate_sets"])
    assert ["Pro/WBC-Malignant-Pro-142.jpg", "Pro/WBC-Malignant-Pro-143.jpg"] in report["duplicate_sets"]
    assert report["unreadable"] == []
    assert report["groups"] == 2779 - 40


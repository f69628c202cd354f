"""Manifest: content hashes, duplicate handling, groups, digest, bad-image policy."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mtl_suite.data.manifest import build_manifest
from mtl_suite.errors import BadImageError, UserError


def with_duplicate(root: Path, src: str = "blast/blast_000.png", dst: str = "blast/zz_copy.png") -> Path:
    shutil.copyfile(root / src, root / dst)
    return root / dst


def test_entries_carry_label_hash_and_size(class_tree):
    manifest = build_manifest(class_tree)
    assert manifest.layout == "folder"
    assert manifest.class_counts == {"blast": 6, "normal": 6}
    assert manifest.classes == ["blast", "normal"]
    entry = next(e for e in manifest.entries if e.path.endswith("normal_002.png"))
    assert entry.label == "normal"
    assert entry.sha256 == hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
    assert (entry.width, entry.height) == (40, 30)
    assert len({e.group for e in manifest.entries}) == 12  # no patient ids: every distinct image is its own group
    assert manifest.duplicate_sets == () and manifest.skipped == ()


def test_duplicates_group_policy_keeps_copies_in_one_group(class_tree):
    copy = with_duplicate(class_tree)
    manifest = build_manifest(class_tree, duplicates="group")
    original = str((class_tree / "blast" / "blast_000.png").resolve())
    assert manifest.duplicate_sets == ((original, str(copy.resolve())),)
    assert manifest.dropped_duplicates == ()
    by_path = {e.path: e for e in manifest.entries}
    assert by_path[original].group == by_path[str(copy.resolve())].group
    assert sum(1 for e in manifest.entries if e.group == by_path[original].group) == 2
    assert manifest.class_counts["blast"] == 7


def test_duplicates_drop_policy_keeps_one_copy(class_tree):
    copy = with_duplicate(class_tree)
    manifest = build_manifest(class_tree, duplicates="drop")
    paths = {e.path for e in manifest.entries}
    assert str((class_tree / "blast" / "blast_000.png").resolve()) in paths
    assert str(copy.resolve()) not in paths
    assert manifest.dropped_duplicates == (str(copy.resolve()),)
    assert len(manifest.duplicate_sets) == 1  # still reported
    assert manifest.class_counts["blast"] == 6


def test_three_identical_files_form_one_set(class_tree):
    with_duplicate(class_tree, dst="blast/copy1.png")
    with_duplicate(class_tree, dst="blast/copy2.png")
    manifest = build_manifest(class_tree, duplicates="group")
    assert [len(s) for s in manifest.duplicate_sets] == [3]
    assert len({e.group for e in manifest.entries if e.path.endswith(("copy1.png", "copy2.png", "blast_000.png"))}) == 1


def test_identical_files_with_different_labels_are_an_error(class_tree):
    shutil.copyfile(class_tree / "blast" / "blast_000.png", class_tree / "normal" / "same.png")
    with pytest.raises(UserError) as info:
        build_manifest(class_tree)
    assert "different labels" in str(info.value) and "same.png" in str(info.value)


def test_duplicates_across_patients_join_their_groups(tmp_path, make_image):
    # P2's image is a copy of one of P1's: a patient-wise split must not put P1 and P2 on different sides.
    root = tmp_path / "ds"
    for i, name in enumerate(["p1a", "p1b", "p2a", "p3a"]):
        make_image(root / f"{name}.png", seed=i)
    shutil.copyfile(root / "p1a.png", root / "p2b.png")
    (root / "labels.csv").write_text(
        "path,label,group\np1a.png,x,P1\np1b.png,x,P1\np2a.png,x,P2\np2b.png,x,P2\np3a.png,x,P3\n")
    for policy in ("group", "drop"):
        manifest = build_manifest(root / "labels.csv", duplicates=policy)
        groups = {Path(e.path).stem: e.group for e in manifest.entries}
        assert groups["p1a"] == groups["p1b"] == groups["p2a"], policy
        assert groups["p3a"] == "P3"


def test_patient_groups_from_csv_are_kept(tmp_path, make_image):
    root = tmp_path / "ds"
    for i in range(4):
        make_image(root / f"{i}.png", seed=i)
    (root / "labels.csv").write_text("path,label,group\n0.png,a,P1\n1.png,a,P1\n2.png,b,P2\n3.png,b,\n")
    manifest = build_manifest(root / "labels.csv")
    groups = {Path(e.path).name: e.group for e in manifest.entries}
    assert groups["0.png"] == groups["1.png"] == "P1"
    assert groups["2.png"] == "P2"
    assert groups["3.png"] not in ("P1", "P2")
    assert manifest.relative(str((root / "0.png").resolve())) == "0.png"  # relative to the CSV's folder
    assert manifest.to_csv().splitlines()[0] == "path,label,group,sha256,width,height,mask"


def test_digest_is_stable_under_moves_and_renames(tmp_path, class_tree):
    digest = build_manifest(class_tree).digest
    moved = shutil.copytree(class_tree, tmp_path / "elsewhere" / "copy")
    (moved / "normal" / "normal_001.png").rename(moved / "normal" / "renamed.png")
    (moved / "blast" / "sub").mkdir()
    (moved / "blast" / "blast_003.png").rename(moved / "blast" / "sub" / "blast_003.png")
    assert build_manifest(moved).digest == digest
    assert len(digest) == 64


def test_digest_changes_with_content_and_labels(tmp_path, class_tree, make_image):
    digest = build_manifest(class_tree).digest
    changed = shutil.copytree(class_tree, tmp_path / "changed")
    make_image(changed / "normal" / "normal_001.png", seed=1234)  # same name, other pixels
    assert build_manifest(changed).digest != digest
    relabelled = shutil.copytree(class_tree, tmp_path / "relabelled")
    (relabelled / "normal" / "normal_001.png").rename(relabelled / "blast" / "normal_001.png")
    assert build_manifest(relabelled).digest != digest


def test_bad_image_fail_names_the_file(class_tree, write_bad):
    bad = write_bad(class_tree / "normal" / "cut.jpg", "truncated-jpeg")
    with pytest.raises(BadImageError) as info:
        build_manifest(class_tree, on_bad_image="fail")
    assert str(bad.resolve()) in str(info.value) and "--on-bad-image skip" in str(info.value)


def test_bad_image_skip_lists_every_skipped_file(class_tree, write_bad):
    bad = {write_bad(class_tree / "normal" / "cut.jpg", "truncated-jpeg").resolve(),
           write_bad(class_tree / "blast" / "empty.png", "zero-byte").resolve(),
           write_bad(class_tree / "blast" / "notes.jpg", "text-as-jpg").resolve()}
    manifest = build_manifest(class_tree, on_bad_image="skip")
    assert {Path(p) for p, _ in manifest.skipped} == bad
    assert all(reason for _, reason in manifest.skipped)
    assert manifest.class_counts == {"blast": 6, "normal": 6}
    assert not {Path(e.path) for e in manifest.entries} & bad


def test_all_images_bad_is_a_user_error(tmp_path, write_bad):
    write_bad(tmp_path / "d" / "a" / "x.jpg", "zero-byte")
    write_bad(tmp_path / "d" / "b" / "y.jpg", "text-as-jpg")
    with pytest.raises(UserError, match="none of the 2 images could be read"):
        build_manifest(tmp_path / "d", on_bad_image="skip")


def test_small_max_pixels_rejects_large_images(class_tree):
    with pytest.raises(BadImageError, match="too large"):
        build_manifest(class_tree, max_pixels=100)


@pytest.mark.parametrize(("option", "value"), [("duplicates", "keep"), ("on_bad_image", "ignore")])
def test_unknown_policies(class_tree, option, value):
    with pytest.raises(UserError, match=f"Received: '{value}'"):
        build_manifest(class_tree, **{option: value})


def test_class_map_merges_classes(tmp_path, make_tree):
    root = make_tree(tmp_path / "d", {"Benign": 2, "Early": 2, "Pre": 2})
    manifest = build_manifest(root, class_map={"Benign": "normal", "Early": "leukemia", "Pre": "leukemia"})
    assert manifest.class_counts == {"leukemia": 4, "normal": 2}
    with pytest.raises(UserError, match="no entry for class"):
        build_manifest(root, class_map={"Benign": "normal"})


def test_masks_are_attached_by_relative_name(tmp_path, make_tree, make_image):
    root = make_tree(tmp_path / "original", {"a": 2, "b": 2})
    make_image(tmp_path / "segmented" / "a" / "a_000.png", seed=77)
    manifest = build_manifest(root, masks=tmp_path / "segmented")
    masks = {Path(e.path).name: e.mask for e in manifest.entries}
    assert masks["a_000.png"] == str(tmp_path / "segmented" / "a" / "a_000.png")
    assert masks["a_001.png"] is None
    with pytest.raises(UserError, match="mask folder not found"):
        build_manifest(root, masks=tmp_path / "nope")


def test_a_second_manifest_of_unchanged_files_decodes_nothing_again(tmp_path, monkeypatch):
    """Stages build their data's manifest more than once (lineage check, crops, task): unchanged files are decoded
    and hashed once per process; a file that changes is read again."""
    import cv2
    import numpy as np

    from mtl_suite.data import manifest as manifest_module

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for k in range(2):
            cv2.imwrite(str(tmp_path / label / f"{k}.png"), np.full((40, 40, 3), 60 * k + (label == "b") * 9, np.uint8))
    decoded = []
    real = manifest_module.read_rgb
    monkeypatch.setattr(manifest_module, "read_rgb", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    first = manifest_module.build_manifest(tmp_path, "folder")
    assert len(decoded) == 4
    second = manifest_module.build_manifest(tmp_path, "folder")
    assert len(decoded) == 4 and second.digest == first.digest
    cv2.imwrite(str(tmp_path / "a" / "0.png"), np.full((48, 40, 3), 200, np.uint8))
    third = manifest_module.build_manifest(tmp_path, "folder")
    assert len(decoded) == 5 and third.digest != first.digest

"""Atomic writes: a result appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from mtl_suite.errors import UserError
from mtl_suite.io_utils import atomic_path, sha256_file, sha256_text, write_json_atomic, write_text_atomic


def test_write_creates_parents_and_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    target = write_text_atomic(tmp_path / "a" / "b" / "out.txt", "hello\n")
    assert target.read_text() == "hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old  # not mkstemp's owner-only 0600
    assert os.listdir(target.parent) == ["out.txt"]


def test_failure_inside_the_block_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_folder_as_target_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        write_text_atomic(tmp_path, "x")


def test_unwritable_place_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        write_text_atomic(tmp_path / "file" / "below.txt", "x")  # a file where a folder should be


def test_json_is_stable_and_hashes_match(tmp_path):
    a = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    b = write_json_atomic(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()  # sorted keys: same content, same digest
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest() == sha256_file(b)
    assert sha256_text("abc") == hashlib.sha256(b"abc").hexdigest()


def test_the_data_then_the_rename_are_flushed_to_disk(tmp_path, monkeypatch):
    """fsync of the temporary file before the rename (else a power cut can leave the new name on empty or torn
    data), then of the folder after it (else the rename itself can be lost); the order is what matters."""
    target = write_text_atomic(tmp_path / "out.txt", "old")
    synced: list[tuple[str, str]] = []  # (what was flushed, what the target held then)
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_text()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        temp_name = str(tmp)
    assert synced == [(temp_name, "old"), (str(tmp_path), "new")]
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_a_failed_fsync_fails_the_write_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = write_text_atomic(tmp_path / "out.txt", "old")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]

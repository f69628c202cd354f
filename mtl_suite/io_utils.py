"""Small file helpers. Every output is written under a temporary name, flushed to disk (fsync) and renamed, and the
rename itself is flushed (fsync of the folder), so a crash or a power cut leaves either the old file or the whole
new one, never half of one: without the first fsync a file system may commit the rename before the data (ext4 with
delalloc, XFS), and a power cut then leaves a renamed but empty or torn file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mtl_suite.errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"cannot write {target}: it is a folder. Expected a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file owner-only (0600); give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        fsync_path(tmp_path)  # the data is on disk before the name points at it
        os.replace(tmp_path, target)
        fsync_path(target.parent)  # and the new name is on disk before we say it is written
    finally:
        tmp_path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk. Folders cannot be opened on Windows and some file
    systems refuse to fsync them (EINVAL): there the rename is as durable as the platform makes it."""
    is_dir = path.is_dir()
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _read_umask() -> int:
    """Read once at import: os.umask can only be read by setting it, which is not safe while threads write files."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text_atomic(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | Path, data: Any) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""Is the Optuna storage usable? Checked before a tuning command does any work (resolving and training the stage it
starts from can take minutes), so a wrong --storage ends as one line naming it. Nothing is created here: a journal
file or SQLite database that does not exist yet is made by the engine when the study opens."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from mtl_suite.errors import UserError
from mtl_suite.tracking.reachability import check_database, mask_password

HOW_TO_POINT = "--storage or $MTL_SUITE_OPTUNA_STORAGE"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")  # with an optional +driver


def check_storage(url: str) -> None:
    """Raise a UserError naming `url` unless a study can be opened there now."""
    what = f"Optuna storage {mask_password(url)} ({HOW_TO_POINT})"
    if "://" not in url:  # a journal file
        _check_writable_file(Path(url.removeprefix("journal:")), what)
        return
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise UserError(f"{what}: unsupported scheme {scheme + '://'!r}. Expected a journal file path (e.g. "
                        f"optuna-studies.log), sqlite:///studies.db or postgresql://user:pass@host/db")
    if scheme == "sqlite":
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        if path and path != ":memory:":
            _check_writable_file(Path(path), what, create_folder=False)
        return
    check_database(url, what)


def _check_writable_file(path: Path, what: str, create_folder: bool = True) -> None:
    if path.is_dir():
        raise UserError(f"{what}: {path} is a folder. Expected a file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"{what}: {path} is not readable and writable")
        return
    folder = path.resolve().parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot create {path} (its folder {existing or folder} is not a writable folder)")
    if not create_folder and existing != folder:
        raise UserError(f"{what}: the folder {folder} does not exist")

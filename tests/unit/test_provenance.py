"""What a run and a report record as their code (tracking/runs.py:git_commit, analysis/machine.py:
code_description): a commit a reader can check out, or plainly that there is none, never "git unknown". Real
directories and a real git: a temp dir that is no checkout, a temp repository, a `git archive` of it."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from mtl_suite import __version__
from mtl_suite.analysis.machine import code_description
from mtl_suite.tracking.runs import ARCHIVE_COMMIT, PACKAGE_DIR, UNCOMMITTED, git_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _package(root: Path) -> Path:
    """A package folder as the real one is laid out: __init__.py and the unfilled archive_commit.txt."""
    package = root / "mtl_suite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / ARCHIVE_COMMIT).write_text((PACKAGE_DIR / ARCHIVE_COMMIT).read_text())
    return package


def test_a_folder_that_is_no_checkout_names_the_version(tmp_path):
    package = _package(tmp_path)
    assert git_commit(package) == f"not a git checkout: mtl-suite {__version__}"
    assert code_description(git_commit(package)) == f"not a git checkout: mtl-suite {__version__}"


@needs_git
def test_a_checkout_gives_its_commit_and_says_when_files_differ(tmp_path):
    package = _package(tmp_path)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(package) == head
    assert code_description(head) == f"git {head[:12]}"
    (package / "__init__.py").write_text("x = 1\n")
    assert git_commit(package) == head + UNCOMMITTED
    assert code_description(head + UNCOMMITTED) == f"git {head[:12]} + uncommitted changes"


@needs_git
def test_a_package_inside_another_checkout_is_not_that_checkout(tmp_path):
    """site-packages of a .venv inside a repository: git answers for the repository, whose commit is not this code."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("x")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    package = _package(tmp_path / ".venv" / "site-packages")
    assert git_commit(package) == f"not a git checkout: mtl-suite {__version__}"


@needs_git
def test_a_git_archive_names_its_commit(tmp_path):
    source = tmp_path / "source"
    _package(source)
    (source / ".gitattributes").write_text(f"mtl_suite/{ARCHIVE_COMMIT} export-subst\n")
    _git(source, "init", "-q")
    _git(source, "add", ".")
    _git(source, "commit", "-q", "-m", "one")
    head = _git(source, "rev-parse", "HEAD")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=source, check=True,
                             capture_output=True).stdout
    copy = tmp_path / "copy"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(copy, filter="data")
    assert git_commit(copy / "mtl_suite") == f"{head} (from a git archive)"
    assert code_description(git_commit(copy / "mtl_suite")) == f"git {head[:12]} (from a git archive)"


def test_the_shipped_file_is_set_up_for_git_archive():
    """The checkout's own copy is unfilled (an archive's is filled) and .gitattributes asks git archive to fill it."""
    assert re.fullmatch(r"\$Format:%H\$|[0-9a-f]{40}", (PACKAGE_DIR / ARCHIVE_COMMIT).read_text().strip())
    attributes = PACKAGE_DIR.parent / ".gitattributes"
    if attributes.exists():  # a checkout (an installed wheel has none)
        assert f"mtl_suite/{ARCHIVE_COMMIT} export-subst" in attributes.read_text()


def test_older_runs_without_a_usable_commit_say_so():
    assert code_description("unknown") == "not recorded by the run"
    assert code_description("") == "not recorded by the run"

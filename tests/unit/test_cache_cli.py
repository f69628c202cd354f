"""`mtl-suite cache info|clear` on a tmp cache root (the command group, mounted on a bare Typer app)."""

from __future__ import annotations

import numpy as np
import pytest
import typer

from mtl_suite.cli import cache as cache_cli
from mtl_suite.training.features import FeatureStore


@pytest.fixture
def cli(tmp_path, monkeypatch, runner):
    monkeypatch.setenv("MTL_SUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MTL_SUITE_FEATURE_CACHE_MB", "64")
    app = typer.Typer()
    app.add_typer(cache_cli.app, name="cache")
    return lambda *args: runner.invoke(app, ["cache", *args])


def fill(root):
    store = FeatureStore(root / "features", 2**30)
    store.save("k1", np.zeros((512, 256), "float32"))  # 512 KiB
    store.save("k2", np.ones((512, 256), "float32"))
    (root / "cells" / "abc").mkdir(parents=True)
    (root / "cells" / "abc" / "cells.csv").write_text("path,label\n")
    (root / "unrelated.txt").write_text("not ours")  # a file under the root that the suite did not write


def test_info_counts_each_section_and_shows_the_limit(cli, tmp_path):
    fill(tmp_path / "cache")
    result = cli("info")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert "2 files" in lines["features"] and "1.0 MB" in lines["features"]
    assert "1 files" in lines["cells"] and "0 files" in lines["policies"]
    assert str(tmp_path / "cache") in result.output and "64.0 MB" in result.output


def test_clear_one_section_then_everything_but_never_foreign_files(cli, tmp_path):
    root = tmp_path / "cache"
    fill(root)
    result = cli("clear", "features")
    assert result.exit_code == 0, result.output
    assert "removed 2 files (1.0 MB)" in result.output
    assert not (root / "features").exists() and (root / "cells" / "abc" / "cells.csv").is_file()
    result = cli("clear")
    assert result.exit_code == 0 and "removed 1 files" in result.output
    assert not (root / "cells").exists() and (root / "unrelated.txt").read_text() == "not ours"


def test_unknown_section_is_a_user_error(cli):
    result = cli("clear", "weights")
    assert result.exit_code == 2
    assert "unknown cache section 'weights'. Expected one of: features, activations, cells, policies, images, checkpoints, all" in result.output


def test_bad_limit_in_the_environment_is_a_user_error(cli, monkeypatch):
    monkeypatch.setenv("MTL_SUITE_FEATURE_CACHE_MB", "lots")
    result = cli("info")
    assert result.exit_code == 2 and "$MTL_SUITE_FEATURE_CACHE_MB must be a number" in result.output

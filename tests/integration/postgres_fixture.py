"""The fixture of the tests that need a real PostgreSQL (tracking server back end, Optuna storage shared by
workers): `from postgres_fixture import postgres_url`. A module of its own, not a conftest.py: the tests import
helpers from tests/conftest.py by the name `conftest`, which a second conftest module would shadow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import POSTGRES_ENV, postgres_problem  # noqa: E402


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """The test PostgreSQL (.ci/run starts one and sets $MTL_SUITE_TEST_POSTGRES_URL). Without it a test fails in CI,
    where a skip would hide that the scale-out path went untested, and skips elsewhere."""
    url = os.environ.get(POSTGRES_ENV)
    problem = postgres_problem(url)
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return url

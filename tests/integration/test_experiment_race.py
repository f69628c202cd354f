"""Commands started together against one PostgreSQL tracking store, on an experiment none of them has seen: all of
them must start, and all of their runs must land in that experiment. Found by the scale-out test in CI: the second
worker died on a UniqueViolation of the experiment's kind tag; and MLflow's own answer to a concurrent creation
returns the experiment without making it the active one (runs would go to the Default experiment).

Needs PostgreSQL (`export MTL_SUITE_TEST_POSTGRES_URL=$(.ci/start-postgres.sh)`): fails without it under CI=true,
skips otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import POSTGRES_ENV, fresh_database, postgres_problem  # noqa: E402

pytestmark = pytest.mark.slow
WORKERS, ROUNDS, ROUND_S = 4, 10, 1.0

# Each worker waits for a common start time (after its imports), then, once a round, does what every command does
# first on a new experiment: a window of milliseconds, which several rounds make likely to be hit.
WORKER = textwrap.dedent("""
    import sys, time
    import mlflow
    from mtl_suite.tracking.setup import use_tracking
    uri, start_at, rounds, round_s = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    for index in range(rounds):
        time.sleep(max(0.0, start_at + index * round_s - time.time()))
        _, experiment_id = use_tracking(uri, f"race-{index}")
        with mlflow.start_run() as run:
            print(index, run.info.experiment_id, experiment_id, flush=True)
""")


@pytest.fixture(scope="module")
def store_url() -> str:
    problem = postgres_problem(os.environ.get(POSTGRES_ENV))
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    with fresh_database(os.environ[POSTGRES_ENV], prefix="mtl_race") as url:
        mlflow.MlflowClient(url).search_experiments()  # the schema, made once (as a server would), before the race
        yield url


def test_commands_started_together_share_a_new_experiment(store_url: str) -> None:
    start_at = time.time() + 12  # past every worker's imports on a loaded 2-core machine
    arguments = [store_url, str(start_at), str(ROUNDS), str(ROUND_S)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *arguments], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(WORKERS)]
    results = [(worker.wait(timeout=180), *worker.communicate()) for worker in workers]

    failures = [stderr[-2000:] for code, _, stderr in results if code != 0]
    assert not failures, failures[0]
    client = mlflow.MlflowClient(store_url)
    experiments = [client.get_experiment_by_name(f"race-{index}") for index in range(ROUNDS)]
    assert all(experiment.tags.get("mlflow.experimentKind") == "custom_model_development" for experiment in experiments)
    for _, stdout, _ in results:
        lines = [line.split() for line in stdout.splitlines()]
        assert [(experiments[int(index)].experiment_id,) * 2 for index, *_ in lines] == [
            tuple(ids) for _, *ids in lines]
        assert len(lines) == ROUNDS

"""MLflow I/O of `mtl-suite assess`: the assessment run (found again by its key, so rerunning the command resumes
it), the finished runs of one split that a resumed assessment reuses, what a split's final run logged (its test
predictions and colour alone's, its dataset digest, its look at the test part) and what the assessment logs on its
own run. What to run and how the figures are computed: workflows/assess.py and analysis/assessment.py."""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag

from mtl_suite.catalog import LookTag, RunKind
from mtl_suite.tracking.comparison_runs import read_test_train_ratio

KEY = "assessment_key"
RUN = "assessment_run"  # on every run of a split: the assessment it belongs to
SPLIT = "assessment_split"  # the split's data seed
ROLE = "assessment_role"  # which of the recipe's models: member-<i> (its stage chain) or ensemble
UNIT = "assessment_unit"  # the claim of the unit that made the run (`<study>#<trial>`, tuning/units.py)


def find_or_create(client, experiment_id: str, key: str, tags: dict[str, str], params: dict[str, str],
                   launcher_run: str | None, say: Callable[[str], None]) -> str:
    """The assessment run with this key, reopened; else a new one (the run `mlflow run -e assess` made, if any)."""
    found = client.search_runs([experiment_id], f"tags.run_kind = '{RunKind.ASSESSMENT}' AND tags.{KEY} = '{key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        if launcher_run and launcher_run != run_id:  # `mlflow run`'s run points to the assessment it resumed
            client.set_tag(launcher_run, RUN, run_id)
            client.set_terminated(launcher_run, "FINISHED")
        client.update_run(run_id, status="RUNNING")
        say(f"resuming assessment run {run_id} (same recipe file, settings, data and seeds: key {key})")
        return run_id
    tags = {"run_kind": str(RunKind.ASSESSMENT), KEY: key, **tags}
    if launcher_run:
        client.log_batch(launcher_run, tags=[RunTag(k, v) for k, v in tags.items()])
        run_id = launcher_run
    else:
        run_id = client.create_run(experiment_id, tags=tags, run_name=tags.get("mlflow.runName")).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    return run_id


def end(client, run_id: str, status: int) -> None:
    """`status`: a RunStatus (FINISHED, FAILED, KILLED)."""
    client.set_terminated(run_id, RunStatus.to_string(status))


def finished_split_runs(client, experiment_id: str, parent: str, seed: int) -> dict[tuple[str, str], str]:
    """(role, stage) -> the newest FINISHED run of split `seed` of this assessment."""
    query = (f"tags.{RUN} = '{parent}' AND tags.{SPLIT} = '{seed}' AND tags.run_kind = '{RunKind.STAGE}' "
             f"AND attributes.status = 'FINISHED'")
    found: dict[tuple[str, str], str] = {}
    for run in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"]):
        found.setdefault((run.data.tags.get(ROLE, ""), run.data.tags.get("stage", "")), run.info.run_id)
    return found


def parent_stage_run(client, run_id: str) -> str:
    return client.get_run(run_id).data.tags.get("parent_stage_run", "")


def ensemble_members(client, run_id: str) -> list[str]:
    return [m for m in client.get_run(run_id).data.tags.get("ensemble_members", "").split(",") if m]


def read_csv_artifact(client, run_id: str, path: str) -> pd.DataFrame | None:
    """A CSV a run logged (test/predictions.csv, shortcut/test_predictions.csv), None where it has none."""
    folder = str(Path(path).parent)
    if path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(client.download_artifacts(run_id, path, tmp))


def split_facts(client, run_id: str) -> tuple[str, int | None]:
    """A final run's dataset digest and how many configurations had scored its test part before it (None: the run
    recorded no look)."""
    tags = client.get_run(run_id).data.tags
    earlier = tags.get(LookTag.EARLIER)
    return tags.get("dataset_digest", ""), int(earlier) if earlier not in (None, "") else None


def test_train_ratio(client, run_ids: Sequence[str]) -> float | None:
    """Mean n_test / n_train over the runs' refits (None: none of them has a 'final' nested run)."""
    ratios = [r for r in (read_test_train_ratio(client, run_id) for run_id in run_ids) if r is not None]
    return sum(ratios) / len(ratios) if ratios else None


def log_results(client, run_id: str, metrics: dict[str, float], tags: dict[str, str], files: Sequence[Path]) -> None:
    """The headline figures as metrics (finite ones), the verdict as tags, the report's files as artifacts."""
    now = int(dt.datetime.now().timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)],
                     tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
    for path in files:
        client.log_artifact(run_id, str(path), "assessment")

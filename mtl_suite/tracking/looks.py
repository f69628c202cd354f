"""MLflow I/O of the ledger of looks (data/looks.py): record a run's look, read the looks at a set, and keep the
store's seals. Every read searches all of the store's experiments, deleted ones and deleted runs included (a look is
not undone by deleting its run), with a tag filter, so a tracking server answers it as a local store does."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from mtl_suite.catalog import SEAL_EXPERIMENT, LookTag, RunKind, SealTag
from mtl_suite.data.looks import LoggedLook, Look, Seal, configurations, model_key
from mtl_suite.errors import UserError
from mtl_suite.tracking import resume

SEAL_DIGESTS = "seal/digests.txt"  # the sealed images' content digests, sorted, one a line
SEAL_MANIFEST = "seal/manifest.csv"  # where they were when sealed (path, label, sha256), for a reader
PAGE = 1000


def record_look(look: Look) -> int:
    """Tag the active run with its look; returns how many other configurations had scored the set before it."""
    run_id = mlflow.active_run().info.run_id
    earlier = earlier_configurations(look, run_id)
    mlflow.set_tags(look.tags(earlier))
    return earlier


def earlier_configurations(look: Look, run_id: str | None = None) -> int:
    """The configurations other than `look.model` that have scored `look.digest` (the run `run_id` left out)."""
    return len(configurations([x for x in looks_at(look.digest) if x.run_id != run_id], besides=look.model))


def logged_earlier(run_id: str) -> int | None:
    """The count a run recorded with its look (None: it scored no test part)."""
    value = mlflow.get_run(run_id).data.tags.get(LookTag.EARLIER, "")
    return int(value) if value.isdigit() else None


def run_model_key(run_id: str) -> str:
    """The configuration the model of stage run `run_id` is: the run, or the first attempt of the runs it resumed
    (an interrupted attempt that had scored its test part and the attempt that finished it are one model). A run
    this store does not hold (a model folder from elsewhere) is its own."""
    try:
        origin = mlflow.get_run(run_id).data.tags.get(resume.ORIGIN)
    except MlflowException:
        origin = None
    return model_key(run_id=origin or run_id)


def looks_at(digest: str) -> list[LoggedLook]:
    """Every look at the set `digest`, oldest first."""
    return _looks(f"tags.{LookTag.PART} = '{digest}'")


def all_looks() -> list[LoggedLook]:
    """Every look in the store, oldest first."""
    return _looks(f"tags.{LookTag.PART} LIKE '%'")


def sealed_looks(seal: Seal) -> list[LoggedLook]:
    """The looks at a sealed set: evaluations that scored any of its images since it was sealed (tagged with its
    name), and any run that scored exactly its images, before the seal too. Oldest first."""
    found = {x.run_id: x for x in [*_looks(f"tags.{LookTag.SEALED} = '{seal.name}'"), *looks_at(seal.digest)]}
    return sorted(found.values(), key=lambda x: x.start_time)


def _looks(where: str) -> list[LoggedLook]:
    experiments = _experiments()
    return [_logged(run, experiments) for run in _search(list(experiments), where)]


def _experiments() -> dict[str, tuple[str, bool]]:
    """Every experiment of the store: id -> (name, deleted)."""
    client = mlflow.MlflowClient()
    out, token = {}, None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=PAGE, page_token=token)
        out.update({e.experiment_id: (e.name, e.lifecycle_stage == "deleted") for e in page})
        token = page.token
        if not token:
            return out


def _search(experiment_ids: list[str], where: str) -> list[Run]:
    """Runs of any state matching `where` in these experiments, every page, oldest first."""
    client = mlflow.MlflowClient()
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, where, ViewType.ALL, PAGE, ["attributes.start_time ASC"], token)
        runs += page
        token = page.token
        if not token:
            break
    return runs


def _logged(run: Run, experiments: dict[str, tuple[str, bool]]) -> LoggedLook:
    tags = run.data.tags
    name, experiment_deleted = experiments.get(run.info.experiment_id, (run.info.experiment_id, False))
    images = tags.get(LookTag.IMAGES, "")
    return LoggedLook(
        run_id=run.info.run_id, run_name=run.info.run_name or "", experiment=name, kind=tags.get("run_kind", ""),
        start_time=run.info.start_time or 0, digest=tags.get(LookTag.PART, ""),
        images=int(images) if images.isdigit() else 0,
        model=tags.get(LookTag.MODEL) or model_key(run_id=run.info.run_id),
        configuration=tags.get(LookTag.CONFIGURATION, ""), status=run.info.status,
        deleted=experiment_deleted or run.info.lifecycle_stage == "deleted", sealed_set=tags.get(LookTag.SEALED))


# --- seals -----------------------------------------------------------------------------------------------------------

def seals() -> list[Seal]:
    """The store's seals, oldest first: the finished seal runs of SEAL_EXPERIMENT that are not deleted (deleting a
    seal run in MLflow is how a seal is lifted)."""
    experiment = mlflow.MlflowClient().get_experiment_by_name(SEAL_EXPERIMENT)
    if experiment is None:
        return []
    runs = _search([experiment.experiment_id], f"tags.run_kind = '{RunKind.SEAL}' AND attributes.status = 'FINISHED'")
    return [_seal(run) for run in runs if run.info.lifecycle_stage != "deleted"]


def _seal(run: Run) -> Seal:
    with tempfile.TemporaryDirectory(prefix="mtl-seal-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=SEAL_DIGESTS,
                                                       dst_path=tmp)
        except (MlflowException, OSError):
            raise UserError(f"seal run {run.info.run_id} (experiment {SEAL_EXPERIMENT}) has no {SEAL_DIGESTS}: "
                            "delete the run in MLflow and seal the set again") from None
        digests = frozenset(line for line in Path(path).read_text().split() if line)
    tags = run.data.tags
    return Seal(tags.get(SealTag.NAME, ""), tags.get(SealTag.PART, ""), digests, run.info.run_id,
                run.info.start_time or 0)


def log_seal(experiment_id: str, name: str, digest: str, digests: list[str], tags: dict[str, str],
             manifest_csv: str) -> str:
    """The seal run: its tags, the digests artifact that evaluations are checked against, and the manifest."""
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"seal-{name}") as run:
        mlflow.set_tags({"run_kind": RunKind.SEAL, SealTag.NAME: name, SealTag.PART: digest,
                         SealTag.IMAGES: str(len(digests)), **tags})
        mlflow.log_text("".join(f"{d}\n" for d in sorted(digests)), SEAL_DIGESTS)
        mlflow.log_text(manifest_csv, SEAL_MANIFEST)
        return run.info.run_id

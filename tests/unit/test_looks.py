"""The ledger of looks at test parts and the sealed sets, against a real MLflow store (SQLite in a tmp dir): runs with
the look tags are written with MLflow directly, as the final stages and `evaluate` write them, and the commands and
workflows read them back. The same reads through a tracking server, after a real stage run: tests/integration/
test_looks_server.py; a sealed set refused and scored again with real models: tests/integration/test_evaluate.py."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from mlflow.entities import ViewType
from typer.testing import CliRunner

from mtl_suite.catalog import SEAL_EXPERIMENT, LookTag, RunKind, SealTag
from mtl_suite.cli import app
from mtl_suite.data.looks import Look, model_key, part_digest
from mtl_suite.data.manifest import build_manifest
from mtl_suite.errors import UserError
from mtl_suite.tracking import looks as tracked
from mtl_suite.tracking import resume
from mtl_suite.workflows.looks import ledger, sealed_look

T0 = 1_700_000_000_000  # ms: runs get explicit, increasing start times (a fast loop can repeat a millisecond)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A store with MLflow's tables made once (its migrations take seconds); each test works on a copy."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri, previous = f"sqlite:///{tmp_path}/mlflow.db", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def look_run(experiment: str, look: Look, minute: int, kind: str = RunKind.STAGE, earlier: int = 0,
             extra: dict | None = None) -> str:
    """A finished run that made `look`, started `minute` minutes after T0."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, start_time=T0 + minute * 60_000,
                            tags={"run_kind": str(kind), **look.tags(earlier), **(extra or {})})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


PART_A, PART_B = part_digest(["a1", "a2", "a3"]), part_digest(["b1"])


def test_a_part_is_the_set_of_its_images_contents():
    assert part_digest(["a2", "a1", "a3", "a1"]) == PART_A  # order and copies do not matter
    assert part_digest(["a1", "a2"]) != PART_A and len(PART_A) == 64
    assert model_key("r1", "m-1", "models:/x/1") == "run:r1"
    assert model_key(None, "m-1", "models:/x/1") == "model:m-1" and model_key(uri="/tmp/m") == "uri:/tmp/m"


def test_the_ledger_lists_every_look_by_part_across_experiments_in_order_of_time(store):
    first = look_run("lab", Look(PART_A, 3, "run:m1", "stage3 xception multiclass, seed 42, refit"), 1)
    other = look_run("lab", Look(PART_B, 1, "run:m9", "classical tiny binary, seed 1, refit"), 2)
    second = look_run("elsewhere", Look(PART_A, 3, "run:m2", "classical xception multiclass, seed 42, refit"), 3,
                      earlier=1)
    again = look_run("evals", Look(PART_A, 3, "run:m1", "models:/clf/1"), 4, RunKind.EVALUATION)
    deleted = look_run("elsewhere", Look(PART_A, 3, "run:m3", "stage3 xception multiclass, seed 7, refit"), 5)
    mlflow.MlflowClient().delete_run(deleted)
    mlflow.MlflowClient().create_run(mlflow.MlflowClient().get_experiment_by_name("lab").experiment_id)  # no look

    result = invoke("data", "looks", "--tracking-uri", store, "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [p["digest"] for p in found["parts"]] == [PART_A, PART_B]  # by first look
    part = found["parts"][0]
    assert [x["run_id"] for x in part["looks"]] == [first, second, again, deleted]
    assert part["configurations"] == 3 and part["images"] == 3  # m1 twice is one configuration; deleted counts
    assert [x["experiment"] for x in part["looks"]] == ["lab", "elsewhere", "evals", "elsewhere"]
    assert [x["deleted"] for x in part["looks"]] == [False, False, False, True]
    assert part["looks"][2]["kind"] == "evaluation" and part["looks"][0]["start_time"] == "2023-11-14 22:14 UTC"
    assert found["parts"][1]["looks"][0]["run_id"] == other

    text = invoke("data", "looks", "--tracking-uri", store).stdout
    assert "3 configuration(s) in 4 look(s)" in text
    assert f"run {again} (evals): models:/clf/1 (same configuration as above)" in text
    assert f"run {deleted} (elsewhere): stage3 xception multiclass, seed 7, refit [deleted]" in text


def test_a_run_counts_the_other_configurations_that_scored_its_part_before_it(store):
    look_run("lab", Look(PART_A, 3, "run:m1", "one"), 1)
    look_run("lab", Look(PART_A, 3, "run:m2", "two"), 2)
    look_run("other", Look(PART_A, 3, "run:m1", "one again"), 3)
    look_run("other", Look(PART_B, 1, "run:m4", "another part"), 4)
    mlflow.set_experiment("new")
    with mlflow.start_run() as run:
        assert tracked.record_look(Look(PART_A, 3, "run:m5", "five")) == 2  # m1 and m2, wherever they were
    assert tracked.logged_earlier(run.info.run_id) == 2
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags[LookTag.PART] == PART_A and tags[LookTag.MODEL] == "run:m5" and tags[LookTag.CONFIGURATION] == "five"
    # the same configuration scoring it again is not counted against itself
    assert tracked.earlier_configurations(Look(PART_A, 3, "run:m1", "one")) == 2  # m2 and m5
    assert tracked.earlier_configurations(Look(part_digest(["new"]), 1, "run:m1", "one")) == 0


def test_a_resumed_stage_run_is_the_configuration_of_its_first_attempt(store):
    experiment_id = mlflow.MlflowClient().create_experiment("lab")
    first = mlflow.MlflowClient().create_run(experiment_id).info.run_id
    resumed = mlflow.MlflowClient().create_run(experiment_id, tags={resume.ORIGIN: first}).info.run_id
    assert tracked.run_model_key(resumed) == tracked.run_model_key(first) == f"run:{first}"
    assert tracked.run_model_key("0" * 32) == f"run:{'0' * 32}"  # a model from another store: its own run


def digests_of(folder) -> list[str]:
    return sorted({e.sha256 for e in build_manifest(folder, "auto").entries})


def test_a_folder_is_sealed_once_by_its_contents_in_the_stores_seal_experiment(store, tmp_path, make_tree):
    folder = make_tree(tmp_path / "final", {"normal": 3, "blast": 3})
    result = invoke("data", "seal", str(folder), "--name", "final-2025", "--tracking-uri", store)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"sealed 6 images of {folder} as 'final-2025'; seal run ")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(SEAL_EXPERIMENT).experiment_id])
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["run_kind"] == RunKind.SEAL and tags[SealTag.NAME] == "final-2025" and tags[SealTag.IMAGES] == "6"
    assert tags[SealTag.PART] == part_digest(digests_of(folder))
    logged = mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/{tracked.SEAL_DIGESTS}")
    assert logged.split() == digests_of(folder)

    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")  # the same images, another place
    again = invoke("data", "seal", str(moved), "--name", "final-2025", "--tracking-uri", store)
    assert again.exit_code == 0 and "is already sealed as 'final-2025' (6 images, not scored yet)" in \
        again.stdout
    assert len(client.search_runs([runs[0].info.experiment_id])) == 1


@pytest.mark.parametrize("case,message", [
    ("same images, other name", "PATH is already sealed as 'final'"),
    ("one image shared", "PATH shares 1 of its 3 images with sealed set 'final'"),
    ("name taken", "--name final: already the name of a sealed set of 4 other images"),
    ("bad name", "--name: expected 1-100 letters, digits, '.', '_' or '-'"),
    ("no folder", "PATH: no such file or folder"),
])
def test_a_seal_that_would_be_ambiguous_is_one_line(store, tmp_path, make_tree, case, message):
    folder = make_tree(tmp_path / "final", {"normal": 2, "blast": 2})
    assert invoke("data", "seal", str(folder), "--name", "final", "--tracking-uri", store).exit_code == 0
    name, other = "second", tmp_path / "other"
    if case == "same images, other name":
        other = folder
    elif case == "one image shared":
        make_tree(other, {"normal": 2}, seed=100)
        shutil.copy(next((folder / "blast").iterdir()), other / "normal" / "copy.png")
    elif case == "name taken":
        make_tree(other, {"normal": 2}, seed=100)
        name = "final"
    elif case == "bad name":
        name, other = "final 2", folder
    result = invoke("data", "seal", str(other), "--name", name, "--tracking-uri", store)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {message}") and len(result.output.strip().splitlines()) == 1


def test_a_sealed_set_is_scored_by_one_configuration_unless_again(store, tmp_path, make_tree):
    folder = make_tree(tmp_path / "final", {"normal": 2, "blast": 2})
    digests = digests_of(folder)
    part = part_digest(digests)
    look_run("lab", Look(part, 4, "run:before", "scored before the seal"), 1, RunKind.EVALUATION)
    sealing = invoke("data", "seal", str(folder), "--name", "final", "--tracking-uri", store)
    assert sealing.exit_code == 0 and "; 1 configuration had scored them before the seal; seal run" in sealing.stdout

    same = sealed_look(digests, Look(part, 4, "run:before", "the same model"), again=False)
    assert (same.configurations, same.looks, same.again, same.shared) == (1, 2, False, 4)
    with pytest.raises(UserError, match=r"DATA holds 4 of the 4 images of sealed set 'final', already scored by 1 "
                                        r"configuration \(first scored before the seal, run [0-9a-f]{32}\); scoring it "
                                        r"with another model would be another look: pass --again"):
        sealed_look(digests, Look(part, 4, "run:other", "another model"), again=False)
    further = sealed_look(digests, Look(part, 4, "run:other", "another model"), again=True)
    assert (further.configurations, further.looks, further.again) == (2, 2, True)
    assert further.text() == ("sealed set 'final': scored by 2 configurations in 2 looks, this one included "
                              "(a further configuration: --again)")
    # a subset of the sealed images is a look at the sealed set too, recorded under its name
    subset = digests[:2]
    look_run("evals", Look(part_digest(subset), 2, "run:other", "another model"), 5, RunKind.EVALUATION,
             extra=further.tags())
    partial = sealed_look(subset, Look(part_digest(subset), 2, "run:third", "a third"), again=True)
    assert (partial.configurations, partial.looks, partial.shared) == (3, 3, 2)
    assert partial.text().startswith("sealed set 'final' (2 of its 4 images): scored by 3 configurations in 3 looks")
    assert sealed_look(["not", "sealed"], Look(part_digest(["x"]), 2, "run:third", "a third"), again=False) is None

    found = ledger(store)
    assert [s.name for s in found.seals] == ["final"] and len(found.sealed["final"]) == 2
    assert [p.sealed for p in found.parts] == ["final", None]
    assert json.loads(invoke("data", "looks", "--tracking-uri", store, "-f", "json").stdout)["seals"][0][
        "configurations"] == 2


def test_images_of_two_sealed_sets_are_evaluated_one_set_at_a_time(store, tmp_path, make_tree):
    first, second = make_tree(tmp_path / "a", {"normal": 2}), make_tree(tmp_path / "b", {"normal": 2}, seed=50)
    for folder, name in ((first, "a"), (second, "b")):
        assert invoke("data", "seal", str(folder), "--name", name, "--tracking-uri", store).exit_code == 0
    both = digests_of(first) + digests_of(second)
    with pytest.raises(UserError, match="DATA holds images of 2 sealed sets \\(a, b\\)"):
        sealed_look(both, Look(part_digest(both), 4, "run:m", "m"), again=True)


def test_a_deleted_seal_run_lifts_the_seal(store, tmp_path, make_tree):
    folder = make_tree(tmp_path / "final", {"normal": 2})
    assert invoke("data", "seal", str(folder), "--name", "final", "--tracking-uri", store).exit_code == 0
    client = mlflow.MlflowClient()
    seal_run = client.search_runs([client.get_experiment_by_name(SEAL_EXPERIMENT).experiment_id],
                                  run_view_type=ViewType.ALL)[0]
    client.delete_run(seal_run.info.run_id)
    assert tracked.seals() == []

"""The bad-input corpus (tests/fixtures/bad/, see its README.md) through the real entry points, and the safe
defaults a user meets on the command line: manifests stay inside their folder unless --allow-outside-root, and
file names with spaces and non-ASCII characters work end to end.

Everything runs in-process (Typer's runner, the scoring server's ASGI app): no training, no server process."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mtl_suite.cli import app
from mtl_suite.data.splits import load_split

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "bad"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
NOT_ITEMS = {"README.md", "make_corpus.py", "expected.json"}
SUPPORT_DIR = "manifests/img"  # good images the manifests list


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one line `error: ...` containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    assert "Traceback" not in result.output
    output = result.output.strip()
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: "), output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    return output


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the corpus ----------------------------------------------------------------------------------------------------

def corpus_items() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
                  if p.is_file() and p.name not in NOT_ITEMS and not str(p.relative_to(CORPUS)).startswith(SUPPORT_DIR))


def test_every_corpus_file_has_an_expectation():
    """A file added without an expectation (or an expectation without its file) would go untested."""
    assert corpus_items() == sorted(EXPECTED)
    assert {name.split("/")[0] for name in EXPECTED} == {"images", "configs", "manifests", "spaces", "payloads",
                                                         "stores"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_item(name, runner, tmp_path, monkeypatch, make_tree, request):
    expected = EXPECTED[name]
    folder = name.split("/")[0]
    path = CORPUS / name
    if folder == "payloads":
        _check_payload(request.getfixturevalue("scoring_app"), path, expected)
        return
    for variable in ("MLFLOW_TRACKING_URI", "MTL_SUITE_OPTUNA_STORAGE"):
        monkeypatch.delenv(variable, raising=False)  # defaults would land in the working directory
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    out = tmp_path / "out" / "split.json"
    if folder == "images":
        tree = make_tree(tmp_path / "data", {"blast": 6, "normal": 6}, size=(24, 20))
        target = tree / "normal" / path.name
        shutil.copyfile(path, target)
        result = invoke(runner, "data", "split", tree, "--out", out, "--folds", "2")
        if expected["colour"] is not None:
            _check_accepted(result, out, target, expected)
            return
        shown = str(target.resolve())
    elif folder == "manifests":
        result = invoke(runner, "data", "split", path, "--out", out, "--folds", "2")
        shown = str(path)
    elif folder == "configs":
        result = invoke(runner, "stage3", "--config", path, "-q")
        shown = str(path)
    elif folder == "stores":  # a wrong or unreachable store: refused before any work, within seconds
        line = path.read_text(encoding="utf-8").strip()
        option = ["--tracking-uri", line] if path.name.startswith("tracking-") else ["--storage", line]
        command = "stage3" if path.name.startswith("tracking-") else "tune"
        started = time.monotonic()
        result = invoke(runner, command, *(["--stage", "stage3"] if command == "tune" else []), "--backbone", "tiny",
                        "--weights", "none", *option, "-q")
        assert time.monotonic() - started < 30, "a store that does not answer must not hold the command up"
        shown = line
    else:  # spaces
        result = invoke(runner, "tune", "--stage", "stage3", "--backbone", "tiny", "--space", path, "-q")
        shown = str(path)
    assert_one_line_error(result, *(f.replace("{file}", shown) for f in expected["fragments"]))
    assert files_under(tmp_path / "out") == []  # no split file, no temporary file
    assert files_under(workdir) == []  # no mlflow.db, mlruns/, optuna-studies.log


def _check_accepted(result, out: Path, image: Path, expected: dict) -> None:
    from mtl_suite.data.images import read_rgb
    from mtl_suite.data.pipeline import load_image_array

    assert result.exit_code == 0, result.output
    assert str(image.resolve()) in {e.path for e in load_split(out).entries}
    pixels = read_rgb(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    assert np.abs(pixels.astype(int) - np.asarray(expected["colour"])).max() <= expected["tolerance"]
    loaded = load_image_array([str(image)], 8).astype(int)  # the training loader reads it the same way
    assert np.abs(loaded - np.asarray(expected["colour"])).max() <= expected["tolerance"]


# --- payloads: the scoring server's own app, in-process ----------------------------------------------------------

class _StubKeras:
    """Stands in for the Keras model: the corpus is about what reaches it, not what it says."""

    def predict_on_batch(self, batch):
        assert batch.ndim == 4 and batch.shape[1:] == (16, 16, 3)
        return np.tile(np.array([[0.25, 0.75]], "float32"), (len(batch), 1))


@pytest.fixture(scope="module")
def scoring_app():
    """`mlflow.pyfunc.scoring_server.init` on our pyfunc with the logged signature, paths off (no setting: the
    default, as plain `mlflow models serve` runs it)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel, scoring_server
    from mlflow.pyfunc.model import _PythonModelPyfuncWrapper

    from mtl_suite.serving.pyfunc import PATHS_ENV, MtlImageClassifier, signature

    python_model = MtlImageClassifier()
    python_model.class_names, python_model.image_size, python_model.model = ["normal", "blast"], 16, _StubKeras()
    sig = signature()
    pyfunc = PyFuncModel(model_meta=Model(signature=sig), model_impl=_PythonModelPyfuncWrapper(python_model, None, sig))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(PATHS_ENV, raising=False)
        patch.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")  # init() sets it; undone afterwards
        yield scoring_server.init(pyfunc)


def post(asgi_app, body: bytes) -> tuple[int, bytes]:
    """One POST /invocations through the ASGI app, as uvicorn would send it."""

    async def call():
        sent, messages = False, []

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/invocations", "raw_path": b"/invocations", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 5001),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        await asgi_app(scope, receive, send)
        return messages

    messages = asyncio.run(call())
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def good_payload() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return json.dumps({"dataframe_records": [{"image": base64.b64encode(buffer.getvalue()).decode()}]}).encode()


def _check_payload(asgi_app, path: Path, expected: dict) -> None:
    status, body = post(asgi_app, path.read_bytes())
    text = body.decode("utf-8", "replace")
    assert status == 400, (status, text)
    answer = json.loads(body)
    assert "Traceback" not in text and "stack_trace" not in answer, text  # a bug would carry its stack trace
    for fragment in expected["fragments"]:
        assert fragment in answer["message"], (fragment, answer["message"])
    status, body = post(asgi_app, good_payload())  # and the app still serves
    assert status == 200, body
    assert json.loads(body)["predictions"][0]["label"] == "blast"


# --- manifests stay inside their folder unless --allow-outside-root ----------------------------------------------

@pytest.fixture
def outside_manifest(tmp_path, make_tree) -> Path:
    """data/manifest/labels.csv listing the 12 images of data/images/ (a sibling folder: outside the CSV's)."""
    images = make_tree(tmp_path / "data" / "images", {"blast": 6, "normal": 6}, size=(24, 20))
    manifest = tmp_path / "data" / "manifest" / "labels.csv"
    manifest.parent.mkdir(parents=True)
    rows = [f"../images/{p.relative_to(images).as_posix()},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def test_manifest_paths_outside_its_folder_need_the_flag(runner, tmp_path, outside_manifest):
    out = tmp_path / "out" / "split.json"
    for command in (["data", "split", outside_manifest, "--out", out, "--folds", "2"],
                    ["data", "inspect", outside_manifest]):
        assert_one_line_error(invoke(runner, *command), f"{outside_manifest}:2", "'../images/blast/blast_000.png'",
                              "is outside the manifest's folder", "--allow-outside-root")
    assert not out.parent.exists()
    result = invoke(runner, "data", "split", outside_manifest, "--out", out, "--folds", "2", "--allow-outside-root")
    assert result.exit_code == 0, result.output
    paths = {e.path for e in load_split(out).entries}
    assert len(paths) == 12 and all(p.startswith(str((tmp_path / "data" / "images").resolve())) for p in paths)
    report = json.loads(invoke(runner, "data", "inspect", outside_manifest, "--format", "json", "--allow-outside-root").output)
    assert report["classes"] == {"blast": 6, "normal": 6}


def test_a_link_out_of_the_manifest_folder_is_outside_too(runner, tmp_path, outside_manifest):
    folder = outside_manifest.parent
    (folder / "linked").symlink_to(tmp_path / "data" / "images", target_is_directory=True)
    rows = [f"linked/{c}/{c}_00{i}.png,{c}" for c in ("blast", "normal") for i in range(6)]
    outside_manifest.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert_one_line_error(invoke(runner, "data", "inspect", outside_manifest), "'linked/blast/blast_000.png'",
                          "is outside")
    assert invoke(runner, "data", "inspect", outside_manifest, "--allow-outside-root").exit_code == 0


@pytest.mark.parametrize("command, target", [
    ("stage3", "mtl_suite.workflows.stage.run_stage"),
    ("tune", "mtl_suite.workflows.tune.tune"),
    ("compare", "mtl_suite.workflows.compare.run_comparison"),
])
def test_the_flag_reaches_the_training_commands(runner, monkeypatch, outside_manifest, command, target):
    """The flag lands in the config those commands train from, and that config reads the manifest (smear_task is
    the data half of every stage run); without it the same config refuses the manifest."""
    import dataclasses
    import importlib

    from mtl_suite.errors import UserError
    from mtl_suite.tasks import smear_task

    module_name, function = target.rsplit(".", 1)
    seen = []

    def fake(request, say=None):
        seen.append(request.config)
        return SimpleNamespace(run_id="r", experiment_id="0", tracking_uri="x", study_name="s", study_run_id="r",
                               best_value=None, best_trial=None, storage="s", looks_text=lambda: "")

    monkeypatch.setattr(importlib.import_module(module_name), function, fake)
    for module in ("mtl_suite.cli.train", "mtl_suite.cli.tune"):  # leave pytest's Ctrl-C and SIGTERM handling alone
        monkeypatch.setattr(f"{module}.unwind_on_interrupts", lambda: None)
    for flag in ([], ["--allow-outside-root"]):
        result = invoke(runner, command, "--data", outside_manifest, *flag, "-q")
        assert result.exit_code == 0, result.output
    without, with_flag = (dataclasses.replace(cfg.data, folds=2, image_size=32) for cfg in seen)
    assert (without.allow_outside_root, with_flag.allow_outside_root) == (False, True)
    with pytest.raises(UserError, match="--allow-outside-root"):
        smear_task(without, "multiclass", None)
    data = smear_task(with_flag, "multiclass", None)
    assert len(data.split.entries) == 12 and data.class_names == ["blast", "normal"]


# --- file names with spaces and non-ASCII characters -------------------------------------------------------------

UNUSUAL = {  # relative path -> (label, format); the fixture adds a TIFF with a comma, "&" and "'" in its name
    "blast cells/zelle ü {i}.png": ("blast cells", "PNG"),
    "normal/正常 {i}.jpg": ("normal", "JPEG"),
}


@pytest.fixture
def unusual_tree(tmp_path) -> Path:
    root = tmp_path / "daten ü" / "smears"
    rng = np.random.default_rng(3)
    for pattern, (_, fmt) in UNUSUAL.items():
        for i in range(6):
            target = root / pattern.format(i=i)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(target, fmt)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "normal" / "Ärger, & co's.tif")
    return root


def test_unusual_file_names_work_end_to_end(runner, tmp_path, unusual_tree):
    from mtl_suite.data.images import read_resized
    from mtl_suite.data.pipeline import file_dataset, load_image_array

    out = tmp_path / "splits ü" / "split 1.json"
    result = invoke(runner, "data", "split", unusual_tree, "--out", out, "--folds", "2")
    assert result.exit_code == 0, result.output
    assert f"Split written to {out}" in result.output
    split = load_split(out)
    names = {Path(e.path).relative_to(unusual_tree.resolve()).as_posix() for e in split.entries}
    assert names == {p.format(i=i) for p in UNUSUAL for i in range(6)} | {"normal/Ärger, & co's.tif"}
    assert {e.label for e in split.entries} == {"blast cells", "normal"}

    paths = [e.path for e in split.entries]
    arrays = load_image_array(paths, 16)  # the training loader
    for path, array in zip(paths, arrays):
        np.testing.assert_array_equal(array, read_resized(path, 16))
    labels = [sorted({e.label for e in split.entries}).index(e.label) for e in split.entries]
    native = [i for i, p in enumerate(paths) if not p.endswith(".tif")]
    for chosen in (native, list(range(len(paths)))):  # TF's decoders, then PIL's (the .tif) in tf.data
        batches = list(file_dataset([paths[i] for i in chosen], [labels[i] for i in chosen], 16, batch_size=8))
        images = np.concatenate([b[0].numpy() for b in batches])
        assert np.abs(images.astype(int) - arrays[chosen].astype(int)).max() <= 1

    # The same files through a CSV manifest (quoted names) and the JSON report.
    manifest = unusual_tree / "labels ü.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([Path(p).relative_to(unusual_tree.resolve()).as_posix(), label]
                         for p, label in zip(paths, [e.label for e in split.entries]))
    report = json.loads(invoke(runner, "data", "inspect", manifest, "--format", "json", "--on-bad-image", "fail").output)
    assert report["classes"] == {"blast cells": 6, "normal": 7} and report["unreadable"] == []

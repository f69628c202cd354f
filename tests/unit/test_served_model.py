"""The registered pyfunc as MLflow saves and loads it (models-from-code, a tiny Keras classifier and detector in
place of a trained one): a loaded model reads no file a request names unless its environment turns paths on,
`mtl-suite predict` reads its files itself, and the requirements it is logged with hold every distribution it
imports."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mtl_suite.workflows.predict import predict_files
from mtl_suite.paths import SAMPLE_IMAGES
from mtl_suite.serving import pyfunc as serving
from mtl_suite.tracking.requirements import serving_requirements
from test_import_graph import _import_nodes

REPO = Path(__file__).resolve().parents[2]
SAMPLE = sorted(SAMPLE_IMAGES.rglob("*.jpg"))[0]
SIZE = 16
CLASSES = ["normal", "blast"]


def _tiny(units: int, activation: str | None):
    import keras

    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(units, activation=activation)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model folder as `promote` logs it (without the code copy: the suite is importable here)."""
    import mlflow.keras

    from mtl_suite.training.conformal import ConformalCalibration
    from mtl_suite.training.reliability import Reliability

    root = tmp_path_factory.mktemp("served")
    mlflow.keras.save_model(_tiny(len(CLASSES), "softmax"), str(root / "keras"), pip_requirements=["keras"])
    (root / "model_info.json").write_text(json.dumps({"class_names": CLASSES, "image_size": SIZE}))
    Reliability(_tiny(1, None), 1e9, SIZE, ConformalCalibration((0.1, 0.2, 0.3)), 0.015).save(root / "reliability")
    mlflow.pyfunc.save_model(
        str(root / "model"), python_model=str(Path(serving.__file__).with_name("model_code.py")),
        artifacts={serving.KERAS_ARTIFACT: str(root / "keras"), serving.INFO_ARTIFACT: str(root / "model_info.json"),
                   serving.RELIABILITY_ARTIFACT: str(root / "reliability")},
        signature=serving.signature(), pip_requirements=["mlflow"])
    return root / "model"


@pytest.fixture
def loaded(model_dir, monkeypatch):
    """The model loaded with no paths setting in the environment, as `mlflow models serve` would run it."""
    monkeypatch.delenv(serving.PATHS_ENV, raising=False)
    return mlflow.pyfunc.load_model(str(model_dir))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_a_loaded_model_refuses_a_server_path_and_takes_base64(loaded, monkeypatch):
    assert SAMPLE.is_file()  # a real file on this machine: refused for what it is, not for being missing
    with pytest.raises(MlflowException, match="file paths are turned off here: send the file's bytes as base64"):
        loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    for value in ("0", "true", "yes", ""):  # only "1" turns paths on
        monkeypatch.setenv(serving.PATHS_ENV, value)
        with pytest.raises(MlflowException, match="file paths are turned off"):
            loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    monkeypatch.delenv(serving.PATHS_ENV)
    answer = loaded.predict(pd.DataFrame({"image": [_b64(SAMPLE)]}))
    assert answer["error"][0] is None and answer["label"][0] in CLASSES


def test_paths_are_read_only_where_the_environment_turns_them_on(loaded, monkeypatch):
    """What `mtl-suite serve --allow-paths` sets (tests/unit/test_safe_defaults.py checks that it does)."""
    monkeypatch.setenv(serving.PATHS_ENV, "1")
    by_path = loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    by_bytes = loaded.predict(pd.DataFrame({"image": [_b64(SAMPLE)]}))
    assert by_path["error"][0] is None
    np.testing.assert_allclose(by_path["probabilities"][0], by_bytes["probabilities"][0])


def test_predict_reads_its_files_itself_and_names_each_bad_one(loaded, tmp_path, make_image, write_bad):
    """`mtl-suite predict` needs no paths setting: it sends arrays. A batch that the model refuses whole (every image
    unusable) still gives each file its reason."""
    sent = []

    class Recording:
        def predict(self, frame, params=None):
            sent.extend(frame["image"])
            return loaded.predict(frame, params=params)

    good = make_image(tmp_path / "good.png", size=(40, 30))
    tiny = make_image(tmp_path / "tiny.png", size=(4, 4))
    broken = write_bad(tmp_path / "broken.jpg", "truncated-jpeg")
    frame = predict_files(Recording(), [good, broken, tiny, SAMPLE], batch_size=3)
    assert list(frame["file"]) == [str(good), str(broken), str(tiny), str(SAMPLE)]
    errors = list(frame["error"])
    assert errors[0] is None and errors[3] is None and frame["label"][0] in CLASSES
    assert errors[1].startswith("truncated or corrupt image") and errors[2].startswith("image too small: 4x4")
    assert frame["probabilities"][1] is None and frame["label"][2] is None
    assert sent and all(isinstance(item, np.ndarray) for item in sent)
    alone = predict_files(loaded, [tiny])  # the only image is unusable: the model refuses the batch
    assert alone["error"][0].startswith("image too small: 4x4")


# --- requirements ----------------------------------------------------------------------------------------------------

# Run in a fresh interpreter, so that sys.modules holds only what loading the model and answering imported. Every
# distribution that the requirements do not bring in is made unimportable first, as where only they are installed:
# a hard import of one fails the run; an optional one (psutil for OpenTelemetry, tqdm for MLflow) falls back.
PROBE = r"""
import json, re, sys
from importlib.abc import MetaPathFinder
from importlib.metadata import packages_distributions

model_dir, allowed, image = sys.argv[1], set(json.loads(sys.argv[2])), sys.argv[3]
owners = packages_distributions()


class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        found = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(name, ())}
        if path is None and found and not found & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (the requirements do not bring it in)", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
import base64
import mlflow, numpy as np, pandas as pd

model = mlflow.pyfunc.load_model(model_dir)
encoded = base64.b64encode(open(image, "rb").read()).decode()
images = pd.Series([encoded, np.zeros((20, 24, 3), np.uint8)], dtype=object)
answer = model.predict(pd.DataFrame({"image": images}), params={"coverage": 0.9})
assert answer["error"].isna().all(), list(answer["error"])
suite = {name: module.__file__ for name, module in list(sys.modules.items())
         if name.split(".")[0] == "mtl_suite" and getattr(module, "__file__", None)}
print(json.dumps({"top": sorted({name.split(".")[0] for name in sys.modules}), "suite": suite}))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def brought_in(packages: set[str]) -> set[str]:
    """The packages and every distribution installing them installs (requirements whose markers hold here, with the
    extras asked for); a requirement not installed here is left out (nothing can import it)."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, tuple[str, ...]]] = set()
    pending = [(name, ()) for name in packages]
    while pending:
        name, extras = pending.pop()
        if (canonical(name), extras) in seen:
            continue
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        seen.add((canonical(name), extras))
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras or ("",)):
                pending.append((requirement.name, tuple(sorted(requirement.extras))))
    return {name for name, _ in seen}


def owners(top_level: set[str]) -> dict[str, set[str]]:
    """Per top-level module, the installed distributions that provide it (mlflow: mlflow, mlflow-skinny and
    mlflow-tracing); the standard library and mtl-suite's own modules are left out."""
    provided = packages_distributions()
    return {name: {canonical(d) for d in provided.get(name, ())} for name in top_level
            if name not in sys.stdlib_module_names and not name.startswith("mtl_suite")}


def imported_by(files: list[str]) -> set[str]:
    """The top-level modules these source files import, at module level or inside functions (a lazy import runs
    when the served model answers), but not under `if TYPE_CHECKING:`."""
    names = set()
    for file in files:
        for node in _import_nodes(ast.parse(Path(file).read_text(), file)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_distribution_the_served_model_imports_is_pinned(model_dir):
    pinned = {canonical(line.split("==")[0]) for line in serving_requirements()}
    assert all("==" in line for line in serving_requirements())
    allowed = brought_in(pinned) | {"mtl-suite"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(model_dir), json.dumps(sorted(allowed)), str(SAMPLE)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, "the served model needs a distribution its requirements do not bring in:\n" + \
        done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"mtl_suite.serving.pyfunc", "mtl_suite.training.metrics", "mtl_suite.models.colour"} <= set(seen["suite"])
    # everything imported came from the requirements (the finder saw to it; a .pth file could have slipped past)
    assert not [name for name, found in owners(set(seen["top"])).items() if found and not found & allowed]
    unpinned = {name: sorted(found) for name, found in owners(imported_by(list(seen["suite"].values()))).items()
                if not found & pinned}
    assert not unpinned, (f"the served model's code imports {unpinned} (module: installed distributions): pin them in "
                          "SERVING_PACKAGES, mtl_suite/tracking/requirements.py")

"""The real `mlflow models serve` (through `mtl-suite serve`) on 127.0.0.1: answers equal local predictions, bad
requests get 4xx JSON with a message, and the server keeps serving."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from registry_store import SAMPLES, trained_store

pytestmark = pytest.mark.slow
NAME = "serving-tests"
STARTUP_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def store():
    store = trained_store()
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", store.uri, "--experiment", store.experiment,
                                      "--name", NAME, "-q"])
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(bin_dir) / "mtl-suite"), "serve", "--model", f"models:/{NAME}@champion",
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """The server runs in its own session (process group): stop the group we started, then wait, bounded."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local(store):
    mlflow.set_tracking_uri(store.uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    return pyfunc.predict(pd.DataFrame({"image": [str(p) for p in SAMPLES]}))


def test_served_predictions_equal_local_ones(server, local):
    url, _ = server
    status, body = post(f"{url}/invocations", {"dataframe_records": [{"image": b64(p)} for p in SAMPLES]})
    assert status == 200, body
    rows = body["predictions"]
    assert [r["label"] for r in rows] == list(local["label"])
    assert all(r["error"] is None for r in rows)
    np.testing.assert_allclose([r["probabilities"] for r in rows], np.array(local["probabilities"].tolist()),
                               atol=1e-5)
    # The "inputs" form and a single image give the same answer.
    status, single = post(f"{url}/invocations", {"inputs": {"image": [b64(SAMPLES[1])]}})
    assert status == 200, single
    np.testing.assert_allclose(single["predictions"][0]["probabilities"], local["probabilities"][1], atol=1e-5)


def test_bad_image_in_a_batch_gets_an_error_entry(server, local):
    url, _ = server
    batch = [{"image": b64(SAMPLES[0])}, {"image": base64.b64encode(b"not an image at all").decode()},
             {"image": b64(SAMPLES[2])}]
    status, body = post(f"{url}/invocations", {"dataframe_records": batch})
    assert status == 200, body
    rows = body["predictions"]
    assert "not an image" in rows[1]["error"] and rows[1]["probabilities"] is None and rows[1]["label"] is None
    np.testing.assert_allclose([rows[0]["probabilities"], rows[2]["probabilities"]],
                               np.array(local["probabilities"].tolist())[[0, 2]], atol=1e-5)


@pytest.mark.parametrize("payload, status, fragment", [
    ({"dataframe_split": {"columns": ["image"], "data": []}}, 400, "empty payload"),
    ({"dataframe_records": [{"image": "%%% corrupt base64 %%%"}]}, 400, "not valid base64"),
    ({"dataframe_records": [{"image": base64.b64encode(b"GIF89a....").decode()}]}, 400, "not an image"),
    ({"dataframe_records": [{"image": [[[0, 0, 0, 0]]]}]}, 400, "(H, W, 3)"),
    ({"dataframe_records": [{"image": [[[0.5, 0.5, 0.5]]]}]}, 400, "integers 0..255"),
    ({"dataframe_records": [{"image": str(SAMPLES[0])}]}, 400, "file paths are turned off"),
    ({"dataframe_records": [{"picture": "x"}]}, 400, "image"),
    (b"{not json", 400, "JSON"),
])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, local, payload, status, fragment):
    url, proc = server
    got, body = post(f"{url}/invocations", payload)
    assert got == status, body
    assert fragment in body["message"]
    assert proc.poll() is None
    ok, answer = post(f"{url}/invocations", {"dataframe_records": [{"image": b64(SAMPLES[0])}]})
    assert ok == 200
    np.testing.assert_allclose(answer["predictions"][0]["probabilities"], local["probabilities"][0], atol=1e-5)


def test_serve_fails_fast_without_a_champion(store):
    result = CliRunner().invoke(app, ["serve", "--model", "models:/no-such-model@champion", "--tracking-uri",
                                      store.uri])
    assert result.exit_code == 2
    assert "models:/no-such-model@champion not found" in result.output

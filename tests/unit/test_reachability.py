"""A tracking URI or an Optuna storage that is wrong or does not answer is one line naming it, within seconds, and
nothing is created while checking. Local HTTP servers stand in for a tracking server that answers wrongly, refuses
access, or never answers; the bad-input corpus (stores/) runs the same through the CLI."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest

from mtl_suite.errors import UserError
from mtl_suite.tracking import reachability
from mtl_suite.tracking.reachability import check_tracking_uri, mask_password
from mtl_suite.tuning.storage_check import check_storage


class Handler(http.server.BaseHTTPRequestHandler):
    status, body = 200, b"{}"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Starts a local HTTP server answering every GET with (status, body); yields its URL."""
    servers = []

    def start(status: int, body: bytes) -> str:
        handler = type("H", (Handler,), {"status": status, "body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def refused(uri: str) -> str:
    reachability._check_tracking_uri_once.cache_clear()
    with pytest.raises(UserError) as info:
        check_tracking_uri(uri)
    return str(info.value)


def test_a_server_that_answers_like_mlflow_passes(http_server):
    url = http_server(200, json.dumps({"experiments": []}).encode())
    reachability._check_tracking_uri_once.cache_clear()
    check_tracking_uri(url)


def test_a_web_server_that_is_not_mlflow_is_named(http_server):
    url = http_server(404, b"<html>not found</html>")
    message = refused(url)
    assert url in message and "does not answer as an MLflow tracking server (HTTP 404" in message


def test_a_server_that_wants_credentials_says_which(http_server):
    message = refused(http_server(401, b'{"error_code": "UNAUTHENTICATED"}'))
    assert "refused access (HTTP 401)" in message and "MLFLOW_TRACKING_USERNAME" in message


def test_a_server_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setattr(reachability, "TIMEOUT_S", 1)
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        message = refused(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert time.monotonic() - started < 10 and "is not reachable" in message


def test_database_stores_are_checked_before_mlflow_retries_them():
    started = time.monotonic()
    message = refused("postgresql://mtl:secret@127.0.0.1:9/mlflow")
    assert time.monotonic() - started < 10  # MLflow's own client retries for about two minutes
    assert "tracking store postgresql://mtl:***@127.0.0.1:9/mlflow" in message and "secret" not in message


def test_storage_checks_create_nothing(tmp_path):
    check_storage(str(tmp_path / "new" / "studies.log"))  # a journal in a folder the engine will make
    check_storage(f"sqlite:///{tmp_path}/studies.db")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="the folder .* does not exist"):
        check_storage(f"sqlite:///{tmp_path}/missing/studies.db")  # SQLite would not make the folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create"):
        check_storage(str(tmp_path / "file" / "studies.log"))
    with pytest.raises(UserError, match="is a folder"):
        check_storage(str(tmp_path))


def test_passwords_are_masked():
    assert mask_password("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_password("http://host:5000") == "http://host:5000"

"""A real MLflow tracking server for tests and benchmarks: `mlflow server` (the project's own installation) on a
free local port, with a PostgreSQL backend store in a database made for it and proxied artifacts on local disk, as
docs/scaling-out.md runs it. Everything it starts is stopped, and the database dropped, on the way
out, whatever happens. Used by tests/integration/test_scale_out.py and benchmarks/bench_server.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

POSTGRES_ENV = "MTL_SUITE_TEST_POSTGRES_URL"
# The server's job runner and its task consumers (GenAI jobs: scorers, prompt optimisation) are five more processes
# this suite never uses; on a 2-core machine they cost the workers seconds.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def postgres_problem(url: str | None) -> str | None:
    """Why the PostgreSQL at `url` cannot be used (None when it can): not set, not reachable, or no CREATEDB."""
    if not url:
        return f"{POSTGRES_ENV} is not set (start a server with: export {POSTGRES_ENV}=$(.ci/start-postgres.sh))"
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as connection:
            row = connection.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                                     ).fetchone()
    except Exception as exc:  # any driver or connection error
        return f"cannot reach PostgreSQL at {POSTGRES_ENV}: {type(exc).__name__}: {exc}"
    if not row or not row[0]:
        return (f"the role of {POSTGRES_ENV} may not create databases (the MLflow backend store gets its own): "
                f"rerun .ci/start-postgres.sh, which grants CREATEDB")
    return None


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str = "mtl_mlflow") -> Iterator[str]:
    """A new, empty database on the server of `admin_url` (its URL), dropped afterwards (connections closed)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlflow_command() -> str:
    """The `mlflow` of this environment (beside this Python), not whatever is first on PATH."""
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.is_file() else "mlflow"


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, start_timeout_s: float = 90) -> Iterator[str]:
    """`mlflow server --backend-store-uri ... --serve-artifacts --artifacts-destination ...` on a free port; yields
    its URL once /health answers. Stopped (its whole process group) on the way out."""
    port = free_port()
    command = [mlflow_command(), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, **SERVER_ENV})
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(url):
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {server.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within {start_timeout_s} s: "
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        stop_group(server)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the process group (the server and the uvicorn it starts), SIGKILL after `grace_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (a worker slow to stop)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace_s)

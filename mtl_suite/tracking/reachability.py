"""Is the store there? A tracking URI or a database URL that is wrong or unreachable ends as one line naming it,
before a command does any work: MLflow's own client retries an unreachable server for minutes (with backoff) and
then dies with a traceback, and a PostgreSQL host that does not answer holds a connection attempt for the TCP
timeout. Each check takes a few seconds at most and is done once per process and URI."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from mtl_suite.errors import UserError

logger = logging.getLogger(__name__)

TIMEOUT_S = 5  # connect and read, per check
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # with an optional +driver (postgresql+psycopg)
PROBE = "/api/2.0/mlflow/experiments/search"  # every MLflow tracking server answers it, auth permitting
HOW_TO_POINT = "--tracking-uri or $MLFLOW_TRACKING_URI"


def check_tracking_uri(uri: str) -> None:
    """Raise a UserError naming `uri` unless MLflow can use it as a tracking store now."""
    _check_tracking_uri_once(uri)


@functools.lru_cache(maxsize=16)
def _check_tracking_uri_once(uri: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    shown = mask_password(uri)
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        _check_server(uri.rstrip("/"), shown)
    elif scheme in DATABASE_SCHEMES:  # before MlflowClient, which retries a refused connection for minutes
        check_database(uri, f"tracking store {shown} ({HOW_TO_POINT})")
    elif scheme == "sqlite":
        _check_sqlite_folder(uri, shown)
    else:
        try:
            MlflowClient(tracking_uri=uri)  # an unknown scheme (htp://, postgres://) fails here
        except MlflowException as exc:
            if "unsupported URI" not in str(exc):  # MLflow's own reason (a file store: read-only in MLflow 3)
                raise UserError(f"tracking URI {shown} ({HOW_TO_POINT}): {first_line(exc)}") from None
            raise UserError(f"tracking URI {shown} ({HOW_TO_POINT}): unsupported scheme {scheme + '://'!r}. Expected "
                            f"http(s)://host:port (a tracking server), sqlite:///file.db, postgresql://user:pass@host/db "
                            f"(or mysql://, mssql://)") from None


def _check_server(uri: str, shown: str) -> None:
    """One GET with a short timeout and no retries, with the credentials MLflow itself would send."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    where = f"tracking server {shown} ({HOW_TO_POINT})"
    try:
        response = http_request(get_default_host_creds(uri), PROBE, "GET", max_retries=0, backoff_factor=0,
                                timeout=TIMEOUT_S, raise_on_status=False, params={"max_results": 1})
    except MlflowException as exc:  # MLflow wraps connection errors and timeouts
        raise UserError(f"{where} is not reachable: {_connection_reason(exc)}. Start it (`mlflow server ...`) or "
                        f"point {HOW_TO_POINT} at a running one") from None
    status = response.status_code
    if status in (401, 403):
        raise UserError(f"{where} refused access (HTTP {status}): set MLFLOW_TRACKING_USERNAME and "
                        f"MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
    if status != 200 or not _is_json(response):
        raise UserError(f"{where} does not answer as an MLflow tracking server (HTTP {status} from GET {PROBE}); "
                        f"check the host, port and path")


def check_database(url: str, what: str) -> None:
    """Connect once with a short timeout (SQLAlchemy, as MLflow and Optuna do); `what` names the store."""
    try:
        import sqlalchemy
    except ImportError:  # pragma: no cover (a dependency of both mlflow and optuna)
        return
    scheme = urlsplit(url).scheme
    connect_args = {"connect_timeout": TIMEOUT_S} if scheme.split("+", 1)[0] in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except ModuleNotFoundError as exc:
        raise UserError(f"{what}: its database driver {exc.name!r} is not installed (postgresql:// uses psycopg: "
                        f"pip install 'psycopg[binary]'; mysql+pymysql:// uses pymysql)") from None
    except Exception as exc:  # a malformed URL: ArgumentError, ValueError ...
        raise UserError(f"{what}: not a database URL SQLAlchemy understands: {first_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:  # OperationalError and friends: refused, timed out, bad password, no such database
        if "sqlalchemy" not in type(exc).__module__:
            raise
        raise UserError(f"{what} is not reachable: {_database_reason(exc)}") from None
    finally:
        engine.dispose()


def _check_sqlite_folder(uri: str, shown: str) -> None:
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if path in ("", ":memory:"):
        return
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"tracking store {shown} ({HOW_TO_POINT}): cannot create its folder {folder}: "
                        f"{exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"tracking store {shown} ({HOW_TO_POINT}): its folder {folder} is not writable")


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                           ("nodename nor servname", "unknown host"), ("Temporary failure in name resolution",
                                                                       "unknown host"),
                           ("timed out", f"no answer within {TIMEOUT_S} s"), ("Max retries exceeded",
                                                                             "no connection")):
        if needle in text:
            return reason
    return first_line(exc)


def _database_reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return first_line(original)


def _is_json(response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def mask_password(url: str) -> str:
    """scheme://user:secret@host/... -> scheme://user:***@host/..., fit for a message."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip()[:300] if text else type(exc).__name__

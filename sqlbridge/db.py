"""Engines: one place that knows how to open each supported database.

SQLite (the embedded default) gets WAL and a busy timeout so several worker processes can share
one file; SQL Server URLs keep the ``sqlbridge`` schema, SQLite maps it away. A missing ODBC
library becomes one ConfigError that says what to install, not an ImportError traceback.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import ConfigError
from .schema import SCHEMA

SQLITE_BUSY_TIMEOUT_MS = 30_000


def dialect_name(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"database URL is not an SQLAlchemy URL: {_safe(url)}") from None


def _safe(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unreadable URL)"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so two workers' claim transactions queue
    # on busy_timeout instead of both reading and then one failing to upgrade its lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _sqlite_lenient(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.text_factory = _lenient_text


def make_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
                lenient_text: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``. ``busy_timeout_ms`` (SQLite): how long a statement waits for
    another process's write lock before failing with "database is locked".

    ``lenient_text`` (SQLite): text that is not valid UTF-8 (a row INSERTed with
    ``CAST(X'FF' AS TEXT)``) reads with U+FFFD instead of failing the whole statement. For the
    operator's views only (status, list, show): one such row made every one of them fail, for
    good. The worker keeps strict reads, so it fails that row (``UNREADABLE_ROW``) rather than
    send altered text."""
    backend = dialect_name(url)
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000, "isolation_level": None,
                          "check_same_thread": False},
            execution_options={"schema_translate_map": {SCHEMA: None}},
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if lenient_text:
            event.listen(engine, "connect", _sqlite_lenient)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "mssql":
        kwargs.setdefault("pool_pre_ping", True)
        driver = make_url(url).get_driver_name()
        if driver == "pyodbc":
            kwargs.setdefault("fast_executemany", True)
        try:
            return create_engine(url, **kwargs)
        except ImportError as exc:
            raise ConfigError(
                f"the SQL Server driver for {_safe(url)} cannot be loaded ({exc}). On Debian or "
                "Ubuntu install unixODBC and a driver (apt-get install unixodbc tdsodbc, or "
                "Microsoft's msodbcsql18), then pip install 'sqlbridge[mssql]'; or use an "
                "mssql+mssqlpython:// URL with pip install mssql-python"
            ) from None
        except NoSuchModuleError:
            raise ConfigError(f"no SQLAlchemy dialect for {_safe(url)}") from None
    raise ConfigError(
        f"database {_safe(url)} is not supported; use sqlite:///FILE or an mssql+pyodbc:// or "
        "mssql+mssqlpython:// URL"
    )

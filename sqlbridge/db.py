"""Engines: one place that knows how to open each supported database.

SQLite (the embedded default) gets WAL and a busy timeout so several worker processes can share
one file; SQL Server URLs keep the ``sqlbridge`` schema, SQLite maps it away. A missing ODBC
library becomes one ConfigError that says what to install, not an ImportError traceback.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
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


# Microsoft's ODBC drivers ("ODBC Driver 18 for SQL Server", "ODBC Driver 17 …"): the only ones
# trusted with pyodbc's fast_executemany (with FreeTDS it crashes the process on multi-row writes).
_MICROSOFT_ODBC = re.compile(r"^\{?ODBC Driver \d+ for SQL Server\}?$", re.IGNORECASE)


def odbc_driver(url: URL) -> str:
    """The ODBC driver a pyodbc URL names (``?driver=``), or '' for a DSN / none given."""
    return str(url.query.get("driver") or "")


def is_freetds(url: URL) -> bool:
    return "freetds" in odbc_driver(url).lower()


def mssql_url(url: URL) -> URL:
    """The URL rewritten into what its driver understands.

    FreeTDS does not read the ``Server=host,port`` SQLAlchemy writes (it connected to
    ``host\x001433``): it takes ``Port=``. A port in the query string makes SQLAlchemy leave
    ``Server=`` bare and pass ``port=…`` through as its own keyword.
    """
    if url.get_driver_name() == "pyodbc" and is_freetds(url) and url.port is not None \
            and "port" not in {k.lower() for k in url.query}:
        return url.set(port=None).update_query_dict({"port": str(url.port)})
    return url


def mssql_engine_options(url: URL) -> dict[str, Any]:
    """create_engine options per driver.

    - fast_executemany: Microsoft's ODBC driver only (FreeTDS segfaults on it).
    - setinputsizes: SQLAlchemy binds NVARCHAR(MAX) values as (SQL_WVARCHAR, 0, 0), the
      "max" form Microsoft's driver documents; FreeTDS refuses a column size of 0 for values
      over 4,000 bytes (HY090 Invalid string or buffer length). Without it pyodbc binds each
      string by its length (SQL_WVARCHAR up to 4,000 characters, SQL_WLONGVARCHAR above),
      which FreeTDS sends as NVARCHAR / NTEXT and the server converts to NVARCHAR(MAX).
    """
    if url.get_driver_name() != "pyodbc":
        return {}
    if _MICROSOFT_ODBC.match(odbc_driver(url)):
        return {"fast_executemany": True}
    if is_freetds(url):
        return {"use_setinputsizes": False}
    return {}


def _mssql_session(dbapi_conn: Any, _record: Any) -> None:
    # Every rowcount-fenced transition (cancel, retry, lease renewal, schedule claims, the
    # fenced finish) trusts "rows affected": make sure NOCOUNT is off on every new connection,
    # whatever the login's defaults ('user options') say.
    cur = dbapi_conn.cursor()
    cur.execute("SET NOCOUNT OFF")
    cur.close()


def _known_isolation_level(engine: Engine) -> None:
    """SQLAlchemy reads the session's isolation level from sys.dm_exec_sessions, which
    Babelfish does not have; it then leaves the default unknown and fails every connection
    returned to the pool after an AUTOCOMMIT use (wait_for must run outside a transaction).
    Where the server cannot say, it is READ COMMITTED: the default of SQL Server and of
    Babelfish alike."""
    dialect = engine.dialect
    asked = dialect.get_isolation_level

    def get_isolation_level(dbapi_connection: Any) -> str:
        try:
            return asked(dbapi_connection)
        except NotImplementedError:
            return "READ COMMITTED"

    dialect.get_isolation_level = get_isolation_level  # type: ignore[method-assign]


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _sqlite_lenient(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.text_factory = _lenient_text


def _tolerant_rollback(engine: Engine) -> None:
    """A ROLLBACK the server answers with 3903 ("can only be used in transaction blocks") is
    ignored: the server already ended the transaction (Babelfish does so when a procedure
    THROWs), so there is nothing to undo, and the error that ended it is the one to surface;
    SQLAlchemy would otherwise raise the 3903 in its place and hide the real refusal."""
    dialect = engine.dialect
    rollback = dialect.do_rollback

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        except Exception as exc:
            if "(3903)" not in str(exc):
                raise

    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


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
        parsed = mssql_url(make_url(url))
        for key, value in mssql_engine_options(parsed).items():
            kwargs.setdefault(key, value)
        try:
            engine = create_engine(parsed, **kwargs)
            event.listen(engine, "connect", _mssql_session)
            _known_isolation_level(engine)
            _tolerant_rollback(engine)
            return engine
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

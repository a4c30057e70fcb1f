"""The first contact with a database: can we reach it, and is the schema there?

Every command and the worker's start-up go through ``first_contact``, so a missing ODBC
driver, a wrong DSN, a refused login, an unknown database or a schema that was never installed
each become one sentence saying what to install or fix (a ``ConfigError``: exit 3), instead of
a driver traceback or a worker retrying forever. A server that does not answer (closed port,
host down) is an outage, not a configuration mistake: ``DatabaseUnavailable``, which the CLI
reports as exit 7 and the worker rides out.

``classify`` holds the rules, in one place; it reads the driver's own message (SQLSTATE and
SQL Server error numbers) because pyodbc, FreeTDS and Microsoft's driver raise the same
exception class for all of these.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from .errors import ConfigError, SqlbridgeError
from .schema import SCHEMA

NOT_INSTALLED = "the schema is not installed here: run `sqlbridge install --database-url {url}`"


class DatabaseUnavailable(SqlbridgeError):
    """The database did not answer (down, unreachable, closed port): worth trying later."""

    code = "DATABASE_UNAVAILABLE"


def safe_url(url: Any) -> str:
    try:
        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "(unreadable URL)"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(a) for a in getattr(orig, "args", ())) or str(orig)
    return " ".join(text.split())[:300]


# (pattern over the driver's message, sentence). The first match wins; order matters.
_CONFIG_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"can't open lib|IM002|data source name not found|file not found.*SQLDriver"
                r"|driver.*not (?:found|installed)", re.IGNORECASE),
     "the ODBC driver or DSN named in {url} cannot be found: install unixODBC and a driver "
     "(apt-get install unixodbc tdsodbc for ?driver=FreeTDS, or Microsoft's msodbcsql18 for "
     "?driver=ODBC+Driver+18+for+SQL+Server) or fix the driver= / DSN in the URL "
     "(installed drivers: {drivers})"),
    (re.compile(r"\b18456\b|\b28000\b|login failed", re.IGNORECASE),
     "SQL Server refused the login for {url}: check the user name and password in the URL "
     "(and that the login exists and is enabled)"),
    (re.compile(r"\b4060\b|cannot open database|\b911\b|database .* does not exist",
                re.IGNORECASE),
     "the database named in {url} does not exist on that server (or this login may not open "
     "it): fix the database name in the URL, or create it first"),
    (re.compile(r"unable to open database file", re.IGNORECASE),
     "cannot open the SQLite file of {url}: does its folder exist, and may this user write "
     "there?"),
    (re.compile(r"certificate|SSL|TLS|encrypt", re.IGNORECASE),
     "the TLS handshake with the server of {url} failed: install the server's CA, or for a "
     "test server add TrustServerCertificate=yes to the URL"),
)


def odbc_drivers() -> list[str]:
    try:
        import pyodbc  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        return list(pyodbc.drivers())
    except Exception:  # noqa: BLE001 - an odd unixODBC must not hide the real message
        return []


def classify(exc: BaseException, url: Any) -> SqlbridgeError:
    """A connect-time failure as the one sentence an operator needs: ``ConfigError`` for what
    they must fix, ``DatabaseUnavailable`` for an outage (worth retrying)."""
    if isinstance(exc, SqlbridgeError):
        return exc
    detail = _first_line(exc)
    shown = safe_url(url)
    if isinstance(exc, ImportError):
        return ConfigError(f"the database driver for {shown} cannot be loaded ({detail}): "
                           "pip install 'sqlbridge[mssql]' (and unixODBC plus a driver)")
    for pattern, sentence in _CONFIG_RULES:
        if pattern.search(detail):
            drivers = ", ".join(odbc_drivers()) or "none"
            return ConfigError(sentence.format(url=shown, drivers=drivers) + f" [{detail}]")
    return DatabaseUnavailable(f"cannot reach the database {shown}: {detail}")


def _sqlite_path(url: Any) -> Path | None:
    u = make_url(str(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:"):
        return None
    return Path(u.database)


def schema_installed(engine: Engine) -> bool:
    with engine.connect() as conn:
        schema = None if engine.dialect.name == "sqlite" else SCHEMA
        return bool(inspect(conn).has_table("outbox", schema=schema))


def first_contact(engine: Engine, *, need_schema: bool = True) -> None:
    """Connect once and check the schema; raise ``ConfigError`` or ``DatabaseUnavailable``
    with one sentence. Never creates a SQLite file: a missing file means "not installed"."""
    path = _sqlite_path(engine.url)
    if path is not None and need_schema and not path.exists():
        raise ConfigError(NOT_INSTALLED.format(url=safe_url(engine.url)),
                          code="SCHEMA_NOT_INSTALLED")
    try:
        installed = schema_installed(engine)
    except (DBAPIError, ImportError) as exc:
        raise classify(exc, engine.url) from None
    if need_schema and not installed:
        raise ConfigError(NOT_INSTALLED.format(url=safe_url(engine.url)),
                          code="SCHEMA_NOT_INSTALLED")

"""Create or upgrade the schema (``sqlbridge install``); safe to run any number of times.

SQLite: the tables come straight from the SQLAlchemy metadata.

SQL Server / Azure SQL / Babelfish: the scripts in ``sql/``, in order, split on ``GO`` lines,
each recorded in ``sqlbridge.schema_version`` with its SHA-256. Two kinds, as in Flyway:

- *versioned* scripts (``NNN_*.sql`` below 100: tables and indexes) run once; if an applied one
  has changed, install refuses and names it, because re-running DDL over live data is a
  decision for a person, not a tool;
- *repeatable* scripts (procedures, views, roles, and the engine script) are written to be
  re-run (stub-then-``ALTER``, drop-and-create views, idempotent grants) and are applied again
  whenever their checksum changes.

The engine script (``sql/engine/sqlserver.sql`` or ``babelfish.sql``) is picked by asking the
server for ``SERVERPROPERTY('BabelfishVersion')``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sqlalchemy import Connection, Engine, select, update

from .errors import ConfigError
from .schema import metadata, schema_version

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
VERSIONED = ("001_schema.sql",)
REPEATABLE = ("100_procedures.sql", "110_views.sql", "120_roles.sql")
_GO = re.compile(r"^\s*GO\s*;?\s*$", re.IGNORECASE | re.MULTILINE)


def ordered_scripts(babelfish: bool = False) -> list[str]:
    engine = "engine/babelfish.sql" if babelfish else "engine/sqlserver.sql"
    return [*VERSIONED, engine, *REPEATABLE]


def read(name: str, directory: Path = SQL_DIR) -> str:
    path = directory / name
    if not path.is_file():
        raise ConfigError(f"T-SQL script {path} is missing: install sqlbridge from a full "
                          "checkout or wheel that includes sql/")
    return path.read_text(encoding="utf-8")


def checksum(body: str) -> str:
    return hashlib.sha256(body.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def batches(body: str) -> list[str]:
    """The batches of a script, split on GO lines as sqlcmd and SSMS do."""
    return [b.strip() for b in _GO.split(body) if b.strip() and not _only_comments(b)]


def _only_comments(batch: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in batch.splitlines())


def install_script(babelfish: bool = False, directory: Path = SQL_DIR) -> str:
    """Everything ``install`` would run, as one script for a DBA to review and run in SSMS or
    sqlcmd; it records the same schema_version rows, so a later ``install`` sees it applied."""
    parts = [f"-- sqlbridge install script ({'Babelfish' if babelfish else 'SQL Server'}).\n"
             "-- Run in file order as one sqlcmd/SSMS script; every part is re-runnable.\n"]
    for name in ordered_scripts(babelfish):
        body = read(name, directory)
        digest = checksum(body)
        parts.append(f"-- ==== {name} ====\n{body.rstrip()}\nGO\n"
                     f"UPDATE sqlbridge.schema_version SET checksum = N'{digest}', "
                     f"applied_at = SYSUTCDATETIME() WHERE version = N'{name}';\n"
                     f"INSERT INTO sqlbridge.schema_version (version, checksum) "
                     f"SELECT N'{name}', N'{digest}' WHERE NOT EXISTS "
                     f"(SELECT 1 FROM sqlbridge.schema_version WHERE version = N'{name}');\nGO\n")
    return "\n".join(parts)


def _is_babelfish(conn: Connection) -> bool:
    value = conn.exec_driver_sql(
        "SELECT CAST(SERVERPROPERTY('BabelfishVersion') AS NVARCHAR(100))").scalar()
    return bool(value)


def _applied(conn: Connection) -> dict[str, str]:
    exists = conn.exec_driver_sql(
        "SELECT OBJECT_ID(N'sqlbridge.schema_version', N'U')").scalar()
    if exists is None:
        return {}
    return dict(conn.execute(select(schema_version.c.version, schema_version.c.checksum)).all())


def install(engine: Engine, directory: Path = SQL_DIR) -> list[str]:
    """Create whatever is missing; return the names of what was applied."""
    if engine.dialect.name == "sqlite":
        metadata.create_all(engine)
        return []  # create_all is its own idempotent check: nothing to record
    if engine.dialect.name != "mssql":
        raise ConfigError(f"sqlbridge install supports SQLite and SQL Server, not "
                          f"{engine.dialect.name}")
    with engine.connect() as conn:
        babelfish = _is_babelfish(conn)
        applied = _applied(conn)
    done: list[str] = []
    for name in ordered_scripts(babelfish):
        body = read(name, directory)
        digest = checksum(body)
        if applied.get(name) == digest:
            continue
        if name in VERSIONED and name in applied:
            raise ConfigError(
                f"{name} was applied with checksum {applied[name][:12]}… and has changed since "
                f"(now {digest[:12]}…). Versioned scripts are never re-run: restore the "
                "original file and put the change in a new numbered script")
        with engine.begin() as conn:
            for batch in batches(body):
                conn.exec_driver_sql(batch)
            if name in applied:
                conn.execute(update(schema_version).where(schema_version.c.version == name)
                             .values(checksum=digest))
            else:
                conn.execute(schema_version.insert().values(version=name, checksum=digest))
        done.append(name)
    return done

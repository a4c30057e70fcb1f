"""SQL expressions whose spelling differs per dialect.

Time is always the database server's UTC clock, never a worker's: leases, retries and
schedules compare against one clock however many worker hosts there are and however far their
clocks drift.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, literal

# SQLite has no datetime type; SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff". %f gives
# milliseconds ("SS.SSS"), so the three zeros make the server's own timestamps sort and parse
# exactly like the ones Python writes.
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f000"


class utcnow(FunctionElement[Any]):
    """Current UTC time on the database server, optionally moved by ``seconds``."""

    type = DateTime()
    inherit_cache = True
    name = "utcnow"

    def __init__(self, seconds: float | ColumnElement[Any] | None = None) -> None:
        args = [] if seconds is None else [
            seconds if isinstance(seconds, ColumnElement) else literal(float(seconds))
        ]
        super().__init__(*args)


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: Any, **kw: Any) -> str:
    args = list(element.clauses)
    if not args:
        return f"strftime('{_SQLITE_FORMAT}', 'now')"
    offset = compiler.process(args[0], **kw)
    return f"strftime('{_SQLITE_FORMAT}', 'now', ({offset}) || ' seconds')"


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: Any, **kw: Any) -> str:
    # SQL Server, Azure SQL and Babelfish.
    args = list(element.clauses)
    if not args:
        return "SYSUTCDATETIME()"
    offset = compiler.process(args[0], **kw)
    return f"DATEADD(millisecond, CAST(({offset}) * 1000 AS INT), SYSUTCDATETIME())"

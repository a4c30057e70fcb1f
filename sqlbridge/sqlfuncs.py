"""SQL expressions whose spelling differs per dialect.

Time is always the database server's UTC clock, never a worker's: leases, retries and
schedules compare against one clock however many worker hosts there are and however far their
clocks drift.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime, Float, Unicode
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, literal
from sqlalchemy.sql.selectable import Alias, TableClause

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
    # Whole seconds, then the milliseconds left: DATEADD's number is an INT, so milliseconds
    # alone overflow past 24.8 days (error 8115, e.g. purge --older-than 30d) while seconds
    # reach 68 years. FLOOR keeps the remainder in [0, 1) for negative offsets too.
    x = f"CAST(({compiler.process(args[0], **kw)}) AS FLOAT)"
    return (f"DATEADD(millisecond, CAST(ROUND(({x} - FLOOR({x})) * 1000, 0) AS INT), "
            f"DATEADD(second, CAST(FLOOR({x}) AS INT), SYSUTCDATETIME()))")


class IndexedBy(Alias):
    """``table AS name``, read through ``index`` on SQLite (``INDEXED BY``); a plain alias
    elsewhere.

    SQLite's planner has no statistics unless someone runs ANALYZE, and then prefers any index
    with an equality on ``status`` over the partial index that serves the claim's order; that
    choice sorts the whole backlog. Naming the index makes the plan the same on every
    database file (and fails loudly, "no such index", if install was skipped).
    """

    inherit_cache = True
    index: str

    @classmethod
    def of(cls, table: TableClause, name: str, index: str) -> IndexedBy:
        alias = cls._construct(table, name=name)
        alias.index = index
        return alias


@compiles(IndexedBy, "sqlite")
def _indexed_by_sqlite(element: IndexedBy, compiler: Any, **kw: Any) -> str:
    text = compiler.visit_alias(element, **kw)
    return f"{text} INDEXED BY {element.index}" if kw.get("asfrom") else text


def constant(value: str) -> ColumnElement[Any]:
    """A string rendered into the statement, not bound: a partial (filtered) index on
    ``status = 'queued'`` is used only when the query says the same constant. N'...' on SQL
    Server, where the filtered index's predicate is NVARCHAR."""
    return literal(value, Unicode(len(value)), literal_execute=True)


class epoch_now(FunctionElement[Any]):
    """The database server's clock as seconds since 1970-01-01 UTC (a float): arithmetic on
    it is plain addition on every dialect."""

    type = Float()
    inherit_cache = True
    name = "epoch_now"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(element: epoch_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(epoch_now)
def _epoch_now_default(element: epoch_now, compiler: Any, **kw: Any) -> str:
    # Whole minutes, then milliseconds into the minute, of one reading of the clock (a derived
    # table, so both parts see the same instant): one DATEDIFF in seconds or milliseconds
    # would overflow INT, and DATEDIFF_BIG is not everywhere.
    return ("(SELECT CAST(DATEDIFF(minute, '19700101', t.n) AS FLOAT) * 60.0 + "
            "DATEDIFF(millisecond, DATEADD(minute, DATEDIFF(minute, '19700101', t.n), "
            "CAST('19700101' AS DATETIME2(3))), t.n) / 1000.0 "
            "FROM (SELECT SYSUTCDATETIME() AS n) AS t)")


class unindexed(FunctionElement[Any]):
    """``column`` written so SQLite's planner cannot use an index for a condition on it (the
    unary ``+`` its documentation recommends); the plain column elsewhere."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + compiler.process(list(element.clauses)[0], **kw)


@compiles(unindexed)
def _unindexed_default(element: unindexed, compiler: Any, **kw: Any) -> str:
    return compiler.process(list(element.clauses)[0], **kw)

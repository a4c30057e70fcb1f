"""The queue figures an operator alerts on, as one SQLAlchemy query.

The same query is the ``sqlbridge.queue_health`` view on SQL Server (``tsql.py`` compiles it into
``120_views.sql``), what ``status --json`` prints and what the metrics endpoint exports, so the
three can never disagree. On SQLite there is no view: the query runs as it is.

Only the figures someone must act on: requests waiting (``queued``; ``due``: may be claimed
now), in flight (``processing``; ``stuck``: lease expired, recovery will settle them) and
``uncertain`` (a person must decide). ``failed`` rows are history, not load, and counting every
one of them on each sample would scan the whole table.

``oldest_queued_age_seconds`` is how long the oldest *due* request has waited since it became
claimable (its ``available_at``): a retry waiting out its back-off, or a request scheduled for
later with ``@not_before``, is not late, so it does not raise the figure.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from .schema import outbox
from .sqlfuncs import utcnow

LIVE = ("queued", "processing", "uncertain")
FIGURES = ("queued", "due", "processing", "stuck", "uncertain")


class seconds_since(FunctionElement[Any]):
    """Whole seconds from a timestamp to the database's current UTC time."""

    inherit_cache = True
    name = "seconds_since"

    def __init__(self, when: ColumnElement[Any]) -> None:
        super().__init__(when)


@compiles(seconds_since, "sqlite")
def _seconds_since_sqlite(element: seconds_since, compiler: Any, **kw: Any) -> str:
    when = compiler.process(list(element.clauses)[0], **kw)
    return f"CAST((julianday('now') - julianday({when})) * 86400 AS INTEGER)"


@compiles(seconds_since)
def _seconds_since_default(element: seconds_since, compiler: Any, **kw: Any) -> str:
    when = compiler.process(list(element.clauses)[0], **kw)
    return f"DATEDIFF(second, {when}, SYSUTCDATETIME())"


def _count(condition: Any) -> Any:
    return func.sum(case((condition, 1), else_=0))


def queue_health_select() -> Any:
    """One row per operation that has live requests: the figures in the module docstring."""
    status = outbox.c.status
    due = and_(status == "queued", outbox.c.available_at <= utcnow())
    return (
        select(
            outbox.c.operation.label("operation"),
            _count(status == "queued").label("queued"),
            _count(due).label("due"),
            _count(status == "processing").label("processing"),
            _count(and_(status == "processing", outbox.c.locked_until < utcnow()))
            .label("stuck"),
            _count(status == "uncertain").label("uncertain"),
            seconds_since(func.min(case((due, outbox.c.available_at))))
            .label("oldest_queued_age_seconds"),
        )
        .where(status.in_(LIVE))
        .group_by(outbox.c.operation)
    )


def queue_health(engine: Engine) -> list[dict[str, Any]]:
    """The rows of ``sqlbridge.queue_health`` (computed by the same query on every dialect)."""
    with engine.connect() as conn:
        rows = conn.execute(queue_health_select().order_by(outbox.c.operation)).all()
    out = []
    for r in rows:
        row = {"operation": r.operation, **{k: int(getattr(r, k) or 0) for k in FIGURES}}
        age = r.oldest_queued_age_seconds
        row["oldest_queued_age_seconds"] = None if age is None else max(0, int(age))
        out.append(row)
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-operation rows summed, with the oldest age over all operations."""
    ages = [r["oldest_queued_age_seconds"] for r in rows
            if r["oldest_queued_age_seconds"] is not None]
    return {**{k: sum(r[k] for r in rows) for k in FIGURES},
            "oldest_queued_age_seconds": max(ages) if ages else None}

"""Incoming chat messages handed to applications exactly once (``take_messages``).

Marking and returning happen in one statement, and concurrent consumers skip each other's rows
(``READPAST`` on SQL Server; SQLite's write lock serialises them), so every incoming message goes
to exactly one consumer, once, with no message lost between a read and a mark.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, bindparam, false, select, update
from sqlalchemy.dialects import mssql

from .errors import ValidationError
from .schema import chat_message as m
from .sqlfuncs import utcnow

_COLUMNS = (m.c.id, m.c.account, m.c.platform, m.c.platformid, m.c.destination, m.c.messageid,
            m.c.message, m.c.datetime, m.c.first_seen)


def _take_statement(limit: int) -> Any:
    pick = (select(m.c.id).where(m.c.taken_at.is_(None), m.c.sent == false())
            .order_by(m.c.id).limit(limit)
            .with_hint(m, "WITH (ROWLOCK, READPAST, UPDLOCK)", "mssql"))
    return (update(m).where(m.c.id.in_(pick.scalar_subquery()), m.c.taken_at.is_(None))
            .values(taken_at=utcnow(), taken_by=bindparam("consumer"))
            .returning(*_COLUMNS))


def take_messages(engine: Engine, consumer: str, limit: int = 100) -> list[dict[str, Any]]:
    """Up to ``limit`` incoming messages nobody has taken, now taken by ``consumer``."""
    if not consumer or len(consumer) > 200:
        raise ValidationError("consumer must be a name of 1 to 200 characters",
                              code="INVALID_ARGUMENT", param="consumer")
    if not 1 <= limit <= 10_000:
        raise ValidationError("limit must be from 1 to 10000", code="INVALID_ARGUMENT",
                              param="limit")
    # One statement, so the rows marked are exactly the rows returned: a consumer that crashes
    # after the commit has them (taken_by says who), none is half-taken.
    with engine.begin() as conn:
        rows = conn.execute(_take_statement(limit), {"consumer": consumer}).all()
    return sorted((dict(r._mapping) for r in rows), key=lambda r: r["id"])


def mssql_statements() -> dict[str, str]:
    """The take statement as SQL Server sees it (the T-SQL gate parses it)."""
    return {"take_messages": str(_take_statement(100).compile(dialect=mssql.dialect()))}

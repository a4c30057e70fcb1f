"""What the dashboard reads that the queue has no method for: SQLAlchemy Core selects on the
schema's tables, so the same code runs on SQLite and SQL Server. Nothing here writes: every
change goes through ``Queue``, ``operator_actions`` or ``sync``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select

from ..queue import _as_datetime
from ..schema import (
    anna_channel,
    anna_department,
    anna_user_request,
    chat,
    chat_channel,
    chat_message,
    operator_action,
    outbox,
)
from ..sqlfuncs import utcnow

HOURS = 24
MAX_CHILDREN_SHOWN = 200
MAX_ROWS = 500


def _rows(engine: Engine, stmt: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return _as_datetime(conn.execute(select(utcnow())).scalar_one())


def hourly(engine: Engine, hours: int = HOURS) -> dict[str, Any]:
    """Requests finished per hour over the last ``hours`` hours, succeeded and not, counted by
    the database in one statement (a SUM(CASE) per hour: no dialect-specific date truncation)."""
    now = db_now(engine)
    top = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    starts = [top - timedelta(hours=hours - i) for i in range(hours)]
    bad = outbox.c.status.in_(("failed", "uncertain"))
    columns = []
    for i, start in enumerate(starts):
        inside = and_(outbox.c.finished_at >= start,
                      outbox.c.finished_at < start + timedelta(hours=1))
        columns.append(func.sum(case((and_(inside, outbox.c.status == "succeeded"), 1),
                                     else_=0)).label(f"ok{i}"))
        columns.append(func.sum(case((and_(inside, bad), 1), else_=0)).label(f"bad{i}"))
    with engine.connect() as conn:
        row = conn.execute(select(*columns).where(outbox.c.finished_at >= starts[0])).one()
    m = row._mapping
    return {"starts": starts,
            "succeeded": [int(m[f"ok{i}"] or 0) for i in range(hours)],
            "failed": [int(m[f"bad{i}"] or 0) for i in range(hours)]}


def workers(engine: Engine) -> list[dict[str, Any]]:
    """Workers holding leases now, with how many rows each holds and when its lease ends: the
    closest thing to a heartbeat the outbox has (a worker renews its leases while it works)."""
    return _rows(engine, select(outbox.c.locked_by.label("worker"),
                                func.count().label("in_flight"),
                                func.max(outbox.c.locked_until).label("lease_until"))
                 .where(outbox.c.status == "processing")
                 .group_by(outbox.c.locked_by).order_by(outbox.c.locked_by))


def children(engine: Engine, request_id: int) -> tuple[int, list[dict[str, Any]]]:
    """The requests a sync run fanned out into: how many, and the first ones."""
    where = outbox.c.parent_id == request_id
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(outbox).where(where)).scalar()
        rows = conn.execute(select(outbox.c.id, outbox.c.operation, outbox.c.status,
                                   outbox.c.error_code, outbox.c.finished_at)
                            .where(where).order_by(outbox.c.id)
                            .limit(MAX_CHILDREN_SHOWN)).all()
    return int(total or 0), [dict(r._mapping) for r in rows]


def actions(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    return _rows(engine, select(operator_action).order_by(operator_action.c.id.desc())
                 .limit(limit))


# -- conversations ------------------------------------------------------------------------------

# Incoming (not sent by the account) and unread; a NULL ``sent`` counts as incoming.
_unread_in = and_(chat_message.c.unread == True,  # noqa: E712
                  or_(chat_message.c.sent == False, chat_message.c.sent.is_(None)))  # noqa: E712


def _same_chat() -> Any:
    return and_(chat_message.c.account == chat.c.account,
                chat_message.c.platform == chat.c.platform,
                chat_message.c.platformid == chat.c.platformid,
                chat_message.c.destination == chat.c.destination)


def channels(engine: Engine) -> list[dict[str, Any]]:
    """Channels with how many chats they have and how many incoming messages are unread."""
    chats = (select(func.count()).select_from(chat)
             .where(chat.c.account == chat_channel.c.account,
                    chat.c.platform == chat_channel.c.platform,
                    chat.c.platformid == chat_channel.c.platformid).scalar_subquery())
    unread = (select(func.count()).select_from(chat_message)
              .where(chat_message.c.account == chat_channel.c.account,
                     chat_message.c.platform == chat_channel.c.platform,
                     chat_message.c.platformid == chat_channel.c.platformid, _unread_in)
              .scalar_subquery())
    return _rows(engine, select(chat_channel, chats.label("chats"), unread.label("unread"))
                 .order_by(unread.desc(), chat_channel.c.account, chat_channel.c.platform,
                           chat_channel.c.platformid).limit(MAX_ROWS))


def channel(engine: Engine, channel_id: int) -> dict[str, Any] | None:
    rows = _rows(engine, select(chat_channel).where(chat_channel.c.id == channel_id))
    return rows[0] if rows else None


def chats(engine: Engine, ch: dict[str, Any]) -> list[dict[str, Any]]:
    """A channel's chats, those with unread incoming messages first, then the latest."""
    unread = (select(func.count()).select_from(chat_message)
              .where(_same_chat(), _unread_in).scalar_subquery())
    return _rows(engine, select(chat, unread.label("unread"))
                 .where(chat.c.account == ch["account"], chat.c.platform == ch["platform"],
                        chat.c.platformid == ch["platformid"])
                 .order_by(unread.desc(), chat.c.last_seen.desc(), chat.c.id.desc())
                 .limit(MAX_ROWS))


def chat_row(engine: Engine, chat_id: int) -> dict[str, Any] | None:
    rows = _rows(engine, select(chat).where(chat.c.id == chat_id))
    return rows[0] if rows else None


def chat_messages(engine: Engine, c: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat's latest messages in the order they were stored (oldest of them first)."""
    m = chat_message
    latest = _rows(engine, select(m).where(
        m.c.account == c["account"], m.c.platform == c["platform"],
        m.c.platformid == c["platformid"], m.c.destination == c["destination"])
        .order_by(m.c.id.desc()).limit(MAX_ROWS))
    return latest[::-1]


# -- AnnA ----------------------------------------------------------------------------------------

def anna(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    return {
        "departments": _rows(engine, select(anna_department).order_by(
            anna_department.c.account, anna_department.c.alias).limit(MAX_ROWS)),
        "channels": _rows(engine, select(anna_channel).order_by(
            anna_channel.c.account, anna_channel.c.department_alias, anna_channel.c.alias)
            .limit(MAX_ROWS)),
        "user_requests": _rows(engine, select(anna_user_request).order_by(
            anna_user_request.c.pending.desc(), anna_user_request.c.id.desc()).limit(MAX_ROWS)),
    }

"""Operator actions on sets of requests: list them, retry or cancel them in bulk, and record who
did so in ``operator_action``. The CLI (``sqlbridge list / retry / cancel``) and any future
dashboard call these functions; the T-SQL procedures ``sqlbridge.retry_requests`` and
``sqlbridge.cancel_requests`` (``tsql.py``) do the same from SQL.

A bulk action:

- works on the set as it stood when it began: relative times ("2h") are turned into database
  times once, and rows with an id above the largest id at the start are left alone, so a request
  enqueued during a bulk cancel is not caught by it;
- changes rows in chunks of ``CHUNK`` (one short transaction each), so a retry of a hundred
  thousand rows never holds locks that stall the workers' claims (SQL Server escalates to a
  table lock at about 5,000 row locks);
- repeats the single-request guard in every chunk (only ``queued`` rows are cancelled; only
  ``failed``, ``uncertain`` and ``cancelled`` rows are retried), so a row a worker claimed in the
  meantime is skipped, never moved twice;
- writes its audit row first (who, when, what filter) and its count last: an audit row with no
  ``finished_at`` is an action that stopped part-way.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from . import queue as q
from .errors import InvalidState, RequestNotFound, ValidationError
from .schema import STATUSES, operator_action, outbox
from .sqlfuncs import utcnow

CHUNK = 500
MAX_LIMIT = 1000
ACTIONS = {"retry": q.RETRYABLE, "cancel": q.CANCELLABLE}
BULK_CANCEL_MESSAGE = "cancelled by an operator"
LIST_COLUMNS = ("id", "operation", "account", "status", "attempts", "http_status",
                "error_code", "correlation", "created_at", "finished_at")
MAX_AGE_SECONDS = 100 * 365.25 * 86400
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A moment: an absolute UTC time, or an age in seconds (that long before the database's now).
Moment = datetime | float


def _text(value: str, what: str) -> None:
    """Refuse what no database column can hold: lone surrogates (undecodable bytes in a
    command-line argument arrive as those)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid text (it holds bytes that are not UTF-8)",
                              code="INVALID_ARGUMENT", param=what) from None


def _is_age(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_moment(text: str, what: str) -> Moment:
    """'2h', '30m', '7d', '45s' (that long ago) or an ISO time in UTC ('2026-01-31 08:00')."""
    m = _AGE.match(text)
    if m:
        age = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if age > MAX_AGE_SECONDS:
            raise ValidationError(f"{what} {text!r} is more than 100 years ago",
                                  code="INVALID_ARGUMENT", param=what)
        return age
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(f"{what} {text!r} is neither an age (45s, 30m, 2h, 7d) nor a UTC "
                              "time (2026-01-31 08:00)", code="INVALID_ARGUMENT",
                              param=what) from None
    if when.tzinfo is not None:
        when = (when - when.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
    return when


@dataclass(frozen=True)
class Selection:
    """Which requests: every field given must match (lists match any of their values)."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    operations: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    correlation: str | None = None
    error_codes: tuple[str, ...] = ()
    created_after: Moment | None = None
    created_before: Moment | None = None
    finished_after: Moment | None = None
    finished_before: Moment | None = None
    # Set by resolve(): the largest id when the action began.
    max_id: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        bad = [s for s in self.statuses if s not in STATUSES]
        if bad:
            raise ValidationError(f"status {bad[0]!r} is not a status; allowed: "
                                  f"{', '.join(STATUSES)}", code="INVALID_ARGUMENT",
                                  param="status")
        for name in ("operations", "accounts", "error_codes"):
            for value in getattr(self, name):
                what = name[:-1].replace("_", " ")
                if not value or len(value) > 200:
                    raise ValidationError(f"{what} must be 1 to 200 characters",
                                          code="INVALID_ARGUMENT", param=name)
                _text(value, what)
        if self.correlation is not None:
            if not 1 <= len(self.correlation) <= 400:
                raise ValidationError("correlation must be 1 to 400 characters",
                                      code="INVALID_ARGUMENT", param="correlation")
            _text(self.correlation, "correlation")
        for name in ("created_after", "created_before", "finished_after", "finished_before"):
            value = getattr(self, name)
            if _is_age(value) and not 0 <= value <= MAX_AGE_SECONDS:
                raise ValidationError(f"{name} must be an age from 0 to 100 years",
                                      code="INVALID_ARGUMENT", param=name)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "max_id")

    def conditions(self) -> list[Any]:
        c = outbox.c
        out: list[Any] = []
        if self.ids:
            out.append(c.id.in_(self.ids))
        if self.statuses:
            out.append(c.status.in_(self.statuses))
        if self.operations:
            out.append(c.operation.in_([o.strip().lower() for o in self.operations]))
        if self.accounts:
            out.append(c.account.in_(self.accounts))
        if self.correlation is not None:
            out.append(c.correlation == self.correlation)
        if self.error_codes:
            out.append(c.error_code.in_(self.error_codes))
        for name, column, after in (("created_after", c.created_at, True),
                                    ("created_before", c.created_at, False),
                                    ("finished_after", c.finished_at, True),
                                    ("finished_before", c.finished_at, False)):
            moment = getattr(self, name)
            if moment is None:
                continue
            if _is_age(moment):
                raise ValueError("resolve() the selection first: ages become database times")
            out.append(column >= moment if after else column < moment)
        if self.max_id is not None:
            out.append(c.id <= self.max_id)
        return out

    def resolve(self, engine: Engine) -> Selection:
        """Ages as database times, and the largest id now: the set as it stands. Ages are
        subtracted here, in Python, from the database's clock: SQL Server's DATEADD counts
        milliseconds in an INT, which overflows past 24 days."""
        with engine.connect() as conn:
            now, max_id = conn.execute(select(utcnow(), func.max(outbox.c.id))).one()
        now = q._as_datetime(now)
        moments = {name: (now - timedelta(seconds=value) if _is_age(value) else value)
                   for name in ("created_after", "created_before", "finished_after",
                                "finished_before")
                   if (value := getattr(self, name)) is not None}
        return replace(self, max_id=int(max_id or 0), **moments)

    def describe(self) -> dict[str, Any]:
        """The selection as JSON-able values, for the audit row and --dry-run."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if isinstance(value, datetime):
                value = value.isoformat(sep=" ")
            elif f.name.endswith(("_after", "_before")) and _is_age(value):
                value = f"{value:g} s ago"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def default_actor() -> str:
    """Who is acting, for the audit row: the OS user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:200]


def list_requests(engine: Engine, sel: Selection, *, limit: int = 50,
                  offset: int = 0) -> dict[str, Any]:
    """One page of matching requests, newest first, and how many match in all."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be from 1 to {MAX_LIMIT}", code="INVALID_ARGUMENT",
                              param="limit")
    if offset < 0:
        raise ValidationError("offset must be 0 or more", code="INVALID_ARGUMENT",
                              param="offset")
    where = sel.resolve(engine).conditions()
    columns = [outbox.c[name] for name in LIST_COLUMNS]
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(outbox).where(*where)).scalar()
        rows = conn.execute(select(*columns).where(*where).order_by(outbox.c.id.desc())
                            .limit(limit).offset(offset)).all()
    return {"total": int(total or 0), "limit": limit, "offset": offset,
            "requests": [dict(r._mapping) for r in rows]}


def _guard(action: str) -> Any:
    if action not in ACTIONS:
        raise ValidationError(f"action must be one of {', '.join(ACTIONS)}",
                              code="INVALID_ARGUMENT", param="action")
    return outbox.c.status.in_(ACTIONS[action])


def count(engine: Engine, action: str, sel: Selection) -> int:
    """How many requests ``action`` would change now (``--dry-run``)."""
    where = sel.resolve(engine).conditions()
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox)
                                .where(*where, _guard(action))).scalar() or 0)


def _check(action: str, sel: Selection, allow_all: bool) -> None:
    _guard(action)
    if sel.empty and not allow_all:
        raise ValidationError(f"{action} needs a request id or at least one filter (--status, "
                              "--operation, --account, --correlation, --error-code, --since, "
                              "...); to act on every request, say --all",
                              code="INVALID_ARGUMENT", param="filter")
    wrong = [s for s in sel.statuses if s not in ACTIONS[action]]
    if wrong:
        raise ValidationError(f"{action} applies to {', '.join(ACTIONS[action])} requests; "
                              f"--status {wrong[0]} can never match", code="INVALID_ARGUMENT",
                              param="status")


def apply(engine: Engine, action: str, sel: Selection, *, actor: str | None = None,
          via: str = "cli", allow_all: bool = False) -> int:
    """Retry or cancel every request the selection matches (see the module docstring);
    return how many changed."""
    _check(action, sel, allow_all)
    sel = sel.resolve(engine)
    changes = (q.retry_changes() if action == "retry"
               else q.cancel_changes(BULK_CANCEL_MESSAGE))
    guard = _guard(action)
    with engine.begin() as conn:
        audit_id = conn.execute(insert(operator_action).values(
            action=action, actor=(actor or default_actor())[:200], via=via,
            criteria=json.dumps(sel.describe(), ensure_ascii=False, sort_keys=True))
            .returning(operator_action.c.id)).scalar_one()
    changed, last = 0, 0
    while True:
        with engine.begin() as conn:
            ids = conn.execute(select(outbox.c.id)
                               .where(*sel.conditions(), guard, outbox.c.id > last)
                               .order_by(outbox.c.id).limit(CHUNK)).scalars().all()
            if not ids:
                break
            changed += conn.execute(update(outbox).where(outbox.c.id.in_(ids), guard)
                                    .values(**changes)).rowcount
        last = ids[-1]
    with engine.begin() as conn:
        conn.execute(update(operator_action).where(operator_action.c.id == audit_id)
                     .values(finished_at=utcnow(), matched=changed))
    return changed


def apply_one(engine: Engine, action: str, request_id: int, *,
              actor: str | None = None, via: str = "cli") -> None:
    """Retry or cancel one request (recorded like a bulk action); say why when it cannot."""
    if apply(engine, action, Selection(ids=(request_id,)), actor=actor, via=via) == 1:
        return
    with engine.connect() as conn:
        status = conn.execute(select(outbox.c.status)
                              .where(outbox.c.id == request_id)).scalar()
    if status is None:
        raise RequestNotFound(f"request {request_id} does not exist")
    rule = ("only failed, uncertain or cancelled requests can be retried" if action == "retry"
            else "only queued requests can be cancelled (a request being sent cannot be "
            "called back)")
    raise InvalidState(f"request {request_id} is {status}; {rule}")


def record(engine: Engine, action: str, criteria: dict[str, Any], *, actor: str, via: str,
           matched: int) -> None:
    """Record an operator action that is not a retry or cancel (a schedule's run-now, enable,
    disable from the dashboard) in the same audit table, finished at once."""
    with engine.begin() as conn:
        conn.execute(insert(operator_action).values(
            action=action[:20], actor=actor[:200], via=via[:20],
            criteria=json.dumps(criteria, ensure_ascii=False, sort_keys=True),
            finished_at=utcnow(), matched=matched))


def history(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest operator actions, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(operator_action).order_by(operator_action.c.id.desc())
                            .limit(limit)).all()
    return [dict(r._mapping) for r in rows]

"""The outbox state machine: every database statement the queue needs, and nothing else.

The worker, the CLI and the scheduler talk to ``Queue``; none of them sees SQL. Each state change
is one statement guarded by the state it expects, so two workers, an operator and a timed-out
lease can never move the same row twice:

- claim: ``UPDATE … SET status='processing' … WHERE id IN (SELECT TOP (n) id … WITH (ROWLOCK,
  READPAST, UPDLOCK) …) AND status='queued' OUTPUT inserted.*`` on SQL Server (the form Babelfish
  also accepts; there the hints are ignored and claims serialise, which is correct, only slower);
  ``UPDATE … RETURNING`` inside ``BEGIN IMMEDIATE`` on SQLite.
- every later change of a claimed row is fenced by its lease token: a worker that lost its lease
  (it stalled, the row was recovered and claimed again) can no longer write to the row.
- expired leases are recovered by the workers themselves (no separate reaper to forget): reads
  go back to the queue, sends become ``uncertain`` because nobody knows whether they left.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.sql.util import ClauseAdapter

from . import breaker, delivery, gates, idempotency, registry
from .config import Settings
from .durations import MAX_AGE_SECONDS
from .errors import ConfigError, InvalidState, RequestNotFound, ValidationError
from .schema import FINISHED, outbox, outbox_attempt
from .sqlfuncs import IndexedBy, constant, unindexed, utcnow

log = logging.getLogger("sqlbridge.queue")
CLAIM_HINT = "WITH (ROWLOCK, READPAST, UPDLOCK)"
PURGEABLE = ("succeeded", "failed", "cancelled")
# Requests deleted per purge transaction: small enough that claims never wait long behind it.
PURGE_BATCH = 500
# The ids of a batch travel as parameters: SQL Server takes at most 2,100 per statement.
PURGE_BATCH_MAX = 2000
# Longest pause between purge batches (each pause lasts as long as the batch took, up to this).
PURGE_PAUSE_MAX = 0.2
# outbox.priority is an INT on SQL Server.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1

_CLAIM_COLUMNS = (
    outbox.c.id, outbox.c.request_key, outbox.c.account, outbox.c.provider, outbox.c.operation,
    outbox.c.params, outbox.c.priority, outbox.c.attempts, outbox.c.max_attempts,
    outbox.c.lease_token, outbox.c.correlation, outbox.c.parent_id, outbox.c.schedule_id,
)


@dataclass(frozen=True)
class Claimed:
    """A row this worker holds the lease of."""

    id: int
    request_key: str | None
    account: str
    provider: str | None
    operation: str
    params: str
    priority: int
    attempts: int
    max_attempts: int
    lease_token: str
    correlation: str | None
    parent_id: int | None
    schedule_id: int | None


@dataclass
class Completion:
    """What one attempt came to; written back by ``Queue.finish`` in a batch."""

    id: int
    lease_token: str
    attempt: int
    # succeeded | failed | uncertain | queued (a retry)
    status: str
    started_at: datetime
    duration_ms: int
    worker: str
    provider: str | None = None
    http_status: int | None = None
    response: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_in: float | None = None
    # (lands_in, account, params, records) for the inbox writer, in the same transaction.
    inbox: tuple[str, str, dict[str, Any], list[dict[str, Any]]] | None = None
    # Child requests to enqueue in the same transaction (sync fan-out): enqueue() kwargs.
    followups: list[dict[str, Any]] = field(default_factory=list)
    # The claim this attempt ran for: operation/account/max_attempts for the log line.
    claim: Claimed | None = None
    # What the attempt said about the API, for its circuit breaker: breaker.UP, breaker.DOWN
    # or None (nothing learned).
    api_signal: str | None = None


# Fields a request may carry in enqueue_many / ``enqueue --file``.
REQUEST_FIELDS = ("operation", "params", "account", "priority", "request_key", "correlation",
                  "not_before", "max_attempts", "provider")
# Rows per transaction in enqueue_many: large enough that commits do not dominate, small
# enough that a chunk's keys and ids stay a few hundred kB.
BULK_CHUNK = 2000
_REQUEST_FIELD_SET = frozenset(REQUEST_FIELDS)
_BULK_COLUMNS = ("request_key", "account", "provider", "operation", "params", "priority",
                 "max_attempts", "correlation", "parent_id", "schedule_id")
_INT_RANGE = (-2_147_483_648, 2_147_483_647)  # SQL Server INT


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(request: Mapping[str, Any], name: str, kind: type, *, required: bool = False,
           max_length: int | None = None) -> Any:
    """``request[name]`` if it has the right JSON type (None when absent), else a clear
    ValidationError."""
    value = request.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required", code="INVALID_ARGUMENT", param=name)
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) \
                or not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ValidationError(f"{name} must be a whole number from {_INT_RANGE[0]:,} to "
                                  f"{_INT_RANGE[1]:,}; got {_shown(value)}",
                                  code="INVALID_ARGUMENT", param=name)
    elif not isinstance(value, kind):
        raise ValidationError(f"{name} must be text; got {_shown(value)}",
                              code="INVALID_ARGUMENT", param=name)
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"{name} must be at most {max_length} characters",
                              code="INVALID_ARGUMENT", param=name)
    return value


def _same_or_conflict(row: dict[str, Any], stored: tuple[str, str, str], found: int | None
                      ) -> None:
    """A repeated request_key is the same request again (its id is returned), or an
    IDEMPOTENCY_CONFLICT (``idempotency``'s rule, which the procedures share)."""
    where = f"request {found}" if found is not None else "an earlier line of this input"
    idempotency.check(row["request_key"], stored,
                      (row["operation"], row["account"], row["params"]), where)


def _timestamp(text: str) -> datetime:
    """An ISO 8601 time as naive UTC (the database's clock); a time without an offset is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"not_before must be an ISO 8601 time such as "
                              f"2026-05-01T08:00:00Z; got {_shown(text)}",
                              code="INVALID_ARGUMENT", param="not_before") from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True)
class EnqueueResult:
    id: int
    created: bool  # False when request_key matched an existing request


def _utc_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _as_datetime(value: Any) -> datetime:
    # SQLite hands back an expression's text unparsed; SQL Server a datetime.
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _check_unicode(params: Any, **texts: str | None) -> None:
    """Refuse text no database can store (lone surrogates, e.g. from a JSON ``"\\ud800"``) at
    enqueue, naming the field, instead of failing inside the INSERT."""
    for name, value in {**texts, "params": _json(params)}.items():
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{name} holds a lone surrogate (not valid Unicode text); "
                                  "only valid UTF-8 text can be queued",
                                  code="INVALID_PARAM_TYPE", param=name) from None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _queued(index: str) -> Any:
    """The outbox read through one of the partial indexes on queued rows (see schema.py)."""
    return IndexedBy.of(outbox, "q", index)


def _claim_statement(limit: int, scope: Any = None, capped: int = 0,
                     probe: bool = False) -> Any:
    # Built once per shape (building it cost more CPU than running it; constructs are
    # immutable, so sharing them is safe); a scoped claim is built each time.
    return _claim_for(limit, capped, probe) if scope is None else \
        _build_claim(limit, scope, capped, probe)


@functools.lru_cache(maxsize=256)
def _claim_for(limit: int, capped: int = 0, probe: bool = False) -> Any:
    return _build_claim(limit, None, capped, probe)


def _build_claim(limit: int, scope: Any, capped: int = 0, probe: bool = False) -> Any:
    # ``scope``: an extra condition on outbox columns (``sqlbridge sync`` claims only its own
    # run's rows). Walks ix_outbox_claim_order in the claim's order and stops after ``limit``
    # due rows: the cost does not grow with the backlog (tests/test_backlog.py checks the plan).
    # The gates (sqlbridge.gates): rows of an open circuit breaker are skipped, unless this is
    # that key's probe (``probe``: only the key bound as probe_account/probe_provider);
    # ``capped`` keys (bound as cap{i}_account/_provider/cap_room{i}) are skipped when full
    # and trimmed to their room.
    q = _queued("ix_outbox_claim_order")
    extra = [] if scope is None else [ClauseAdapter(q).traverse(scope)]
    provider = gates.row_provider(q)
    extra.append(gates.key_is(q, provider, "probe") if probe
                 else gates.breaker_clear(q, provider))
    extra += [gates.not_full(q, provider, i) for i in range(capped)]
    columns = [q.c.id] + ([q.c.account, provider.label("prov"), q.c.priority] if capped else [])
    pick = (
        select(*columns)
        .where(q.c.status == constant("queued"), q.c.available_at <= utcnow(), *extra)
        .order_by(q.c.priority.desc(), q.c.id)
        .limit(limit)
        .with_hint(q, CLAIM_HINT, "mssql")
    )
    ids = gates.within_room(pick, capped) if capped else pick.scalar_subquery()
    return (
        update(outbox)
        # The status check again (Babelfish ignores the locking hints: this is what stops two
        # claims taking one row there), written so no index can serve it on SQLite, whose
        # planner would otherwise walk every queued row of ix_outbox_status_finished instead
        # of looking up the picked ids by primary key.
        .where(outbox.c.id.in_(ids),
               unindexed(outbox.c.status) == "queued")
        .values(
            status="processing",
            locked_by=bindparam("worker"),
            locked_until=utcnow(bindparam("lease", type_=None)),
            lease_token=bindparam("token"),
            attempts=outbox.c.attempts + 1,
            started_at=func.coalesce(outbox.c.started_at, utcnow()),
        )
        .returning(*_CLAIM_COLUMNS)
    )


def _adopt_statement() -> Any:
    return select(*_CLAIM_COLUMNS).where(outbox.c.lease_token == bindparam("token"),
                                         outbox.c.status == "processing")


@functools.cache
def _finish_statement() -> Any:
    terminal = bindparam("terminal")
    return (
        update(outbox)
        .where(
            outbox.c.id == bindparam("b_id"),
            outbox.c.lease_token == bindparam("b_token"),
            outbox.c.status == "processing",
        )
        .values(
            status=bindparam("b_status"),
            provider=func.coalesce(outbox.c.provider, bindparam("b_provider")),
            http_status=bindparam("b_http_status"),
            response=bindparam("b_response"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            finished_at=case((terminal == 1, utcnow()), else_=None),
            available_at=case((terminal == 1, outbox.c.available_at),
                              else_=utcnow(bindparam("b_retry_in"))),
            locked_by=None,
            locked_until=None,
            lease_token=None,
        )
    )


def _finish_params(c: Completion) -> dict[str, Any]:
    return {"b_id": c.id, "b_token": c.lease_token, "b_status": c.status,
            "b_provider": c.provider, "b_http_status": c.http_status, "b_response": c.response,
            "b_error_code": c.error_code, "b_error_message": c.error_message,
            "terminal": 0 if c.status == "queued" else 1, "b_retry_in": float(c.retry_in or 0)}


@functools.cache
def _held_statement() -> Any:
    # Built once, the ids bound as one expanding parameter: building the IN list anew for
    # every batch cost a fifth of the finish (statement and cache key construction).
    return (select(outbox.c.id, outbox.c.lease_token)
            .where(outbox.c.id.in_(bindparam("ids", expanding=True)),
                   outbox.c.status == "processing")
            .with_hint(outbox, "WITH (UPDLOCK, ROWLOCK)", "mssql"))


def _held(conn: Connection, completions: Sequence[Completion]) -> set[int]:
    """Ids of the completions whose row this worker still holds (status 'processing' with
    its lease token), locked until the transaction ends (UPDLOCK on SQL Server; SQLite's
    BEGIN IMMEDIATE already holds the write lock), so the batch UPDATE matches exactly these."""
    tokens = {c.id: c.lease_token for c in completions}
    ids = list(tokens)
    held: set[int] = set()
    for i in range(0, len(ids), 1000):  # SQL Server takes at most 2,100 parameters
        rows = conn.execute(_held_statement(), {"ids": ids[i:i + 1000]})
        held.update(rid for rid, token in rows if token is not None and token == tokens[rid])
    return held


@functools.cache
def _renew_statement() -> Any:
    return (
        update(outbox)
        .where(outbox.c.lease_token == bindparam("token"), outbox.c.status == "processing")
        .values(locked_until=utcnow(bindparam("lease")))
    )


def _release_statement() -> Any:
    return (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.lease_token == bindparam("b_token"),
               outbox.c.status == "processing")
        .values(status="queued", attempts=outbox.c.attempts - 1, locked_by=None,
                locked_until=None, lease_token=None)
    )


def _lease_gone() -> Any:
    # A row can reach 'processing' with no lease at all (INSERTed so by hand, a tool's bug):
    # nobody will ever renew it, so it counts as expired.
    return or_(outbox.c.locked_until.is_(None), outbox.c.locked_until < utcnow())


def _expired_ids_statement() -> Any:
    # Ids only: a row's text may be unreadable (see Queue.isolate_unreadable).
    return select(outbox.c.id).where(outbox.c.status == "processing", _lease_gone())


def _expired_statement() -> Any:
    return select(
        outbox.c.id, outbox.c.account, outbox.c.provider, outbox.c.operation, outbox.c.params,
        outbox.c.attempts, outbox.c.max_attempts, outbox.c.lease_token, outbox.c.locked_by,
    ).where(outbox.c.status == "processing", _lease_gone())


def _recover_statement() -> Any:
    terminal = bindparam("terminal")
    return (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"),
               func.coalesce(outbox.c.lease_token, "") == bindparam("b_token"),
               outbox.c.status == "processing", _lease_gone())
        .values(
            status=bindparam("b_status"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            finished_at=case((terminal == 1, utcnow()), else_=None),
            available_at=utcnow(),
            locked_by=None, locked_until=None, lease_token=None,
        )
    )


def _unreadable_statement() -> Any:
    """Fail one row by id without reading its text (it cannot be read)."""
    return (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.status.in_(("queued", "processing")))
        .values(status="failed", error_code="UNREADABLE_ROW",
                error_message=bindparam("b_error_message"), finished_at=utcnow(),
                locked_by=None, locked_until=None, lease_token=None)
    )


# Driver messages that blame a value, not the connection (SQLite's decoder; SQL Server's
# truncation 8152/2628, conversion 241/245, overflow 8115).
_DATA_ERROR_HINTS = ("could not decode", "utf-8", "utf-16", "would be truncated",
                     "conversion failed", "arithmetic overflow")


def is_data_error(exc: BaseException) -> bool:
    """True when a statement failed on a row's content (text that is not valid UTF-8/UTF-16,
    a date that is not a date) rather than on the database being unreachable."""
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in seen:
        seen.append(cause)
        if isinstance(cause, UnicodeError | ValueError | TypeError | OverflowError | DataError):
            return True
        if isinstance(cause, DBAPIError) and getattr(cause, "connection_invalidated", False):
            return False
        text = str(getattr(cause, "orig", cause)).lower()
        if any(hint in text for hint in _DATA_ERROR_HINTS):
            return True
        cause = getattr(cause, "orig", None) or cause.__cause__
    return False


def _unreadable_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(getattr(exc, 'orig', None) or exc)[:120]}"


def _claimed(row: Any) -> Claimed:
    """A claimed row as the worker uses it; ``TypeError``/``ValueError`` when a number
    column holds something else (SQLite keeps whatever was INSERTed)."""
    values = dict(row._mapping)
    for name in ("priority", "attempts", "max_attempts"):
        values[name] = _whole(name, values[name])
    return Claimed(**values)


_INT_MAX = 2**31 - 1  # the columns are INTEGER (32 bits on SQL Server)


def _whole(name: str, value: Any) -> int:
    """``value`` as an int within the column's range, else ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} is {str(value)[:40]!r}, not a whole number")
    if not math.isfinite(value) or value != int(value) or abs(value) > _INT_MAX:
        raise ValueError(f"{name} is {value!r}, not a whole number in range")
    return int(value)


def _fail_unreadable_in(conn: Any, bad: list[tuple[int, str]]) -> int:
    """Fail each row by id with UNREADABLE_ROW, never reading its text; how many."""
    failed = 0
    for rid, reason in bad:
        text = (f"request {rid} cannot be read ({reason}): a column holds bytes that "
                "are not valid text or a value of the wrong type, so it was failed "
                "without being sent; fix or delete the row")
        if conn.execute(_unreadable_statement(),
                        {"b_id": rid, "b_error_message": text}).rowcount:
            failed += 1
            conn.execute(_attempt_statement(), [{
                "request_id": rid, "attempt": 0, "started_at": _utc_naive(),
                "duration_ms": None, "http_status": None, "outcome": "failed",
                "error_code": "UNREADABLE_ROW", "error_message": text,
                "worker": None}])
    return failed


@functools.cache
def _attempt_statement() -> Any:
    return insert(outbox_attempt)


def _outcome(c: Completion) -> str:
    """The attempt row's outcome for a completion that was written."""
    return "retry" if c.status == "queued" else c.status


def _recorded(conn: Connection, c: Completion) -> str | None:
    """The outcome of this completion's own attempt row, if a commit already wrote it.

    (request, attempt number, worker) names one attempt: the claim increments the number
    and the worker id is unique per process. ``lost_lease`` rows written by lease recovery
    carry the lost worker's id too; either way the attempt is already on record."""
    found = conn.execute(
        select(outbox_attempt.c.outcome).where(
            outbox_attempt.c.request_id == c.id, outbox_attempt.c.attempt == c.attempt,
            outbox_attempt.c.worker == c.worker,
            outbox_attempt.c.outcome.in_((_outcome(c), "lost_lease")))
        .order_by(outbox_attempt.c.id.desc()).limit(1)).scalar()
    return found


def mssql_statements() -> dict[str, str]:
    """The statements the worker sends to SQL Server, as SQL Server will see them.

    The test suite parses these with Microsoft's T-SQL grammar, so a dialect change in SQLAlchemy
    or a careless edit here fails CI on a machine with no SQL Server.
    """
    dialect = mssql.dialect()
    statements = {
        "claim": _claim_statement(10),
        "claim_capped": _claim_statement(10, capped=2),
        "claim_probe": _claim_statement(1, probe=True),
        "adopt": _adopt_statement(),
        "finish": _finish_statement(),
        "finish_held": _held_statement(),
        "renew": _renew_statement(),
        "release": _release_statement(),
        "expired": _expired_statement(),
        "recover": _recover_statement(),
        "unreadable": _unreadable_statement(),
        "attempt": _attempt_statement().values(
            request_id=1, attempt=1, started_at=bindparam("s"), duration_ms=1, http_status=200,
            outcome="succeeded", error_code=None, error_message=None, worker="w"),
        "cancel": _cancel_statement(),
        "retry": _retry_statement(),
        **_purge_statements(Queue._purgeable(86400, PURGEABLE), [1, 2], PURGE_BATCH),
    }
    return {name: str(stmt.compile(dialect=dialect)) for name, stmt in statements.items()}


def _purge_statements(old: Any, ids: Sequence[int], batch: int) -> dict[str, Any]:
    """One purge batch: pick at most ``batch`` old ids, delete their attempts, then them.

    The pick locks its rows until the batch commits (SQL Server: UPDLOCK, skipping rows others
    hold; SQLite: the transaction's write lock), so no retry can slip in between and the
    deletes go by primary key alone. No ORDER BY, and no age condition on the deletes: either
    made every batch cost as much as the whole backlog (scripts/bench_purge.py)."""
    return {
        "purge_pick": select(outbox.c.id).where(old).limit(batch)
        .with_hint(outbox, "WITH (UPDLOCK, ROWLOCK, READPAST)", "mssql"),
        "purge_attempts": delete(outbox_attempt).where(outbox_attempt.c.request_id.in_(ids)),
        "purge_requests": delete(outbox).where(outbox.c.id.in_(ids)),
    }


# The operator transitions: which statuses each may leave, and what it writes. Used by the
# single-request statements below, the bulk actions (sqlbridge.operator_actions) and the T-SQL
# procedures generated from them.
CANCELLABLE = ("queued",)
RETRYABLE = ("failed", "uncertain", "cancelled")


def cancel_changes(message: Any) -> dict[str, Any]:
    return {"status": "cancelled", "finished_at": utcnow(), "error_code": "CANCELLED",
            "error_message": message}


def retry_changes() -> dict[str, Any]:
    return {"status": "queued", "attempts": 0, "available_at": utcnow(), "finished_at": None,
            "error_code": None, "error_message": None, "http_status": None}


def _cancel_statement() -> Any:
    return (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.status.in_(CANCELLABLE))
        .values(**cancel_changes(bindparam("b_message")))
    )


def _retry_statement() -> Any:
    return (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.status.in_(RETRYABLE))
        .values(**retry_changes())
    )


class _NothingToProbe(Exception):
    """A probe claim found nothing to probe: its transaction is rolled back."""


class Queue:
    """Every outbox operation, as one statement each (see the module docstring)."""

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self._babelfish: bool | None = None  # asked once, by the first bulk insert
        # render_as_string: str(url) prints the password as *** and would not connect.
        self.settings = settings or Settings(
            database_url=engine.url.render_as_string(hide_password=False))
        # The claim's gates, shared with every other worker through the database.
        self.caps = gates.Caps(engine, gates.caps_of(self.settings))
        self.breakers = breaker.Breakers(engine, self.settings)

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(self, operation: str, params: Mapping[str, Any] | str | None = None, *,
                account: str = "default", priority: int = 0, request_key: str | None = None,
                correlation: str | None = None, not_before: datetime | None = None,
                max_attempts: int | None = None, parent_id: int | None = None,
                schedule_id: int | None = None, provider: str | None = None,
                conn: Connection | None = None) -> EnqueueResult:
        """Validate and store one request; the same ``request_key`` again returns the first."""
        row = self._row(operation, params, account=account, priority=priority,
                        request_key=request_key, correlation=correlation,
                        not_before=not_before, max_attempts=max_attempts, parent_id=parent_id,
                        schedule_id=schedule_id, provider=provider)
        if conn is not None:
            return self._insert(conn, row)
        try:
            with self.engine.begin() as c:
                return self._insert(c, row)
        except IntegrityError:
            # Another caller inserted the same request_key between our look and our insert.
            if request_key is None:
                raise
            with self.engine.begin() as c:
                found = self._same_request(c, row)
            if found is None:
                raise
            return EnqueueResult(found, False)

    def _row(self, operation: str, params: Mapping[str, Any] | str | None, *, account: str,
             priority: int, request_key: str | None, correlation: str | None,
             not_before: datetime | None, max_attempts: int | None, parent_id: int | None,
             schedule_id: int | None, provider: str | None) -> dict[str, Any]:
        op, clean = registry.validate(operation, params, provider)
        if not account or len(account) > 100:
            raise ValidationError("account must be a name of 1 to 100 characters",
                                  code="INVALID_ARGUMENT", param="account")
        if max_attempts is not None and not 1 <= max_attempts <= 100:
            raise ValidationError("max_attempts must be from 1 to 100", code="INVALID_ARGUMENT",
                                  param="max_attempts")
        if request_key is not None and not 1 <= len(request_key) <= 200:
            raise ValidationError("request_key must be 1 to 200 characters",
                                  code="INVALID_ARGUMENT", param="request_key")
        if correlation is not None and len(correlation) > 400:
            # The column is NVARCHAR(400): SQLite would keep more, SQL Server refuse the row.
            raise ValidationError("correlation must be at most 400 characters",
                                  code="INVALID_ARGUMENT", param="correlation")
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValidationError(f"priority must be a whole number from {PRIORITY_MIN} to "
                                  f"{PRIORITY_MAX}", code="INVALID_ARGUMENT", param="priority")
        _check_unicode(clean, account=account, request_key=request_key,
                       correlation=correlation)
        row: dict[str, Any] = {
            "request_key": request_key,
            "account": account,
            "provider": op.provider,
            "operation": op.name,
            "params": _json(clean),
            "priority": int(priority),
            "correlation": correlation,
            "parent_id": parent_id,
            "schedule_id": schedule_id,
        }
        if not_before is not None:
            row["available_at"] = not_before
        # 0: "the worker's setting" (max_attempts_of), stored explicitly so an old SQLite
        # file whose column still defaults to 5 means the same.
        row["max_attempts"] = max_attempts if max_attempts is not None else 0
        return row

    def max_attempts_of(self, stored: int | None) -> int:
        """A row's attempt limit: its own, or the worker's setting when it has none (0, the
        column's default; NULL too), the one rule for rows from Python, the procedures and
        plain INSERTs."""
        return stored if stored else self.settings.worker.max_attempts

    def _insert(self, conn: Connection, row: dict[str, Any]) -> EnqueueResult:
        if row["request_key"] is not None:
            found = self._same_request(conn, row)
            if found is not None:
                return EnqueueResult(found, False)
        new_id = conn.execute(insert(outbox).values(**row).returning(outbox.c.id)).scalar_one()
        return EnqueueResult(int(new_id), True)

    @staticmethod
    def _by_key(conn: Connection, key: str) -> int | None:
        return conn.execute(select(outbox.c.id).where(outbox.c.request_key == key)).scalar()

    @staticmethod
    def _same_request(conn: Connection, row: dict[str, Any]) -> int | None:
        """The id already stored under ``row``'s request_key, if it is the same request
        (operation, account, parameters); a different request under a used key is refused,
        never silently dropped."""
        found = conn.execute(select(outbox.c.id, outbox.c.operation, outbox.c.account,
                                    outbox.c.params)
                             .where(outbox.c.request_key == row["request_key"])).first()
        if found is None:
            return None
        _same_or_conflict(row, (found.operation, found.account, found.params), found.id)
        return int(found.id)

    # -- bulk enqueue ------------------------------------------------------------------------

    def request_row(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One request given as a mapping (a line of ``enqueue --file``, an item of
        ``enqueue_many``), checked field by field and validated like ``enqueue``; returns the
        row to insert. Raises ValidationError naming the field."""
        if not _REQUEST_FIELD_SET.issuperset(request):
            unknown = sorted(map(str, set(request) - _REQUEST_FIELD_SET))
            raise ValidationError(f"unknown field {_shown(unknown[0])}; allowed: "
                                  f"{', '.join(REQUEST_FIELDS)}", code="INVALID_ARGUMENT",
                                  param=str(unknown[0])[:100])
        operation = _field(request, "operation", str, required=True)
        params = request.get("params")
        if params is not None and not isinstance(params, Mapping | str):
            raise ValidationError("params must be a JSON object (or its text)",
                                  code="INVALID_PARAMS_JSON", param="params")
        not_before = _field(request, "not_before", str)
        account = _field(request, "account", str)
        row = self._row(
            operation, params, account="default" if account is None else account,
            priority=_field(request, "priority", int) or 0,
            request_key=_field(request, "request_key", str),
            correlation=_field(request, "correlation", str, max_length=400),
            not_before=_timestamp(not_before) if not_before is not None else None,
            max_attempts=_field(request, "max_attempts", int), parent_id=None,
            schedule_id=None, provider=_field(request, "provider", str))
        for key, value in row.items():
            if value.__class__ is str:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValidationError(
                        f"{key} holds a lone surrogate (an unpaired \\ud800-\\udfff escape); "
                        "send valid Unicode", code="INVALID_ARGUMENT", param=key) from None
        return row

    def enqueue_many(self, requests: Iterable[Mapping[str, Any]], *,
                     chunk: int = BULK_CHUNK) -> list[EnqueueResult]:
        """Validate and store many requests, ``chunk`` rows per transaction (one multi-row
        INSERT each); results in input order. ``request_key`` is honoured as in ``enqueue``:
        a key already stored, or repeated earlier in the input, returns that request
        (``created=False``). A request that fails validation raises ValidationError naming its
        position ("request 17: ..."); its chunk is not stored, earlier chunks are."""
        return [r for part in self.enqueue_chunks(requests, chunk=chunk) for r in part]

    def enqueue_chunks(self, requests: Iterable[Mapping[str, Any]], *,
                       chunk: int = BULK_CHUNK) -> Iterator[list[EnqueueResult]]:
        """``enqueue_many``, one list of results per committed chunk: for inputs too large
        to hold every result at once."""
        rows: list[dict[str, Any]] = []
        for n, request in enumerate(requests, 1):
            try:
                rows.append(self.request_row(request))
            except ValidationError as exc:
                raise ValidationError(f"request {n}: {exc}", code=exc.code,
                                      param=exc.param) from None
            if len(rows) >= chunk:
                yield self._insert_rows(rows)
                rows = []
        if rows:
            yield self._insert_rows(rows)

    def _insert_rows(self, rows: list[dict[str, Any]]) -> list[EnqueueResult]:
        """One transaction: look up the chunk's request keys, insert the rest in one go."""
        # SQL Server: SQLAlchemy's ordered multi-row INSERT ... OUTPUT gives the ids in input
        # order. SQLite: asking for that order makes SQLAlchemy send one row per statement;
        # without it the rows go 1,000 per statement, and the ids come back sortable instead:
        # under the write lock each new rowid is max(rowid) + 1, so they ascend in VALUES
        # order (no AUTOINCREMENT keyword, so no other rule applies).
        in_order = self.engine.dialect.name != "sqlite"
        stmt = insert(outbox).values(available_at=func.coalesce(
            bindparam("b_available_at", type_=outbox.c.available_at.type), utcnow()),
        ).returning(outbox.c.id, sort_by_parameter_order=in_order)
        one_by_one = in_order and self._on_babelfish()
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return self._insert_chunk(conn, stmt, rows, in_order, one_by_one)
            except IntegrityError:
                # A concurrent caller stored one of these keys between our look and our
                # insert: look again (it is visible now) and insert the rest.
                if attempt == 2 or all(r["request_key"] is None for r in rows):
                    raise
        raise AssertionError("unreachable")

    def _on_babelfish(self) -> bool:
        if self._babelfish is None:
            from .install import is_babelfish

            self._babelfish = False
            if self.engine.dialect.name == "mssql":
                with self.engine.connect() as conn:
                    self._babelfish = is_babelfish(conn)
        return self._babelfish

    @staticmethod
    def _insert_chunk(conn: Connection, stmt: Any, rows: list[dict[str, Any]],
                      in_order: bool, one_by_one: bool = False) -> list[EnqueueResult]:
        keys = [r["request_key"] for r in rows if r["request_key"] is not None]
        known: dict[str, int] = {}
        stored: dict[str, Any] = {}
        for i in range(0, len(keys), 500):  # SQL Server takes at most 2,100 parameters
            for found in conn.execute(
                    select(outbox.c.request_key, outbox.c.id, outbox.c.operation,
                           outbox.c.account, outbox.c.params)
                    .where(outbox.c.request_key.in_(keys[i:i + 500]))):
                known[found.request_key] = int(found.id)
                stored[found.request_key] = (found.operation, found.account, found.params)
        fresh: list[dict[str, Any]] = []
        # Per input row: (an id already stored, or None; else its row's place in ``fresh``;
        # whether this row creates the request).
        plan: list[tuple[int | None, int, bool]] = []
        pending: dict[str, int] = {}
        for r in rows:
            key = r["request_key"]
            if key is not None and key in known:
                _same_or_conflict(r, stored[key], known[key])
                plan.append((known[key], -1, False))
            elif key is not None and key in pending:
                first = fresh[pending[key]]
                _same_or_conflict(r, (first["operation"], first["account"], first["params"]),
                                  None)
                plan.append((None, pending[key], False))  # repeated inside this chunk
            else:
                if key is not None:
                    pending[key] = len(fresh)
                values = {c: r.get(c) for c in _BULK_COLUMNS}
                values["b_available_at"] = r.get("available_at")
                plan.append((None, len(fresh), True))
                fresh.append(values)
        if one_by_one:
            # Babelfish refuses the ordered multi-row form SQLAlchemy sends to SQL Server
            # (INSERT … OUTPUT … SELECT … FROM (VALUES …) ORDER BY): one row per statement
            # keeps the ids in input order there.
            ids = [conn.execute(stmt, values).scalar_one() for values in fresh]
        else:
            ids = conn.execute(stmt, fresh).scalars().all() if fresh else []
        if not in_order:
            ids = sorted(ids)
        out = [EnqueueResult(int(found if found is not None else ids[slot]), created)
               for found, slot, created in plan]
        return out

    # -- the worker's statements ---------------------------------------------------------------

    def claim(self, worker: str, limit: int, lease_seconds: float,
              scope: Any = None, *, token: str | None = None,
              adopt: bool = False, probe: gates.Key | None = None) -> list[Claimed]:
        """Claim up to ``limit`` due rows under one lease token, new unless given
        (``scope``: an extra condition, for ``sqlbridge sync``). A claim that fails on a row's
        content (a poison row) isolates that row (``isolate_unreadable``) and claims again, so
        one unreadable row never stops the queue. ``adopt``: first take back the rows already
        claimed under ``token`` (see ``repeatable_claim``).

        The gates hold (sqlbridge.gates): no row of an (account, provider) whose circuit
        breaker is open, and no more rows of a capped one than its ``max_in_flight`` allows.
        ``probe``: claim one row of that key as its breaker's probe, if its pause is over and
        no other worker probes it (else nothing)."""
        if limit <= 0:
            return []
        if probe is not None:
            limit = 1  # a probe is one row, whatever was asked
        token = token or uuid.uuid4().hex
        self.caps.ensure_rows()
        try:
            return self._claim(worker, limit, lease_seconds, scope, token, adopt, probe)
        except Exception as exc:
            if not is_data_error(exc) or not self.isolate_unreadable(limit):
                raise
        return self._claim(worker, limit, lease_seconds, scope, token, adopt, probe)

    def _claim(self, worker: str, limit: int, lease_seconds: float, scope: Any, token: str,
               adopt: bool, probe: gates.Key | None = None) -> list[Claimed]:
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(_adopt_statement(), {"token": token}).all() if adopt \
                    else []
                if limit > len(rows):
                    rows += self._claim_more(conn, worker, limit - len(rows), lease_seconds,
                                             scope, token, None if rows else probe)
                claimed = self._checked(conn, rows)
        except _NothingToProbe:
            return []  # rolled back: the breaker stays as it was
        claimed.sort(key=lambda c: (-c.priority, c.id))
        return claimed

    def _claim_more(self, conn: Connection, worker: str, limit: int, lease_seconds: float,
                    scope: Any, token: str, probe: gates.Key | None) -> list[Any]:
        params: dict[str, Any] = {"worker": worker, "lease": float(lease_seconds),
                                  "token": token}
        if probe is not None:
            if not self.breakers.take_probe(conn, probe, lease_seconds):
                raise _NothingToProbe
            params.update(probe_account=probe[0], probe_provider=probe[1])
        if self.caps:
            params.update(self.caps.claim_params(conn))
        rows = conn.execute(_claim_statement(limit, scope, len(self.caps.keys),
                                             probe is not None), params).all()
        if probe is not None and not rows:
            raise _NothingToProbe  # nothing of the key is due: no probe taken
        return rows

    def _checked(self, conn: Connection, rows: list[Any]) -> list[Claimed]:
        # A row whose numbers are not numbers (SQLite stores 'high' in an INTEGER column)
        # is failed here, in the claim's own transaction: raising after the claim would
        # leave the whole batch 'processing' until lease recovery, which must call its
        # sends 'uncertain'.
        claimed, bad = [], []
        for row in rows:
            try:
                one = _claimed(row)
            except (TypeError, ValueError, OverflowError) as exc:
                bad.append((row.id, f"{type(exc).__name__}: {str(exc)[:120]}"))
                continue
            # 0 (the column's default) means the worker's setting.
            claimed.append(dataclasses.replace(
                one, max_attempts=self.max_attempts_of(one.max_attempts)))
        if bad:
            _fail_unreadable_in(conn, bad)
        return claimed

    def repeatable_claim(self, worker: str, limit: int, lease_seconds: float,
                         probe: gates.Key | None = None) -> Callable[[], list[Claimed]]:
        """A claim for a retry loop. When the connection drops around the claim's commit, the
        worker cannot know whether the rows became its own; a repeat of this callable reuses
        the lease token, so it takes back whatever the first commit claimed (never sent, so
        not a second send) before claiming more, instead of leaving those rows to lease
        recovery, which would have to call the sends among them ``uncertain``."""
        token = uuid.uuid4().hex
        calls = 0

        def run() -> list[Claimed]:
            nonlocal calls
            calls += 1
            return self.claim(worker, limit, lease_seconds, token=token, adopt=calls > 1,
                              probe=probe)

        return run

    def renew(self, token: str, lease_seconds: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(_renew_statement(),
                                {"token": token, "lease": float(lease_seconds)}).rowcount

    def release(self, claims: Iterable[Claimed]) -> int:
        """Give back claimed rows that were never started (shutdown): not an attempt."""
        params = [{"b_id": c.id, "b_token": c.lease_token} for c in claims]
        if not params:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(_release_statement(), params).rowcount

    def finish(self, completions: Sequence[Completion],
               inbox_writer: Any = None) -> list[int]:
        """Write a batch of outcomes in one transaction; return the ids whose lease had been
        lost (their outcome is recorded only as an attempt row).

        Safe to call again with the same batch when the first call's outcome is unknown (the
        connection dropped around the commit): each row's update is fenced by the lease token,
        which the first commit cleared, so a repeat cannot write a row twice, enqueue a child
        twice or move a row that another worker has claimed since; and a completion whose own
        attempt row is already there was written by that first commit, so it is skipped, not
        mistaken for a lost lease."""
        if not completions:
            return []
        fenced: list[int] = []
        repeated: set[int] = set()
        self.breakers.prepare(completions)
        with self.engine.begin() as conn:
            # Which leases still hold, read under lock, then every held row's UPDATE in one
            # executemany (one round trip with pyodbc's fast_executemany) instead of one
            # statement per row; the UPDATE keeps its own lease fence all the same.
            held = _held(conn, completions)
            if held:
                conn.execute(_finish_statement(), [_finish_params(c) for c in completions
                                                   if c.id in held])
            for c in completions:
                if c.id not in held:
                    already = _recorded(conn, c)
                    if already is not None:
                        repeated.add(c.id)
                    if already != _outcome(c):
                        fenced.append(c.id)
                    continue
                if c.inbox is not None and inbox_writer is not None:
                    lands_in, account, params, records = c.inbox
                    inbox_writer(conn, lands_in, account, params, records, c.id)
                for child in c.followups:
                    try:
                        self.enqueue(conn=conn, parent_id=c.id, **child)
                    except ValidationError as exc:
                        # Built from the vendor's data, which the registry refuses (a platform
                        # it does not know): that child could never be sent. Skip it, never
                        # the parent's result.
                        log.warning("request %d: follow-up %s not queued: %s", c.id,
                                    child.get("operation"), exc)
            attempt_rows = [
                {
                    "request_id": c.id, "attempt": c.attempt, "started_at": c.started_at,
                    "duration_ms": c.duration_ms, "http_status": c.http_status,
                    "outcome": "lost_lease" if c.id in fenced else _outcome(c),
                    "error_code": c.error_code, "error_message": c.error_message,
                    "worker": c.worker,
                }
                for c in completions if c.id not in repeated
            ]
            if attempt_rows:  # an empty list would run one INSERT with no values
                conn.execute(_attempt_statement(), attempt_rows)
            # What the attempts said about each API, whatever became of their rows (a fenced
            # result still heard the API); last, so the breaker rows are locked briefly.
            self.breakers.record(conn, [c for c in completions if c.id not in repeated])
        return fenced

    def recover_expired(self) -> dict[str, int]:
        """Settle rows whose worker stopped renewing its lease (killed, hung, partitioned), or
        that are 'processing' with no lease at all.

        The question "may it have been delivered?" is answered by ``delivery``, as the worker
        answers it: a row the worker's own checks refuse (``delivery.prepare``: bad
        parameters, unknown account) was never sent and fails with that code; otherwise its
        worker died mid-call (reach MAYBE): a send becomes ``uncertain`` unless the account
        allows resending, anything else is queued again (``failed`` when no attempts are left).
        """
        counts = {"queued": 0, "failed": 0, "uncertain": 0}
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(_expired_statement()).all()
        except Exception as exc:
            if not is_data_error(exc):
                raise
            counts["failed"] += self.isolate_unreadable(expired=True)
            with self.engine.begin() as conn:
                rows = conn.execute(_expired_statement()).all()
        bad = []
        for r in rows:
            try:
                _whole("attempts", r.attempts)
                _whole("max_attempts", r.max_attempts)
            except (TypeError, ValueError) as exc:
                bad.append((r.id, f"{type(exc).__name__}: {str(exc)[:120]}"))
        if bad:
            counts["failed"] += self._fail_unreadable(bad)
            rows = [r for r in rows if r.id not in {rid for rid, _ in bad}]
        if not rows:
            return counts
        updates = [self._settle_expired(r) for r in rows]
        with self.engine.begin() as conn:
            attempts = []
            for r, u in zip(rows, updates, strict=True):
                if conn.execute(_recover_statement(), u).rowcount:
                    counts[u["b_status"]] += 1
                    attempts.append({
                        "request_id": r.id, "attempt": r.attempts,
                        "started_at": _utc_naive(), "duration_ms": None,
                        "http_status": None, "outcome": "lost_lease",
                        "error_code": u["b_error_code"], "error_message": u["b_error_message"],
                        "worker": r.locked_by,
                    })
            if attempts:
                conn.execute(_attempt_statement(), attempts)
        return counts

    def _settle_expired(self, r: Any) -> dict[str, Any]:
        """The recovery update of one expired row (see ``recover_expired``)."""
        who = f"worker {r.locked_by}" if r.locked_by else "a worker (no lease was recorded)"
        try:
            row = delivery.prepare(r.operation, r.params, r.provider, r.account, self.settings)
        except (ValidationError, ConfigError) as exc:
            status, code, text = "failed", exc.code, str(exc)
        else:
            rule = delivery.verdict(delivery.Reach.MAYBE, sending=row.sending,
                                    resend_ok=row.resend_ok)
            code = "LEASE_EXPIRED"
            if rule is delivery.Verdict.UNCERTAIN:
                status = "uncertain"
                text = (f"{who} stopped while sending; the request may or may not have been "
                        "delivered. Check with the recipient, then "
                        f"'sqlbridge retry {r.id}' to send it again")
            elif r.attempts >= self.max_attempts_of(r.max_attempts):
                status = "failed"
                text = (f"{who} stopped during the last of "
                        f"{self.max_attempts_of(r.max_attempts)} attempts")
            else:
                status = "queued"
                text = f"{who} stopped; the request was queued again"
        return {"b_id": r.id, "b_token": r.lease_token or "", "b_status": status,
                "b_error_code": code, "b_error_message": text,
                "terminal": 0 if status == "queued" else 1}

    def isolate_unreadable(self, limit: int = 100, *, expired: bool = False) -> int:
        """Find rows whose content cannot be read among those a claim (or, with ``expired``,
        lease recovery) would take, and fail each by id with UNREADABLE_ROW; return how many.

        Ids are selected alone (an integer always reads), then each row is read on its own:
        the ones that fail are the poison, and the statement that fails them never reads
        their text.
        """
        if expired:
            pick = _expired_ids_statement()
        else:
            pick = (select(outbox.c.id)
                    .where(outbox.c.status == "queued", outbox.c.available_at <= utcnow())
                    .order_by(outbox.c.priority.desc(), outbox.c.id).limit(limit))
        with self.engine.connect() as conn:
            ids = list(conn.execute(pick).scalars())
            bad: list[tuple[int, str]] = []
            for rid in ids:
                try:
                    conn.execute(select(*_CLAIM_COLUMNS, outbox.c.locked_by)
                                 .where(outbox.c.id == rid)).all()
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                    bad.append((rid, _unreadable_reason(exc)))
        return self._fail_unreadable(bad)

    def _fail_unreadable(self, bad: list[tuple[int, str]]) -> int:
        with self.engine.begin() as conn:
            return _fail_unreadable_in(conn, bad)

    # -- operators -------------------------------------------------------------------------

    def get(self, request_id: int, *, with_attempts: bool = False) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == request_id)).first()
            if row is None:
                raise RequestNotFound(f"request {request_id} does not exist")
            out = dict(row._mapping)
            if with_attempts:
                out["attempt_rows"] = [
                    dict(a._mapping) for a in conn.execute(
                        select(outbox_attempt).where(outbox_attempt.c.request_id == request_id)
                        .order_by(outbox_attempt.c.id))
                ]
        return out

    def cancel(self, request_id: int, reason: str = "cancelled by an operator") -> None:
        self._transition(_cancel_statement(), {"b_id": request_id, "b_message": reason},
                         "only queued requests can be cancelled (a request being sent "
                         "cannot be called back)")

    def retry(self, request_id: int) -> None:
        self._transition(_retry_statement(), {"b_id": request_id},
                         "only failed, uncertain or cancelled requests can be retried")

    def _transition(self, stmt: Any, params: dict[str, Any], rule: str) -> None:
        """Run a guarded operator transition; when it matched nothing, say why."""
        with self.engine.begin() as conn:
            if conn.execute(stmt, params).rowcount:
                return
            status = conn.execute(select(outbox.c.status)
                                  .where(outbox.c.id == params["b_id"])).scalar()
        if status is None:
            raise RequestNotFound(f"request {params['b_id']} does not exist")
        raise InvalidState(f"request {params['b_id']} is {status}; {rule}")

    def purge(self, older_than_seconds: float, statuses: Sequence[str] = PURGEABLE, *,
              batch: int = PURGE_BATCH, max_batches: int | None = None) -> int:
        """Delete finished requests (and their attempt rows) older than the given age.

        In batches of at most ``batch`` requests, each its own short transaction (attempt rows
        first, then the requests by id), so a purge of millions never holds locks that stall
        the workers' claims, and an interrupted purge leaves no orphaned attempts.
        ``max_batches``: stop after that many (the worker's retention purges a little per
        tick, so its loop never stops for long)."""
        old = self._purgeable(older_than_seconds, statuses)
        batch = max(1, min(int(batch), PURGE_BATCH_MAX))
        total = 0
        while True:
            started = time.monotonic()
            with self.engine.begin() as conn:
                ids = conn.execute(_purge_statements(old, [], batch)["purge_pick"]
                                   ).scalars().all()
                if not ids:
                    return total
                stmts = _purge_statements(old, ids, batch)
                conn.execute(stmts["purge_attempts"])
                total += conn.execute(stmts["purge_requests"]).rowcount
            if len(ids) < batch:
                return total
            if max_batches is not None:
                max_batches -= 1
                if max_batches <= 0:
                    return total
            # Let waiting writers in between batches: SQLite's busy handler polls, so a
            # purge that took the lock straight back would starve the workers' claims.
            time.sleep(min(PURGE_PAUSE_MAX, time.monotonic() - started))

    def purge_counts(self, older_than_seconds: float,
                     statuses: Sequence[str] = PURGEABLE) -> dict[str, int]:
        """What ``purge`` would delete, by status (``purge --dry-run``)."""
        old = self._purgeable(older_than_seconds, statuses)
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.status, func.count()).where(old)
                                .group_by(outbox.c.status)).all()
        return {status: n for status, n in rows}

    @staticmethod
    def _purgeable(older_than_seconds: float, statuses: Sequence[str]) -> Any:
        bad = [s for s in statuses if s not in FINISHED]
        if bad:
            raise ValidationError(f"cannot purge status {bad[0]!r}; allowed: {', '.join(FINISHED)}",
                                  code="INVALID_ARGUMENT", param="status")
        age = float(older_than_seconds)
        if not math.isfinite(age) or not 0 < age <= MAX_AGE_SECONDS:
            raise ValidationError(f"the age must be more than 0 and at most {MAX_AGE_SECONDS} "
                                  "seconds", code="INVALID_ARGUMENT", param="older_than")
        return and_(outbox.c.status.in_(list(statuses)), outbox.c.finished_at < utcnow(-age))

    def summary(self, failures: int = 10) -> dict[str, Any]:
        """Counts by status and operation, the age of the oldest queued request, recent
        failures: what an operator looks at first.

        Each part is read from an index built for it: the counts from the narrow
        (status, operation) index (one pass over index entries, never the wide rows), the
        oldest queued request and the recent failures by a seek each.
        """
        counted = IndexedBy.of(outbox, "s", "ix_outbox_status_operation")
        with self.engine.connect() as conn:
            counts = sorted(conn.execute(
                select(counted.c.operation, counted.c.status, func.count())
                .group_by(counted.c.status, counted.c.operation)).all())
            q = _queued("ix_outbox_queued_created")
            oldest, now = conn.execute(select(
                select(func.min(q.c.created_at)).where(q.c.status == constant("queued"))
                .scalar_subquery(), utcnow())).one()
            recent: list[Any] = []
            for status in ("failed", "uncertain"):
                # One backward seek per status on (status, finished_at), merged below.
                recent += conn.execute(
                    select(outbox.c.id, outbox.c.operation, outbox.c.status,
                           outbox.c.error_code, outbox.c.error_message, outbox.c.finished_at)
                    .where(outbox.c.status == constant(status))
                    .order_by(outbox.c.finished_at.desc()).limit(failures)).all()
        recent.sort(key=lambda r: (_as_datetime(r.finished_at) or datetime.min, r.id),
                    reverse=True)
        by_status: dict[str, int] = {}
        for _, status, n in counts:
            by_status[status] = by_status.get(status, 0) + n
        now, oldest = _as_datetime(now), oldest and _as_datetime(oldest)
        return {
            "by_status": by_status,
            "by_operation": [{"operation": o, "status": s, "count": n} for o, s, n in counts],
            "oldest_queued_seconds": (now - oldest).total_seconds() if oldest else None,
            "recent_failures": [dict(r._mapping) for r in recent[:failures]],
        }

    def next_due_in(self) -> float | None:
        """Seconds until the earliest queued request may be claimed (0 if one is due now),
        or None when nothing is queued; by the database's clock. One seek on ix_outbox_claim
        (available_at first), however many rows are queued."""
        q = _queued("ix_outbox_claim")
        earliest = (select(func.min(q.c.available_at)).where(q.c.status == constant("queued"))
                    .scalar_subquery())
        try:
            with self.engine.connect() as conn:
                earliest, now = conn.execute(select(earliest, utcnow())).one()
            if earliest is None:
                return None
            return max(0.0, (_as_datetime(earliest) - _as_datetime(now)).total_seconds())
        except (ValueError, TypeError):
            # Not a date (a row INSERTed with garbage): fail those rows, then ask again.
            if not self._fail_undated():
                return None
            return self.next_due_in()

    def _fail_undated(self) -> int:
        """Fail queued rows whose ``available_at`` is not a date (UNREADABLE_ROW)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.id, cast(outbox.c.available_at, String))
                                .where(outbox.c.status == "queued")).all()
        bad = []
        for rid, when in rows:
            try:
                if when is not None and not isinstance(_as_datetime(when), datetime):
                    raise TypeError(when)
            except (ValueError, TypeError):
                bad.append((rid, f"available_at {str(when)[:40]!r} is not a date"))
        return self._fail_unreadable(bad)

    def wait(self, request_id: int, timeout: float, poll: float = 0.1) -> dict[str, Any]:
        """Block until the request is finished or ``timeout`` seconds pass; return the row."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.get(request_id)
            if row["status"] in FINISHED or time.monotonic() >= deadline:
                return row
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            poll = min(poll * 1.5, 1.0)

"""Scheduled sync: rows of ``sync_schedule`` make the worker enqueue ordinary requests on a timer.

A due schedule becomes an ordinary outbox request, so a sync gets the same retries, audit rows
and status views as everything else. ``sync.chats`` is the full chat sync: its root request
(``chat.getchatchannels``) fans out, as each level succeeds, into ``chat.getchats`` per channel
and then ``chat.getmessages`` (or ``chat.getunreadmessages``) per chat; every child carries the
schedule's id and its parent's id.

Timing rules (see docs/sync.md):
- **one run per due slot, however many workers**: a run is claimed by an ``UPDATE`` that moves
  ``next_run_at`` into the future, guarded by "still due"; a second worker's identical update
  then matches nothing. The root request also carries the idempotency key
  ``schedule:<id>:<slot>``, so even a claim that somehow ran twice enqueues once.
- **misfires run once**: a worker that was down for an hour runs a missed 1-minute schedule
  once, not sixty times.
- **no drift**: the next slot is the first ``slot + k × interval`` in the future, computed from
  the slot, never from when the worker happened to look.
- **no overlap**: a slot that comes due while the previous run still has requests queued or in
  flight is skipped (and says so in ``last_error``), so a slow sync cannot pile up behind itself.
All times are the database server's clock (``utcnow()``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import mssql

from . import registry
from .errors import ConfigError, RequestNotFound, SqlbridgeError, ValidationError
from .schema import INBOX_TABLES, outbox, sync_schedule
from .sqlfuncs import utcnow

log = logging.getLogger("sqlbridge.sync")

CHAT_SYNC = "sync.chats"
# Statuses of a run that is not over yet; a new slot waits for them (no overlapping runs).
IN_FLIGHT = ("queued", "processing")
# last_status values that settle() still has to look at.
UNSETTLED = ("queued", "running")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# An INT column; ten years is longer than any schedule needs.
MAX_INTERVAL = 10 * 365 * 86400
_CONFIG_KEYS = {"name", "operation", "params", "interval", "account", "enabled", "max_children"}


@dataclass(frozen=True)
class SyncKind:
    """A schedulable job that is not one vendor operation: the registry knows nothing of it."""

    root: str  # the operation its run starts with
    options: tuple[str, ...]  # the keys its params may hold


SYNC_KINDS: dict[str, SyncKind] = {
    CHAT_SYNC: SyncKind("chat.getchatchannels", ("unread_only", "platform", "platformid")),
}


class ScheduleNotFound(RequestNotFound):
    code = "SCHEDULE_NOT_FOUND"


def parse_interval(value: int | float | str) -> int:
    """Seconds from 300, "300", "30s", "5m", "1h" or "1d"."""
    text = str(value).strip().lower()
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1]] if text and text[-1] in _UNITS \
            else float(text)
    except (ValueError, KeyError, OverflowError):
        seconds = -1
    # nan and inf fail the first test; more than ten years (an INT overflow, too) the last.
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds) \
            or seconds > MAX_INTERVAL:
        raise ValidationError(f"interval {str(value)[:40]!r} must be a whole number of seconds "
                              "(at least 1, at most 3650d) or a span such as 30s, 5m, 1h, 1d",
                              code="INVALID_ARGUMENT",
                              param="interval")
    return int(seconds)


def next_slot(slot: datetime, interval: int, now: datetime) -> datetime:
    """The first ``slot + k × interval`` strictly after ``now`` (k ≥ 1): on the grid the
    schedule started on, however late this worker looked, and never more than one run for all
    the slots that were missed."""
    behind = (now - slot).total_seconds()
    k = max(1, math.floor(behind / interval) + 1)
    return slot + timedelta(seconds=k * interval)


def _truthy(value: Any) -> bool:
    # T-SQL and TOML callers may store "true"/"1"/1 where Python would store True.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "s", "sim")
    return bool(value)


def _check(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a bad schedule when it is saved, not at 3 a.m. when it first comes due."""
    kind = SYNC_KINDS.get(operation)
    if kind is None:
        return registry.validate(operation, dict(params))[1]
    unknown = [k for k in params if k not in kind.options]
    if unknown:
        raise ValidationError(f"{operation}: unknown option '{unknown[0]}'; allowed: "
                              f"{', '.join(kind.options)}", code="UNKNOWN_PARAM",
                              param=unknown[0])
    clean: dict[str, Any] = {k: str(v) for k, v in params.items()
                             if k != "unread_only" and v not in (None, "")}
    if "unread_only" in params:
        clean["unread_only"] = _strict_bool(operation, "unread_only", params["unread_only"])
    return clean


def _strict_bool(operation: str, name: str, value: Any) -> bool:
    """Options saved from now on are true/false/1/0: 'maybe' is refused, not read as false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValidationError(f"{operation}: option '{name}' must be true, false, 1 or 0; got "
                          f"{str(value)[:40]!r}", code="INVALID_PARAM_TYPE", param=name)


def _as_datetime(value: Any) -> datetime:
    # SQLite hands back an expression's text unparsed; SQL Server a datetime.
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _db_now(conn: Connection) -> datetime:
    return _as_datetime(conn.execute(select(utcnow())).scalar_one())


# -- managing schedules --------------------------------------------------------------------------

def add_schedule(engine: Engine, name: str, operation: str, params: Mapping[str, Any] | None,
                 interval: int | float | str, *, account: str = "default", enabled: bool = True,
                 max_children: int = 1000, start_at: datetime | None = None) -> int:
    """Create or update the schedule called ``name``; returns its id. Updating keeps the
    schedule's grid (``next_run_at``) unless ``start_at`` is given."""
    if not name or len(name) > 200:
        raise ValidationError("schedule name must be 1 to 200 characters",
                              code="INVALID_ARGUMENT", param="name")
    if not account or len(account) > 100:
        raise ValidationError("account must be a name of 1 to 100 characters",
                              code="INVALID_ARGUMENT", param="account")
    if not 0 <= int(max_children) <= 1_000_000:
        raise ValidationError("max_children must be from 0 to 1000000", code="INVALID_ARGUMENT",
                              param="max_children")
    clean = _check(operation, params or {})
    values: dict[str, Any] = {
        "account": account, "operation": operation,
        "params": json.dumps(clean, ensure_ascii=False),
        "interval_seconds": parse_interval(interval), "enabled": bool(enabled),
        "max_children": int(max_children)}
    if start_at is not None:
        values["next_run_at"] = start_at
    s = sync_schedule
    with engine.begin() as conn:
        found = conn.execute(select(s.c.id).where(s.c.name == name)
                             .with_hint(s, "WITH (UPDLOCK, HOLDLOCK)", "mssql")).scalar()
        if found is not None:
            conn.execute(update(s).where(s.c.id == found).values(**values))
            sid = int(found)
        else:
            sid = int(conn.execute(insert(s).values(name=name, **values)
                                   .returning(s.c.id)).scalar_one())
    _forget(engine, sid)
    return sid


def remove_schedule(engine: Engine, name: str) -> None:
    """Delete a schedule; requests it already queued run to the end (they stand alone)."""
    with engine.begin() as conn:
        if not conn.execute(sync_schedule.delete().where(sync_schedule.c.name == name)).rowcount:
            raise ScheduleNotFound(f"schedule '{name}' does not exist")


def run_now(engine: Engine, name: str) -> None:
    """Make a schedule due now. Its grid restarts from now; a disabled schedule is enabled,
    since a run was asked for."""
    with engine.begin() as conn:
        if not conn.execute(update(sync_schedule).where(sync_schedule.c.name == name)
                            .values(next_run_at=utcnow(), enabled=True)).rowcount:
            raise ScheduleNotFound(f"schedule '{name}' does not exist")


def set_enabled(engine: Engine, name: str, enabled: bool) -> None:
    """Switch a schedule on or off; its grid (``next_run_at``) is kept."""
    with engine.begin() as conn:
        if not conn.execute(update(sync_schedule).where(sync_schedule.c.name == name)
                            .values(enabled=bool(enabled))).rowcount:
            raise ScheduleNotFound(f"schedule '{name}' does not exist")


def list_schedules(engine: Engine) -> list[dict[str, Any]]:
    """Every schedule, with ``last_run``: the live count by status of its last run's requests
    (children finish long after the run was started)."""
    out = []
    with engine.connect() as conn:
        # .all() first: FreeTDS, and Microsoft's driver without MARS, refuse a second query
        # while the first one's rows are still being read.
        rows = conn.execute(select(sync_schedule).order_by(sync_schedule.c.name)).all()
        for row in rows:
            item = dict(row._mapping)
            item["params"] = json.loads(item["params"] or "{}")
            item["last_run"] = _run_state(conn, row.id, row.last_request_id)
            if item["last_status"] in UNSETTLED and row.last_request_id is not None:
                # A run that finished after the last worker tick is shown as it stands, not
                # as the stale "queued" the row still holds (settle() writes it later).
                root_status = conn.execute(select(outbox.c.status).where(
                    outbox.c.id == row.last_request_id)).scalar()
                item["last_status"] = run_status(item["last_run"], root_status)
            out.append(item)
    return out


def check_config(schedules: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[[schedules]]`` tables checked as the worker will use them, without a database:
    the arguments for ``add_schedule``; ``ConfigError`` naming the table otherwise (``doctor``
    runs this too)."""
    out = []
    for i, item in enumerate(schedules):
        where = f"[[schedules]] #{i + 1}" + (f" ({item['name']})" if "name" in item else "")
        unknown = sorted(set(item) - _CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: "
                              f"{', '.join(sorted(_CONFIG_KEYS))}")
        missing = [k for k in ("name", "operation", "interval") if k not in item]
        if missing:
            raise ConfigError(f"{where}: '{missing[0]}' is required")
        if not isinstance(item.get("params") or {}, Mapping):
            raise ConfigError(f"{where}: params must be a table, e.g. params = {{ userId = "
                              '"1001" }')
        try:
            args = {"name": str(item["name"]), "operation": str(item["operation"]),
                    "params": _check(str(item["operation"]), item.get("params") or {}),
                    "interval": parse_interval(item["interval"]),
                    "account": str(item.get("account", "default")),
                    "enabled": bool(item.get("enabled", True)),
                    "max_children": int(item.get("max_children", 1000))}
        except ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: max_children must be a whole number") from None
        out.append(args)
    return out


def load_from_config(engine: Engine, schedules: Iterable[Mapping[str, Any]]) -> list[str]:
    """Upsert ``[[schedules]]`` tables of the TOML file; returns their names. Schedules made
    elsewhere (T-SQL, CLI) are left alone: the file adds and updates, never deletes."""
    names = []
    for args in check_config(schedules):
        name = args.pop("name")
        try:
            add_schedule(engine, name, args.pop("operation"), args.pop("params"),
                         args.pop("interval"), **args)
        except ValidationError as exc:
            raise ConfigError(f"[[schedules]] ({name}): {exc}") from None
        names.append(name)
    return names


def bootstrap(engine: Engine, settings: Any) -> int:
    """What the worker calls at start: the TOML file's schedules, upserted."""
    return len(load_from_config(engine, settings.schedules))


# -- running them ------------------------------------------------------------------------------

def _due() -> Any:
    s = sync_schedule
    return and_(s.c.enabled == true(), s.c.next_run_at <= utcnow(),
                or_(s.c.locked_until.is_(None), s.c.locked_until < utcnow()))


def _pick_statement() -> Any:
    """The due schedule, locked for this transaction. READPAST: a schedule another worker is
    claiming right now is skipped, not waited for (it will not be due when that commits)."""
    s = sync_schedule
    return (select(s.c.id, s.c.name, s.c.account, s.c.operation, s.c.params,
                   s.c.interval_seconds, s.c.next_run_at, s.c.last_request_id)
            .where(s.c.id == bindparam("sid"), _due())
            .with_hint(s, "WITH (ROWLOCK, READPAST, UPDLOCK)", "mssql"))


def _claim_statement() -> Any:
    """Moves the schedule past its slot. Guarded by "still due", so on an engine that ignores
    the hints (Babelfish) the second of two racing workers re-reads the row, finds it no longer
    due and matches nothing."""
    s = sync_schedule
    return (update(s).where(s.c.id == bindparam("sid"), _due())
            .values(next_run_at=bindparam("next"), last_run_at=utcnow()))


def _run_state(conn: Connection, schedule_id: int, root_id: int | None) -> dict[str, int]:
    """Requests of the run that started with ``root_id``, by status. Every request of a run has
    the schedule's id and an id above its root; runs never overlap, so that is exactly the run."""
    return _run_snapshot(conn, schedule_id, root_id)[0]


def _run_snapshot(conn: Connection, schedule_id: int,
                  root_id: int | None) -> tuple[dict[str, int], str | None]:
    """The run's requests by status and its root's status, from ONE statement.

    Two reads raced: the root read "processing", the worker then finished the whole run, the
    count read "all succeeded", and run_status() concluded "failed" (root not succeeded),
    a final status nobody corrected. One statement sees one state of the table.
    """
    if root_id is None:
        return {}, None
    is_root = func.sum(case((outbox.c.id == root_id, 1), else_=0))
    rows = conn.execute(select(outbox.c.status, func.count(), is_root)
                        .where(outbox.c.schedule_id == schedule_id, outbox.c.id >= root_id)
                        .group_by(outbox.c.status)).all()
    root_status = next((status for status, _, root in rows if root), None)
    return {status: n for status, n, _ in rows}, root_status


def run_status(state: Mapping[str, int], root_status: str | None) -> str:
    """What ``last_status`` says about a run, from its requests by status."""
    if not state:
        return "queued"
    if any(state.get(s) for s in IN_FLIGHT):
        return "running" if sum(state.values()) > state.get("queued", 0) else "queued"
    if root_status != "succeeded":
        return "failed"
    return "succeeded" if set(state) == {"succeeded"} else "partial"


def run_due(queue: Any, worker_id: str) -> int:
    """Start every due schedule once (however many workers call this); settle the
    ``last_status`` of runs that finished. Returns how many runs started."""
    engine: Engine = queue.engine
    with engine.connect() as conn:
        due = conn.execute(select(sync_schedule.c.id).where(_due())
                           .order_by(sync_schedule.c.next_run_at)).scalars().all()
    started = sum(_start(queue, sid, worker_id) for sid in due)
    settle(engine)
    return started


def _start(queue: Any, sid: int, worker_id: str) -> bool:
    """One schedule's slot, in one transaction: claim, enqueue the root, record the run."""
    s = sync_schedule
    with queue.engine.begin() as conn:
        row = conn.execute(_pick_statement(), {"sid": sid}).first()
        if row is None:
            return False  # another worker has it, or it is no longer due
        now = _db_now(conn)
        slot = _as_datetime(row.next_run_at)
        nxt = next_slot(slot, row.interval_seconds, now)
        if not conn.execute(_claim_statement(), {"sid": sid, "next": nxt}).rowcount:
            return False
        busy = {k: v for k, v in _run_state(conn, sid, row.last_request_id).items()
                if k in IN_FLIGHT}
        if busy:
            note = (f"slot {slot:%Y-%m-%d %H:%M:%S} skipped: the run started by request "
                    f"{row.last_request_id} is still going ({sum(busy.values())} requests "
                    "queued or in flight)")
            log.info("schedule %s: %s", row.name, note)
            conn.execute(update(s).where(s.c.id == sid).values(last_error=note))
            return False
        kind = SYNC_KINDS.get(row.operation)
        root_op = kind.root if kind else row.operation
        params = {} if kind else json.loads(row.params or "{}")
        try:
            result = queue.enqueue(root_op, params, account=row.account, conn=conn,
                                   schedule_id=sid,
                                   request_key=f"schedule:{sid}:{slot:%Y%m%dT%H%M%S.%f}",
                                   correlation=f"schedule {row.name}")
            state = {"last_request_id": result.id, "last_status": "queued", "last_error": None}
            log.info("schedule %s: slot %s started as request %d by %s (next %s)", row.name,
                     slot, result.id, worker_id, nxt)
        except SqlbridgeError as exc:
            # A row saved by T-SQL is validated only here: record why, keep the grid going.
            state = {"last_status": "failed", "last_error": f"{exc.code}: {exc}"}
            log.warning("schedule %s could not start: %s", row.name, exc)
        conn.execute(update(s).where(s.c.id == sid).values(**state))
    _forget(queue.engine, sid)
    return True


def settle(engine: Engine) -> int:
    """Bring ``last_status`` of unfinished runs up to date; returns how many changed. Cheap
    when nothing runs: one indexed-by-size read of the (small) schedule table."""
    s = sync_schedule
    changes = []
    with engine.connect() as conn:
        active = conn.execute(select(s.c.id, s.c.last_request_id, s.c.last_status)
                              .where(s.c.last_status.in_(UNSETTLED),
                                     s.c.last_request_id.is_not(None))).all()
        for sid, root, old in active:
            state, root_status = _run_snapshot(conn, sid, root)
            new = run_status(state, root_status)
            if new != old:
                changes.append({"b_sid": sid, "b_root": root, "b_old": old, "b_status": new})
    changed = 0
    if changes:
        with engine.begin() as conn:
            # Guarded by the root (a run started meanwhile keeps its own status) and by the
            # status this settle read (compare-and-set): another worker's settle that read a
            # later state and wrote first is never overwritten with an older conclusion.
            for change in changes:
                changed += conn.execute(
                    update(s).where(s.c.id == change["b_sid"],
                                    s.c.last_request_id == change["b_root"],
                                    s.c.last_status == change["b_old"])
                    .values(last_status=change["b_status"])).rowcount
    return changed


# -- fan-out -----------------------------------------------------------------------------------

@dataclass
class _Options:
    operation: str
    params: dict[str, Any]
    max_children: int
    fetched: float = field(default_factory=time.monotonic)


# A chat sync asks for its schedule's options once per parent request; a few seconds of cache
# spares 150 identical reads per run. An edit takes effect within _CACHE_SECONDS.
_cache: dict[tuple[str, int], _Options] = {}
_cache_lock = threading.Lock()
_CACHE_SECONDS = 5.0
_FAN_OUT = ("chat.getchatchannels", "chat.getchats")


def _forget(engine: Engine, sid: int) -> None:
    with _cache_lock:
        _cache.pop((str(engine.url), sid), None)


def _options(engine: Engine, schedule_id: int) -> _Options | None:
    key = (str(engine.url), schedule_id)
    with _cache_lock:
        hit = _cache.get(key)
    if hit and time.monotonic() - hit.fetched < _CACHE_SECONDS:
        return hit
    s = sync_schedule
    with engine.connect() as conn:
        row = conn.execute(select(s.c.operation, s.c.params, s.c.max_children)
                           .where(s.c.id == schedule_id)).first()
    if row is None:
        return None
    opts = _Options(row.operation, json.loads(row.params or "{}"), row.max_children)
    with _cache_lock:
        _cache[key] = opts
    return opts


def followups(engine: Engine, claim: Any, op: Any, params: dict[str, Any],
              result: Any) -> list[dict[str, Any]]:
    """Children of a successful request of a chat sync, as ``Queue.enqueue`` arguments (the
    worker binds ``engine``; ``Queue.finish`` enqueues them with the parent's id in the same
    transaction that records the parent's success, so a crash can neither lose nor double
    them). Anything else, including ordinary scheduled operations, has no children."""
    if claim.schedule_id is None or op.name not in _FAN_OUT:
        return []
    opts = _options(engine, claim.schedule_id)
    if opts is None or opts.operation != CHAT_SYNC:
        return []
    if op.name == "chat.getchatchannels":
        wanted = {k: str(opts.params[k]) for k in ("platform", "platformid")
                  if opts.params.get(k) not in (None, "")}
        child_op = "chat.getchats"
        children = [{"platform": r["platform"], "platformid": str(r["platformid"])}
                    for r in result.records
                    if all(str(r.get(k)) == v for k, v in wanted.items())]
        root = claim.id
    else:
        child_op = ("chat.getunreadmessages" if _truthy(opts.params.get("unread_only"))
                    else "chat.getmessages")
        children = [{"platform": r["platform"], "platformid": str(r["platformid"]),
                     "destination": str(r["destination"])}
                    for r in result.records if r.get("destination")]
        root = claim.parent_id or claim.id
    room = _room(engine, claim.schedule_id, root, opts.max_children)
    if len(children) > room:
        _note_cut(engine, claim.schedule_id, root, child_op, len(children) - room,
                  opts.max_children)
        children = children[:room]
    return [{"operation": child_op, "params": c, "account": claim.account,
             "schedule_id": claim.schedule_id, "correlation": f"sync {root}"}
            for c in children]


def _room(engine: Engine, schedule_id: int, root: int, max_children: int) -> int:
    """Children this run may still spawn. Exact when parents finish one at a time; parents
    whose results are written in the same batch may together overshoot by one parent's
    children (the limit guards against runaway fan-out; it is not an accounting figure)."""
    with engine.connect() as conn:
        spawned = conn.execute(select(func.count()).select_from(outbox)
                               .where(outbox.c.schedule_id == schedule_id,
                                      outbox.c.id > root)).scalar_one()
    return max(0, max_children - spawned)


def _note_cut(engine: Engine, schedule_id: int, root: int, child_op: str, dropped: int,
              limit: int) -> None:
    note = (f"fan-out limited: {dropped} {child_op} requests not started (max_children "
            f"{limit}); raise max_children or narrow the schedule with platform/platformid")
    log.warning("schedule %d, run %d: %s", schedule_id, root, note)
    with engine.begin() as conn:
        conn.execute(update(sync_schedule)
                     .where(sync_schedule.c.id == schedule_id,
                            sync_schedule.c.last_request_id == root)
                     .values(last_error=note))


# -- one full sync now -------------------------------------------------------------------------

@dataclass
class SyncSummary:
    requests: dict[str, int]  # requests of the run by status
    tables: dict[str, dict[str, int]]  # table -> {"inserted": n, "updated": n}
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)  # id, operation, error
    root_id: int | None = None


def sync_now(settings: Any, engine: Engine, *, account: str = "default",
             unread_only: bool = False,
             progress: Callable[[int, int], None] | None = None,
             timeout: float | None = None, poll: float = 0.2) -> SyncSummary:
    """Run one full chat sync to the end and report its requests and rows per table.

    Works on its own run only: it claims nothing but the requests of the run it started (the
    root's schedule, ids from the root on), so unrelated queued requests stay for the
    workers. It waits until every request of the run's tree (the root and its descendants by
    ``parent_id``) is finished, whoever runs them: a worker running alongside may take some.
    ``timeout`` (seconds) gives up waiting; the summary then counts what is still in flight.

    The run is recorded under the disabled schedule ``sync-now:<account>[:unread]`` (the
    fan-out needs a schedule to hang on, and ``schedule list`` then shows the last manual run
    like any other). ``progress(finished, total)`` is called about five times a second.
    "updated" counts rows the sync confirmed again (``last_seen`` moved), changed or not.
    """
    from .queue import Queue

    queue = Queue(engine, settings)
    name = f"sync-now:{account}" + (":unread" if unread_only else "")
    sid = add_schedule(engine, name, CHAT_SYNC, {"unread_only": True} if unread_only else {},
                       86400, account=account, enabled=False, max_children=1_000_000)
    with engine.connect() as conn:
        start = _db_now(conn)
    t0 = time.monotonic()
    root = queue.enqueue(SYNC_KINDS[CHAT_SYNC].root, {}, account=account, schedule_id=sid,
                         correlation=f"schedule {name}")
    with engine.begin() as conn:
        conn.execute(update(sync_schedule).where(sync_schedule.c.id == sid)
                     .values(last_request_id=root.id, last_run_at=utcnow(),
                             last_status="queued", last_error=None))
    _drive_run(queue, settings, root.id, sid, progress=progress, poll=poll,
               deadline=None if timeout is None else t0 + timeout)
    settle(engine)
    with engine.connect() as conn:
        state = _tree_state(conn, root.id)
        failures = [dict(r._mapping) for r in conn.execute(
            select(outbox.c.id, outbox.c.operation, outbox.c.status, outbox.c.error_code,
                   outbox.c.error_message)
            .where(outbox.c.id.in_(select(_tree(root.id).c.id)),
                   outbox.c.status.not_in(("succeeded", *IN_FLIGHT)))
            .order_by(outbox.c.id).limit(20))]
        tables = {t.name: _table_counts(conn, t, account, start)
                  for t in INBOX_TABLES if t.name.startswith("chat")}
    return SyncSummary(state, tables, time.monotonic() - t0, failures, root.id)


def _tree(root_id: int) -> Any:
    """The ids of a run: its root and every descendant by ``parent_id``."""
    tree = select(outbox.c.id).where(outbox.c.id == root_id).cte("run_tree", recursive=True)
    return tree.union_all(select(outbox.c.id).join(tree, outbox.c.parent_id == tree.c.id))


def _tree_state(conn: Connection, root_id: int) -> dict[str, int]:
    """The run's requests by status: exact, whatever else shares its schedule."""
    rows = conn.execute(select(outbox.c.status, func.count())
                        .where(outbox.c.id.in_(select(_tree(root_id).c.id)))
                        .group_by(outbox.c.status)).all()
    return {status: n for status, n in rows}


def _drive_run(queue: Any, settings: Any, root_id: int, sid: int, *,
               progress: Callable[[int, int], None] | None, poll: float,
               deadline: float | None) -> None:
    """Run the requests of one run in this process until its whole tree is finished.

    The same parts as the worker (claim, ``attempt.run`` on a thread pool, fenced ``finish``,
    lease renewal and recovery), but the claim is scoped to this run, and "done" means the
    run's tree has nothing queued or in flight, not "the outbox is empty"."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
    from concurrent.futures import wait as wait_for

    from . import attempt, inbox, logs
    from .providers import build_providers
    from .worker import default_worker_id

    w = settings.worker
    me = f"{default_worker_id()}:sync"
    scope = and_(outbox.c.schedule_id == sid, outbox.c.id >= root_id)
    fan_out = functools.partial(followups, queue.engine)
    providers = build_providers(pool_size=w.concurrency)
    inflight: dict[Any, Any] = {}
    renewed: dict[str, float] = {}
    next_recovery = 0.0
    pool = ThreadPoolExecutor(w.concurrency, thread_name_prefix="sqlbridge-sync")
    try:
        while True:
            now = time.monotonic()
            if now >= next_recovery:
                queue.recover_expired()
                next_recovery = now + max(1.0, w.lease_seconds / 4)
            late = deadline is not None and now >= deadline
            free = w.concurrency - len(inflight)
            claims = [] if late or free <= 0 else [
                # A circuit breaker that opened on this run's calls is probed here too
                # (sqlbridge.breaker), one row of the run per due key, or the run would wait
                # for a worker to do it.
                c for key in queue.breakers.due_probes()
                for c in queue.claim(me, 1, w.lease_seconds, scope=scope, probe=key)]
            if not late and free > len(claims):
                claims += queue.claim(me, min(free - len(claims), w.batch), w.lease_seconds,
                                      scope=scope)
            for c in claims:
                inflight[pool.submit(attempt.run, c, settings=settings, call=providers.call,
                                     worker=me, followups=fan_out)] = c
                renewed.setdefault(c.lease_token, now)
            if inflight:
                finished, _ = wait_for(list(inflight), timeout=poll,
                                       return_when=FIRST_COMPLETED)
                done = [f.result() for f in finished]
                for f in finished:
                    inflight.pop(f)
                if done:
                    logs.attempts_written(done, queue.finish(done, inbox.write))
                live = {c.lease_token for c in inflight.values()}
                for token in list(renewed):
                    if token not in live:
                        del renewed[token]
                    elif time.monotonic() - renewed[token] >= w.lease_seconds / 3:
                        queue.renew(token, w.lease_seconds)
                        renewed[token] = time.monotonic()
            with queue.engine.connect() as conn:
                state = _tree_state(conn, root_id)
            total = sum(state.values())
            pending = sum(state.get(s, 0) for s in IN_FLIGHT)
            if progress:
                progress(total - pending, total)
            if not inflight and (pending == 0 or late):
                return
            if not inflight and not claims:
                # Another worker holds the rest, or a retry is not due yet.
                time.sleep(poll)
    finally:
        for f in list(inflight):
            f.cancel()
        pool.shutdown(wait=True)
        providers.close()


def _table_counts(conn: Connection, table: Any, account: str, start: datetime) -> dict[str, int]:
    fresh = and_(table.c.account == account, table.c.last_seen >= start)
    inserted = conn.execute(select(func.count()).select_from(table)
                            .where(fresh, table.c.first_seen >= start)).scalar_one()
    touched = conn.execute(select(func.count()).select_from(table).where(fresh)).scalar_one()
    return {"inserted": inserted, "updated": touched - inserted}


def mssql_statements() -> dict[str, str]:
    """The scheduler's statements as SQL Server sees them (the T-SQL gate parses them)."""
    dialect = mssql.dialect()
    from .queue import _claim_statement as claim_rows

    run_claim = claim_rows(10, and_(outbox.c.schedule_id == 1, outbox.c.id >= 1))
    run_state = (select(outbox.c.status, func.count())
                 .where(outbox.c.id.in_(select(_tree(1).c.id))).group_by(outbox.c.status))
    return {"schedule_pick": str(_pick_statement().compile(dialect=dialect)),
            "schedule_claim": str(_claim_statement().compile(dialect=dialect)),
            "sync_run_claim": str(run_claim.compile(dialect=dialect)),
            "sync_run_state": str(run_state.compile(dialect=dialect))}

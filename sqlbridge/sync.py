"""Scheduled sync: rows of ``sync_schedule`` make the worker enqueue ordinary requests on a timer.

A due schedule becomes an ordinary outbox request, so a sync gets the same retries, audit rows
and status views as everything else. ``sync.chats`` is the full chat sync: its root request
(``chat.getchatchannels``) fans out, as each level succeeds, into ``chat.getchats`` per channel
and then ``chat.getmessages`` (or ``chat.getunreadmessages``) per chat; every child carries the
schedule's id and its parent's id.

Timing rules, chosen to beat cron-style pollers:
- **one run per due slot, however many workers**: a run is claimed by moving ``next_run_at``
  forward with an ``UPDATE … WHERE next_run_at = <the value read>``; the loser's update matches
  nothing. The root request also carries the idempotency key ``schedule:<id>:<slot>``.
- **misfires run once**: a worker that was down for an hour runs a missed 1-minute schedule
  once, not sixty times.
- **no drift**: the next slot is the first ``slot + k × interval`` in the future, computed from
  the slot, never from when the worker happened to look.
All times are the database server's clock.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from . import registry
from .errors import SqlbridgeError, ValidationError
from .schema import INBOX_TABLES, outbox, sync_schedule
from .sqlfuncs import utcnow

log = logging.getLogger("sqlbridge.sync")

CHAT_SYNC = "sync.chats"
# Sync kinds that are not vendor operations: name -> (root operation, allowed options).
SYNC_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    CHAT_SYNC: ("chat.getchatchannels", ("unread_only", "platform", "platformid")),
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(value: int | float | str) -> int:
    """Seconds from 300, "300", "5m", "1h" or "1d"."""
    text = str(value).strip().lower()
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1]] if text and text[-1] in _UNITS \
            else float(text)
    except (ValueError, KeyError):
        seconds = -1
    if seconds < 1 or seconds != int(seconds):
        raise ValidationError(f"interval {value!r} must be a whole number of seconds (at least "
                              "1) or a span such as 30s, 5m, 1h, 1d", code="INVALID_ARGUMENT",
                              param="interval")
    return int(seconds)


def next_slot(slot: datetime, interval: int, now: datetime) -> datetime:
    """The first slot + k × interval strictly after ``now`` (k ≥ 1)."""
    behind = (now - slot).total_seconds()
    k = max(1, math.floor(behind / interval) + 1)
    return slot + timedelta(seconds=k * interval)


def _check(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if operation in SYNC_KINDS:
        allowed = SYNC_KINDS[operation][1]
        unknown = [k for k in params if k not in allowed]
        if unknown:
            raise ValidationError(f"{operation}: unknown option '{unknown[0]}'; allowed: "
                                  f"{', '.join(allowed)}", code="UNKNOWN_PARAM",
                                  param=unknown[0])
        return dict(params)
    return registry.validate(operation, dict(params))[1]


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# -- managing schedules --------------------------------------------------------------------------

def add_schedule(engine: Engine, name: str, operation: str, params: Mapping[str, Any] | None,
                 interval: int | float | str, *, account: str = "default", enabled: bool = True,
                 max_children: int = 1000, start_at: datetime | None = None) -> int:
    """Create or update the schedule called ``name``; returns its id."""
    if not name or len(name) > 200:
        raise ValidationError("schedule name must be 1 to 200 characters",
                              code="INVALID_ARGUMENT", param="name")
    clean = _check(operation, params or {})
    values = {"account": account, "operation": operation,
              "params": json.dumps(clean, ensure_ascii=False),
              "interval_seconds": parse_interval(interval), "enabled": enabled,
              "max_children": int(max_children)}
    with engine.begin() as conn:
        found = conn.execute(select(sync_schedule.c.id).where(sync_schedule.c.name == name)
                             .with_hint(sync_schedule, "WITH (UPDLOCK, HOLDLOCK)", "mssql")
                             ).scalar()
        if found is not None:
            conn.execute(update(sync_schedule).where(sync_schedule.c.id == found).values(**values))
            return int(found)
        if start_at is not None:
            values["next_run_at"] = start_at
        return int(conn.execute(insert(sync_schedule).values(name=name, **values)
                                .returning(sync_schedule.c.id)).scalar_one())


def remove_schedule(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        if not conn.execute(sync_schedule.delete().where(sync_schedule.c.name == name)).rowcount:
            raise ValidationError(f"schedule '{name}' does not exist", code="REQUEST_NOT_FOUND",
                                  param="name")


def run_now(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        if not conn.execute(update(sync_schedule).where(sync_schedule.c.name == name)
                            .values(next_run_at=utcnow(), enabled=True)).rowcount:
            raise ValidationError(f"schedule '{name}' does not exist", code="REQUEST_NOT_FOUND",
                                  param="name")


def list_schedules(engine: Engine) -> list[dict[str, Any]]:
    """Every schedule, with the live state of its last run (root status and how its children
    stand), since children finish long after the run was started."""
    out = []
    with engine.connect() as conn:
        for row in conn.execute(select(sync_schedule).order_by(sync_schedule.c.name)):
            item = dict(row._mapping)
            item["last_run"] = _run_state(conn, row.id, row.last_request_id)
            out.append(item)
    return out


def _run_state(conn: Any, schedule_id: int, root_id: int | None) -> dict[str, int]:
    if root_id is None:
        return {}
    rows = conn.execute(select(outbox.c.status, func.count())
                        .where(outbox.c.schedule_id == schedule_id, outbox.c.id >= root_id)
                        .group_by(outbox.c.status)).all()
    return {status: n for status, n in rows}


def bootstrap(engine: Engine, settings: Any) -> int:
    """Upsert the ``[[schedules]]`` of the TOML settings (at worker start)."""
    for item in settings.schedules:
        try:
            add_schedule(engine, str(item["name"]), str(item["operation"]),
                         item.get("params") or {}, item.get("interval", "5m"),
                         account=str(item.get("account", "default")),
                         enabled=bool(item.get("enabled", True)),
                         max_children=int(item.get("max_children", 1000)))
        except KeyError as exc:
            raise ValidationError(f"each [[schedules]] table needs {exc.args[0]}",
                                  code="INVALID_ARGUMENT") from None
    return len(settings.schedules)


# -- running them ------------------------------------------------------------

def run_due(queue: Any, worker_id: str) -> int:
    """Start every due schedule once; return how many started."""
    engine: Engine = queue.engine
    s = sync_schedule
    with engine.connect() as conn:
        due = conn.execute(select(s.c.id, s.c.name, s.c.account, s.c.operation, s.c.params,
                                  s.c.interval_seconds, s.c.next_run_at)
                           .where(s.c.enabled.is_(True), s.c.next_run_at <= utcnow())).all()
    started = 0
    for row in due:
        with engine.begin() as conn:
            now = _as_datetime(conn.execute(select(utcnow())).scalar_one())
            slot = _as_datetime(row.next_run_at)
            claimed = conn.execute(
                update(s).where(s.c.id == row.id, s.c.next_run_at == row.next_run_at)
                .values(next_run_at=next_slot(slot, row.interval_seconds, now),
                        last_run_at=utcnow(), locked_by=worker_id)).rowcount
            if not claimed:
                continue  # another worker took this slot
            root_op = SYNC_KINDS.get(row.operation, (row.operation, ()))[0]
            params = {} if row.operation in SYNC_KINDS else json.loads(row.params or "{}")
            try:
                result = queue.enqueue(root_op, params, account=row.account, conn=conn,
                                       schedule_id=row.id,
                                       request_key=f"schedule:{row.id}:{slot.isoformat()}",
                                       correlation=f"schedule {row.name}")
                state = {"last_request_id": result.id, "last_status": "queued",
                         "last_error": None}
            except SqlbridgeError as exc:
                state = {"last_status": "failed", "last_error": str(exc)}
                log.warning("schedule %s could not start: %s", row.name, exc)
            conn.execute(update(s).where(s.c.id == row.id).values(**state))
            started += 1
    return started


@dataclass
class _Options:
    operation: str
    params: dict[str, Any]
    max_children: int
    root_id: int | None
    fetched: float = field(default_factory=time.monotonic)


_cache: dict[tuple[str, int], _Options] = {}
_CACHE_SECONDS = 5.0


def _options(engine: Engine, schedule_id: int) -> _Options | None:
    key = (str(engine.url), schedule_id)
    hit = _cache.get(key)
    if hit and time.monotonic() - hit.fetched < _CACHE_SECONDS:
        return hit
    with engine.connect() as conn:
        row = conn.execute(select(sync_schedule.c.operation, sync_schedule.c.params,
                                  sync_schedule.c.max_children, sync_schedule.c.last_request_id)
                           .where(sync_schedule.c.id == schedule_id)).first()
    if row is None:
        return None
    _cache[key] = _Options(row.operation, json.loads(row.params or "{}"), row.max_children,
                           row.last_request_id)
    return _cache[key]


def followups(engine: Engine, claim: Any, op: Any, params: dict[str, Any],
              result: Any) -> list[dict[str, Any]]:
    """Children of a successful request that belongs to a chat sync (enqueue() arguments)."""
    if claim.schedule_id is None or op.name not in ("chat.getchatchannels", "chat.getchats"):
        return []
    opts = _options(engine, claim.schedule_id)
    if opts is None or opts.operation != CHAT_SYNC:
        return []
    wanted = {k: str(opts.params[k]) for k in ("platform", "platformid") if opts.params.get(k)}
    if op.name == "chat.getchatchannels":
        child_op = "chat.getchats"
        children = [{"platform": r["platform"], "platformid": r["platformid"]}
                    for r in result.records
                    if all(r.get(k) == v for k, v in wanted.items())]
    else:
        child_op = ("chat.getunreadmessages" if opts.params.get("unread_only")
                    else "chat.getmessages")
        children = [{"platform": r["platform"], "platformid": r["platformid"],
                     "destination": r["destination"]} for r in result.records
                    if r.get("destination")]
    room = _room(engine, claim.schedule_id, opts)
    if len(children) > room:
        log.warning("schedule %d: fan-out cut from %d to %d children (max_children %d)",
                    claim.schedule_id, len(children), room, opts.max_children)
        with engine.begin() as conn:
            conn.execute(update(sync_schedule).where(sync_schedule.c.id == claim.schedule_id)
                         .values(last_error=f"fan-out limited: {len(children) - room} "
                                 f"{child_op} requests not started (max_children "
                                 f"{opts.max_children})"))
        children = children[:room]
    return [{"operation": child_op, "params": c, "account": claim.account,
             "schedule_id": claim.schedule_id, "correlation": f"sync {claim.id}"}
            for c in children]


def _room(engine: Engine, schedule_id: int, opts: _Options) -> int:
    """Children this run may still spawn. Exact for one parent at a time; two parents
    finishing together may together overshoot by one batch (the limit guards against runaway
    fan-out, not for accounting)."""
    if opts.root_id is None:
        return opts.max_children
    with engine.connect() as conn:
        spawned = conn.execute(select(func.count()).select_from(outbox)
                               .where(outbox.c.schedule_id == schedule_id,
                                      outbox.c.id > opts.root_id)).scalar_one()
    return max(0, opts.max_children - spawned)


# -- one full sync now ------------------------------------------------------------

@dataclass
class SyncSummary:
    requests: dict[str, int]
    tables: dict[str, dict[str, int]]  # table -> {"inserted": n, "updated": n}
    seconds: float


def sync_now(settings: Any, engine: Engine, *, account: str = "default",
             unread_only: bool = False,
             progress: Callable[[int, int], None] | None = None) -> SyncSummary:
    """Run one full chat sync to the end, in this process; report rows per table."""
    import threading

    from .queue import Queue
    from .worker import Worker

    queue = Queue(engine, settings)
    name = f"sync-now:{account}" + (":unread" if unread_only else "")
    sid = add_schedule(engine, name, CHAT_SYNC, {"unread_only": True} if unread_only else {},
                       86400, account=account, enabled=False)
    with engine.connect() as conn:
        start = _as_datetime(conn.execute(select(utcnow())).scalar_one())
    t0 = time.monotonic()
    root = queue.enqueue(SYNC_KINDS[CHAT_SYNC][0], {}, account=account, schedule_id=sid,
                         correlation=f"schedule {name}")
    with engine.begin() as conn:
        conn.execute(update(sync_schedule).where(sync_schedule.c.id == sid)
                     .values(last_request_id=root.id, last_run_at=utcnow(),
                             last_status="queued", last_error=None))
    _cache.pop((str(engine.url), sid), None)
    worker = Worker(settings, engine, schedules=False)
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.3)
        if progress:
            with engine.connect() as conn:
                state = _run_state(conn, sid, root.id)
            total = sum(state.values())
            progress(total - state.get("queued", 0) - state.get("processing", 0), total)
    with engine.connect() as conn:
        state = _run_state(conn, sid, root.id)
        tables = {}
        for t in INBOX_TABLES:
            if not t.name.startswith("chat"):
                continue
            fresh = and_(t.c.account == account, t.c.last_seen >= start)
            inserted = conn.execute(select(func.count()).select_from(t)
                                    .where(fresh, t.c.first_seen >= start)).scalar_one()
            touched = conn.execute(select(func.count()).select_from(t).where(fresh)).scalar_one()
            tables[t.name] = {"inserted": inserted, "updated": touched - inserted}
    return SyncSummary(state, tables, time.monotonic() - t0)

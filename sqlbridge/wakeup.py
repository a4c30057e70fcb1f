"""How an idle worker learns that there is work, without a claim transaction on every tick.

An idle worker asks its ``Waker`` to wait until one of three things is true, and is told which:

- ``queued``: a queued request is due (claim now);
- ``lease``: a lease has expired (run lease recovery now);
- ``schedule``: a sync schedule is due (run the schedules now).

One waker per database kind:

- **SQLite file** (``SqliteWaker``): ``PRAGMA data_version`` on a connection of its own changes
  whenever another connection commits, and reading it touches no page (it is a counter in the
  shared WAL index), so it is checked every ``CHANGE_CHECK`` seconds. A change, or the moment
  the earliest future event falls due (a retry's back-off, a lease, a schedule), triggers one
  read of the three "next event" times; a new row is noticed within tens of milliseconds.
- **SQL Server / Azure SQL** (``WaitforWaker``): one statement that waits on the server: a
  bounded loop of ``WAITFOR DELAY`` ticks over the filtered indexes, returning as soon as any of
  the three is true, or after ``WAIT_BOUND`` seconds. An idle worker makes one round trip
  every ``WAIT_BOUND`` seconds on a connection it keeps (no pool pre-ping per wait).
- **Babelfish** (no ``WAITFOR``) and in-memory SQLite (no second connection can see it):
  ``PollWaker`` reads the three times every ``poll_interval`` seconds (one short statement,
  still no claim transaction).

A waker that finds its reason already true on its first look right after an empty claim (the
claim could not take what the check sees: a clock or format disagreement, a row another
worker holds) backs off, doubling up to ``poll_interval``, so a disagreement can never become
a busy loop.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, case, exists, func, literal, select, text, true
from sqlalchemy.dialects import mssql
from sqlalchemy.exc import OperationalError

from .schema import SCHEMA, outbox, sync_schedule
from .sqlfuncs import IndexedBy, constant, utcnow

QUEUED, LEASE, SCHEDULE = "queued", "lease", "schedule"
# SQLite: how often data_version is read while idle (a counter in shared memory; no I/O).
CHANGE_CHECK = 0.01
# SQL Server: longest one waiting statement runs; an idle worker's round trips per minute are
# 60 / WAIT_BOUND (plus the slow safety clocks in the worker), and a stopping idle worker
# finishes within this.
WAIT_BOUND = 6.0
# SQL Server: the server-side tick between two looks (ms).
WAIT_TICK_MS = 50
# First back-off after a fruitless wake-up; doubles up to poll_interval.
BACKOFF_START = 0.05


class Waker(Protocol):
    """Waits until work may be there; see the module docstring."""

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        """Return the reasons to act (empty when ``timeout`` passed or ``stop`` was set)."""
        ...

    def close(self) -> None: ...


def _as_datetime(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# -- the conditions, in one place -------------------------------------------------------------

def _queued_due(t: Any) -> Any:
    # Same filter as the claim (queue._claim_statement), so "due" means "the claim takes it".
    return (t.c.status == constant("queued")) & (t.c.available_at <= utcnow())


def _lease_expired(t: Any) -> Any:
    # Same test as lease recovery (queue._expired_statement).
    return (t.c.status == constant("processing")) & (t.c.locked_until < utcnow())


def _schedule_due() -> Any:
    from .sync import _due  # the rule sync.run_due applies

    return _due()


def next_events_statement() -> Any:
    """When each of the three falls due: earliest queued ``available_at``, earliest
    in-flight ``locked_until``, earliest schedule slot (a schedule being started by another
    worker counts from when that worker's hold ends, as ``sync._due`` says), and the
    database's now. One seek each (ix_outbox_claim, ix_outbox_lease; the schedule table is
    small)."""
    q = IndexedBy.of(outbox, "q", "ix_outbox_claim")
    lease = IndexedBy.of(outbox, "l", "ix_outbox_lease")
    s = sync_schedule
    slot = case((s.c.locked_until > s.c.next_run_at, s.c.locked_until), else_=s.c.next_run_at)
    return select(
        select(func.min(q.c.available_at)).where(q.c.status == constant("queued"))
        .scalar_subquery(),
        select(func.min(lease.c.locked_until)).where(lease.c.status == constant("processing"))
        .scalar_subquery(),
        select(func.min(slot)).where(s.c.enabled == true()).scalar_subquery(),
        utcnow(),
    )


def reasons_from_times(row: Any, schedules: bool) -> tuple[set[str], float | None]:
    """(what is due now, seconds until the earliest thing that is not due yet)."""
    queued, lease, slot, now = (_as_datetime(v) for v in row)
    assert now is not None
    reasons: set[str] = set()
    later: list[float] = []
    for name, when, due in ((QUEUED, queued, lambda w: w <= now),
                            (LEASE, lease, lambda w: w < now),
                            (SCHEDULE, slot if schedules else None, lambda w: w <= now)):
        if when is None:
            continue
        if due(when):
            reasons.add(name)
        else:
            later.append((when - now).total_seconds())
    return reasons, min(later) if later else None


def waitfor_statement(schedules: bool = True) -> str:
    """The SQL Server waiting statement: loops server-side until something is due or
    ``:bound_ms`` passes; returns one row (reasons bitmask 1 queued / 2 lease / 4 schedule,
    ticks waited). READPAST: rows another transaction holds (a claim, an uncommitted insert)
    are skipped, never waited on; the insert is seen on the tick after it commits."""
    dialect = mssql.dialect()

    def cond(expr: Any, table: Any) -> str:
        # No INDEX() hint: the literal 'queued' / 'processing' lets the optimizer match the
        # filtered indexes itself, and a hint would fail outright under forced
        # parameterization instead of merely reading more.
        stmt = exists(select(literal(1)).select_from(table).where(expr)
                      .with_hint(table, "WITH (READPAST)", "mssql"))
        return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    q = outbox.alias("q")
    lease = outbox.alias("l")
    parts = [f"CASE WHEN {cond(_queued_due(q), q)} THEN 1 ELSE 0 END",
             f"CASE WHEN {cond(_lease_expired(lease), lease)} THEN 2 ELSE 0 END"]
    if schedules:
        parts.append(f"CASE WHEN {cond(_schedule_due(), sync_schedule)} THEN 4 ELSE 0 END")
    reasons = "\n        + ".join(parts)
    return (
        "SET NOCOUNT ON;\n"
        "DECLARE @until DATETIME2(3) = DATEADD(millisecond, :bound_ms, SYSUTCDATETIME());\n"
        f"DECLARE @tick DATETIME = DATEADD(millisecond, {WAIT_TICK_MS}, "
        "CAST('19000101' AS DATETIME));\n"
        "DECLARE @reasons INT = 0, @ticks INT = 0;\n"
        "WHILE 1 = 1\nBEGIN\n"
        f"    SET @reasons = {reasons};\n"
        "    IF @reasons <> 0 OR SYSUTCDATETIME() >= @until BREAK;\n"
        "    WAITFOR DELAY @tick;\n"
        "    SET @ticks = @ticks + 1;\n"
        "END;\n"
        "SELECT @reasons AS reasons, @ticks AS ticks;"
    )


def mssql_statements() -> dict[str, str]:
    """The wake-up statements as SQL Server sees them, for the T-SQL parse test."""
    return {
        "wakeup_waitfor": waitfor_statement(),
        "wakeup_poll": str(next_events_statement().compile(
            dialect=mssql.dialect(), compile_kwargs={"literal_binds": True})),
    }


# -- the wakers --------------------------------------------------------------------------------

class _Base:
    """The back-off shared by every waker (see the module docstring)."""

    def __init__(self, poll_interval: float, schedules: bool) -> None:
        self.poll_interval = max(poll_interval, BACKOFF_START)
        self.schedules = schedules
        self._streak = 0
        self.checks = 0  # statements sent, for the benchmark's idle traffic figure

    def probe(self) -> None:
        """Show the database is usable after a wait that found nothing (the worker's health
        relies on database contact). Server-side waits are that contact already."""

    def _fired_at_once(self, stop: threading.Event, reasons: set[str]) -> set[str]:
        """Reasons found on the first look: the caller's claim just missed them. Back off,
        more each time in a row, so a claim that cannot take a row never spins."""
        self._streak += 1
        if self._streak > 1:
            stop.wait(min(BACKOFF_START * 2 ** (self._streak - 2), self.poll_interval))
        return reasons


class SqliteWaker(_Base):
    """``PRAGMA data_version`` on a connection of its own, plus the next-event times."""

    def __init__(self, engine: Engine, database: str, poll_interval: float,
                 schedules: bool) -> None:
        super().__init__(poll_interval, schedules)
        self._engine = engine
        self._database = database
        self._conn: sqlite3.Connection | None = None
        self._sql = str(next_events_statement().compile(
            dialect=engine.dialect, compile_kwargs={"literal_binds": True},
            schema_translate_map={SCHEMA: "main"}, render_schema_translate=True))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._database, isolation_level=None,
                                         check_same_thread=False, timeout=30,
                                         uri=self._database.startswith("file:"))
        return self._conn

    def _version(self) -> int:
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def probe(self) -> None:
        """Take and release the write lock (an empty BEGIN IMMEDIATE transaction, through the
        engine and its busy timeout): watching data_version keeps working while another
        process holds the database, but claiming would not."""
        with self._engine.begin():
            pass

    def _look(self) -> tuple[set[str], float | None]:
        self.checks += 1
        row = self._connection().execute(self._sql).fetchone()
        return reasons_from_times(row, self.schedules)

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        # This connection is our own, outside SQLAlchemy: its errors become SQLAlchemy's
        # OperationalError, which the worker's outage handling retries with back-off (and the
        # next wait opens a fresh connection).
        try:
            return self._wait(stop, timeout)
        except sqlite3.Error as exc:
            self.close()
            raise OperationalError("PRAGMA data_version / next events", None, exc) from exc

    def _wait(self, stop: threading.Event, timeout: float) -> set[str]:
        deadline = time.monotonic() + max(0.0, timeout)
        # The version is read before the look: a commit after it changes the version, so
        # no row can slip in between the look and the watching.
        version = self._version()
        reasons, later = self._look()
        if reasons:
            return self._fired_at_once(stop, reasons)
        self._streak = 0
        while True:
            until = min(deadline, time.monotonic() + later if later is not None else math.inf)
            changed = False
            while not changed and time.monotonic() < until:
                if stop.wait(CHANGE_CHECK):
                    return set()
                now_version = self._version()
                changed, version = now_version != version, now_version
            if not changed and time.monotonic() >= deadline:
                return set()
            reasons, later = self._look()
            if reasons:
                return reasons

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class _HeldConnection:
    """One autocommit connection kept across waits: no pool checkout (and no pre-ping round
    trip) per wait, no transaction to commit. Dropped after an error; the next wait opens
    another (the worker's outage handling retries the wait)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def run(self, fn: Callable[[Connection], Any]) -> Any:
        if self.conn is None:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return fn(self.conn)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class WaitforWaker(_Base):
    """SQL Server: the waiting statement, at most WAIT_BOUND seconds per round trip."""

    def __init__(self, engine: Engine, poll_interval: float, schedules: bool) -> None:
        super().__init__(poll_interval, schedules)
        self._held = _HeldConnection(engine)
        self._stmt = text(waitfor_statement(schedules))

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        deadline = time.monotonic() + max(0.0, timeout)
        first = True
        while not stop.is_set():
            bound = min(WAIT_BOUND, deadline - time.monotonic())
            self.checks += 1
            mask, ticks = self._held.run(lambda c, b=bound: c.execute(
                self._stmt, {"bound_ms": int(max(0.0, b) * 1000)}).one())
            reasons = {name for bit, name in ((1, QUEUED), (2, LEASE), (4, SCHEDULE))
                       if int(mask) & bit}
            if reasons:
                return self._fired_at_once(stop, reasons) if first and not ticks else reasons
            self._streak = 0
            first = False
            if time.monotonic() >= deadline:
                break
        return set()

    def close(self) -> None:
        self._held.close()


class PollWaker(_Base):
    """Babelfish and in-memory SQLite: read the next-event times every ``poll_interval``."""

    def __init__(self, engine: Engine, poll_interval: float, schedules: bool,
                 held: bool) -> None:
        super().__init__(poll_interval, schedules)
        self._engine = engine
        self._held = _HeldConnection(engine) if held else None
        self._stmt = next_events_statement()

    def _look(self) -> tuple[set[str], float | None]:
        self.checks += 1
        if self._held is not None:
            row = self._held.run(lambda c: c.execute(self._stmt).one())
        else:
            with self._engine.connect() as c:
                row = c.execute(self._stmt).one()
        return reasons_from_times(row, self.schedules)

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        deadline = time.monotonic() + max(0.0, timeout)
        reasons, later = self._look()
        if reasons:
            return self._fired_at_once(stop, reasons)
        self._streak = 0
        while True:
            pause = min(self.poll_interval, later if later is not None else math.inf,
                        deadline - time.monotonic())
            if stop.wait(max(0.0, pause)) or time.monotonic() >= deadline:
                return set()
            reasons, later = self._look()
            if reasons:
                return reasons

    def close(self) -> None:
        if self._held is not None:
            self._held.close()


def for_engine(engine: Engine, *, poll_interval: float, schedules: bool,
               babelfish: bool | None = None) -> Waker:
    """The waker for this database (see the module docstring). ``babelfish``: as detected
    by ``sqlbridge.install.is_babelfish`` when not given."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            return PollWaker(engine, poll_interval, schedules, held=False)
        return SqliteWaker(engine, database, poll_interval, schedules)
    if babelfish is None:
        from .install import is_babelfish

        with engine.connect() as conn:
            babelfish = is_babelfish(conn)
    if babelfish:
        return PollWaker(engine, poll_interval, schedules, held=True)
    return WaitforWaker(engine, poll_interval, schedules)

"""Transient database errors are ridden out, everything else surfaces; a finish whose commit
was lost on a dropped connection is repeated without writing anything twice (fencing)."""

from __future__ import annotations

import sqlite3
import threading

import pyodbc
import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.dberrors import TRANSIENT_NUMBERS, classify
from sqlbridge.metrics import WorkerMetrics
from sqlbridge.queue import Completion, Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import outbox, outbox_attempt
from sqlbridge.worker import Worker

from .test_worker import message

ODBC = "[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"


def odbc(state: str, text_: str, number: int) -> pyodbc.Error:
    """An error as pyodbc raises it: (SQLSTATE, "[SQLSTATE] [driver]text (number) (call)")."""
    return pyodbc.Error(state, f"[{state}] {ODBC}{text_} ({number}) (SQLExecDirectW)")


CASES = [
    # (driver error, wrapped as, kind, transient)
    (odbc("40001", "Transaction (Process ID 52) was deadlocked on lock resources with another "
          "process and has been chosen as the deadlock victim. Rerun the transaction.", 1205),
     DBAPIError, "deadlock", True),
    (odbc("HY000", "Lock request time out period exceeded.", 1222), DBAPIError,
     "lock_timeout", True),
    (odbc("HY000", "Database 'db' on server 'srv' is not currently available. Please retry "
          "the connection later.", 40613), OperationalError, "unavailable", True),
    (odbc("HY000", "The service has encountered an error processing your request.", 40197),
     DBAPIError, "unavailable", True),
    (odbc("HY000", "The service is currently busy.", 40501), DBAPIError, "throttled", True),
    (odbc("HY000", "Not enough resources to process the request.", 49918), DBAPIError,
     "throttled", True),
    (odbc("HY000", "Too many create or update operations in progress.", 49919), DBAPIError,
     "throttled", True),
    (odbc("HY000", "Too many operations in progress.", 49920), DBAPIError, "throttled", True),
    (odbc("42000", "Cannot open database \"app\" requested by the login.", 4060),
     OperationalError, "unavailable", True),
    (odbc("42000", "Login to read-secondary failed due to long wait on "
          "'HADR_DATABASE_WAIT_FOR_TRANSITION_TO_VERSIONING'.", 4221), OperationalError,
     "unavailable", True),
    (odbc("HY000", "Resource ID : 1. The request limit for the database is 60 and has been "
          "reached.", 10928), DBAPIError, "throttled", True),
    (odbc("HY000", "Resource ID : 1. The min guarantee is 10, max limit is 60 and the current "
          "usage for the database is 60.", 10929), DBAPIError, "throttled", True),
    # Always On failover: the connection is gone under the statement.
    (odbc("08S01", "Communication link failure", 10054), OperationalError, "disconnect", True),
    (odbc("08001", "TCP Provider: No connection could be made", 10061), OperationalError,
     "disconnect", True),
    (pyodbc.Error("HYT00", "[HYT00] [Microsoft][ODBC Driver 18 for SQL Server]Query timeout "
                  "expired (0) (SQLExecDirectW)"), OperationalError, "unavailable", True),
    (pyodbc.Error(1205, b"Transaction was deadlocked"), DBAPIError, "deadlock", True),
    (sqlite3.OperationalError("database is locked"), OperationalError, "locked", True),
    # Bugs and broken installs: surfaced, never retried.
    (odbc("42S02", "Invalid object name 'sqlbridge.outbox'.", 208), ProgrammingError, "other",
     False),
    (odbc("42000", "The EXECUTE permission was denied on the object 'retry'.", 229),
     ProgrammingError, "other", False),
    (odbc("23000", "Violation of UNIQUE KEY constraint 'ux_outbox_request_key'.", 2627),
     DBAPIError, "other", False),
    # A number in quoted data is not the error's number; nor does a table name mean deadlock.
    (odbc("42S02", "Invalid object name 'deadlock_log(1205)'.", 208), ProgrammingError,
     "other", False),
    (sqlite3.OperationalError("no such table: outbox"), OperationalError, "other", False),
    (sqlite3.OperationalError("attempt to write a readonly database"), OperationalError,
     "other", False),
]


@pytest.mark.parametrize("orig, wrapper, kind, transient", CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_each_documented_error_is_classified(orig: Exception, wrapper: type[DBAPIError],
                                             kind: str, transient: bool) -> None:
    exc = wrapper("SELECT 1", {}, orig)
    got = classify(exc)
    assert (got.kind, got.transient) == (kind, transient)


def test_every_documented_number_is_in_the_table_and_transient() -> None:
    documented = {1205, 1222, 40613, 40197, 40501, 49918, 49919, 49920, 4060, 4221, 10928,
                  10929}
    always_on = {976, 978, 983}  # availability-group role changes during a failover
    assert set(TRANSIENT_NUMBERS) == documented | always_on
    for number in documented:
        assert classify(DBAPIError("x", {}, odbc("HY000", "x", number))).transient, number


def test_a_connection_sqlalchemy_invalidated_is_a_disconnect() -> None:
    exc = DBAPIError("SELECT 1", {}, RuntimeError("gone"), connection_invalidated=True)
    assert classify(exc).kind == "disconnect" and classify(exc).transient


@pytest.mark.sqlite_only
def test_a_worker_surfaces_an_error_that_is_not_an_outage(live: Settings, db_url: str,
                                                          queue: Queue) -> None:
    queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "100"})
    with queue.engine.begin() as c:
        c.execute(text("DROP TABLE outbox_attempt"))  # a broken install, not an outage
    metrics = WorkerMetrics(live.accounts)
    with pytest.raises(DBAPIError, match="no such table"):
        Worker(live, queue.engine, schedules=False, observer=metrics).run(once=True)
    assert metrics.db_errors_total.labels("other")._value.get() >= 1


# -- fencing: the finish of a batch is safe to repeat ----------------------------------------


def drop_connection_at_commit(engine: Engine, *, committed: bool) -> dict[str, int]:
    """Close the DBAPI connection when the first finish transaction commits: before the commit
    (``committed=False``: nothing landed) or after it (``True``: the write landed and only the
    answer was lost). Either way the worker sees a dropped connection and an unknown outcome."""
    seen = {"attempt_insert": 0, "dropped": 0}

    @event.listens_for(engine, "after_cursor_execute")
    def _mark(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT") and "outbox_attempt" in statement:
            seen["attempt_insert"] += 1

    @event.listens_for(engine, "commit")
    def _drop(conn):  # type: ignore[no-untyped-def]
        if seen["attempt_insert"] and not seen["dropped"]:
            seen["dropped"] += 1
            raw = conn.connection.dbapi_connection
            if committed:
                raw.commit()
            raw.close()

    return seen


@pytest.mark.sqlite_only
@pytest.mark.parametrize("committed", [False, True], ids=["lost-before-commit",
                                                          "lost-after-commit"])
def test_a_finish_cut_off_around_its_commit_is_repeated_without_duplicates(
        live: Settings, db_url: str, queue: Queue, sandbox: Sandbox, committed: bool) -> None:
    ids = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(6)]
    engine = make_engine(db_url)
    seen = drop_connection_at_commit(engine, committed=committed)
    metrics = WorkerMetrics(live.accounts)
    worker = Worker(live, engine, schedules=False, observer=metrics)
    stats = worker.run(once=True)
    assert seen["dropped"] == 1
    assert metrics.db_errors_total.labels("disconnect")._value.get() >= 1
    with queue.engine.connect() as c:
        per_request = dict(c.execute(select(outbox_attempt.c.request_id, func.count())
                                     .group_by(outbox_attempt.c.request_id)).all())
        outcomes = set(c.execute(select(outbox_attempt.c.outcome)).scalars())
        states = set(c.execute(select(outbox.c.status)).scalars())
    assert states == {"succeeded"}
    assert per_request == dict.fromkeys(ids, 1)  # one attempt row each: nothing written twice
    assert outcomes == {"succeeded"}  # and no lease was wrongly reported lost
    assert (stats.succeeded, stats.fenced) == (6, 0)
    sent = [m for i in range(6) for m in sandbox.state.messages("whatsapp", "100",
                                                                f"3460{i:07d}")]
    assert len(sent) == 6  # each message left once
    engine.dispose()


@pytest.mark.sqlite_only
def test_a_claim_whose_commit_landed_unseen_is_taken_back_not_stranded(
        live: Settings, db_url: str, queue: Queue, sandbox: Sandbox) -> None:
    ids = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(6)]
    engine = make_engine(db_url)
    dropped = []

    @event.listens_for(engine, "commit")
    def _drop(conn):  # type: ignore[no-untyped-def]
        # The first claim: its rows are now the worker's, but the worker never hears so.
        if not dropped and conn.info.pop("claiming", False):
            dropped.append(1)
            raw = conn.connection.dbapi_connection
            raw.commit()
            raw.close()

    @event.listens_for(engine, "after_cursor_execute")
    def _mark(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE") and "RETURNING" in statement \
                and "locked_by" in statement:
            conn.info["claiming"] = True

    stats = Worker(live, engine, schedules=False).run(once=True)
    assert dropped
    assert statuses_of(queue, ids) == ["succeeded"] * 6  # none left in processing
    assert stats.succeeded == 6 and stats.db_errors >= 1
    sent = [m for i in range(6) for m in sandbox.state.messages("whatsapp", "100",
                                                                f"3460{i:07d}")]
    assert len(sent) == 6
    engine.dispose()


def statuses_of(queue: Queue, ids: list[int]) -> list[str]:
    return [queue.get(i)["status"] for i in ids]


def test_repeating_a_finish_writes_nothing_twice_and_a_lost_lease_stays_fenced(
        queue: Queue) -> None:
    rid = queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "1"}).id
    claim = queue.claim("w1", 1, 30)[0]

    def completion(c: object, worker: str) -> Completion:
        return Completion(id=rid, lease_token=c.lease_token, attempt=c.attempts,  # type: ignore[attr-defined]
                          status="queued", started_at=claim_time, duration_ms=5, worker=worker,
                          provider="afilnet", retry_in=0.0, error_code="HTTP_503")

    with queue.engine.connect() as conn:
        claim_time = conn.execute(select(func.min(outbox.c.created_at))).scalar()
    done = [completion(claim, "w1")]
    assert queue.finish(done) == []
    assert queue.finish(done) == []  # the repeat: already written, not a lost lease
    attempts = queue.get(rid, with_attempts=True)["attempt_rows"]
    assert [a["outcome"] for a in attempts] == ["retry"]
    # Another worker has claimed the row since: the old worker's result is refused.
    again = queue.claim("w2", 1, 30)[0]
    stale = [completion(claim, "w1")]
    stale[0].attempt = again.attempts  # as if w1 had claimed this attempt and lost it
    assert queue.finish(stale) == [rid]
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "processing" and row["lease_token"] == again.lease_token
    assert [a["outcome"] for a in row["attempt_rows"]] == ["retry", "lost_lease"]


def test_the_worker_rides_out_an_outage_of_the_claim(live: Settings, db_url: str,
                                                     queue: Queue) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("holds SQLite's write lock")
    queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "100"})
    blocker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    engine = make_engine(db_url, busy_timeout_ms=50)
    metrics = WorkerMetrics(live.accounts)
    worker = Worker(live, engine, schedules=False, observer=metrics)
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    thread.start()
    try:
        deadline = 60.0
        import time

        end = time.monotonic() + deadline
        while metrics.db_errors_total.labels("locked")._value.get() < 2:
            assert time.monotonic() < end
            time.sleep(0.02)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and worker.stats.succeeded == 1
    engine.dispose()


@pytest.mark.sqlite_only
def test_the_worker_command_exits_7_in_one_line_on_a_broken_install(db_url: str,
                                                                     queue: Queue) -> None:
    from click.testing import CliRunner

    from sqlbridge.cli import main

    queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "100"})
    with queue.engine.begin() as c:
        c.execute(text("DROP TABLE outbox_attempt"))
    result = CliRunner().invoke(main, ["worker", "--once", "--no-schedules",
                                       "--database-url", db_url])
    assert result.exit_code == 7, result.output
    assert "error: cannot use the database:" in result.output and "outbox_attempt" in \
        result.output
    assert "Traceback" not in result.output

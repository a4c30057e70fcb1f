"""An idle worker waits for work without claiming on every tick (sqlbridge.wakeup).

No timed assertions: each wait is given a long timeout, and what is checked is *why* it
returned (a reason, or nothing at the timeout) and how many statements it sent.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, update

from sqlbridge import wakeup
from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox, sync_schedule
from sqlbridge.worker import Worker
from tests.conftest import MSSQL_URL, NO_MSSQL

LONG = 60.0  # a wait that returns before this returned because it saw something
MSG = {"platform": "whatsapp", "platformid": "100", "destination": "34600000001",
       "message": "hi"}


def utc_in(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(tzinfo=None)


@pytest.fixture
def file_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'wake.db'}")
    install(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def waker(file_engine: Engine) -> Iterator[wakeup.Waker]:
    w = wakeup.for_engine(file_engine, poll_interval=1.0, schedules=True)
    yield w
    w.close()


def wait_in_thread(w: wakeup.Waker, stop: threading.Event, timeout: float = LONG
                   ) -> tuple[threading.Thread, list[set[str]], threading.Event]:
    """Run ``w.wait`` in a thread; the event is set once it has taken its first look."""
    out: list[set[str]] = []
    looked = threading.Event()
    original = w._look  # type: ignore[attr-defined]

    def look() -> Any:
        try:
            return original()
        finally:
            looked.set()

    w._look = look  # type: ignore[attr-defined]
    t = threading.Thread(target=lambda: out.append(w.wait(stop, timeout)))
    t.start()
    return t, out, looked


def test_sqlite_file_gets_the_data_version_waker(waker: wakeup.Waker) -> None:
    assert isinstance(waker, wakeup.SqliteWaker)


def test_a_new_row_wakes_an_idle_waiter(file_engine: Engine, waker: wakeup.Waker) -> None:
    stop = threading.Event()
    t, out, looked = wait_in_thread(waker, stop)
    assert looked.wait(LONG)
    Queue(file_engine).enqueue("chat.sendmessage", MSG)
    t.join(LONG)
    assert out == [{"queued"}]


def test_an_idle_waiter_reads_the_database_only_when_something_changed(
        file_engine: Engine, waker: wakeup.Waker) -> None:
    # 0.5 s of nothing: the data_version counter is watched, the tables are read once.
    assert waker.wait(threading.Event(), 0.5) == set()
    assert waker.checks == 1  # type: ignore[attr-defined]
    # A commit that makes nothing due (a row for later) costs one more read, not a claim.
    stop = threading.Event()
    t, out, looked = wait_in_thread(waker, stop, timeout=1.0)
    assert looked.wait(LONG)
    Queue(file_engine).enqueue("chat.sendmessage", MSG, not_before=utc_in(3600))
    t.join(LONG)
    assert out == [set()]
    assert waker.checks == 3  # type: ignore[attr-defined]


def test_a_row_becoming_due_later_wakes_the_waiter_without_any_commit(
        file_engine: Engine, waker: wakeup.Waker) -> None:
    Queue(file_engine).enqueue("chat.sendmessage", MSG, not_before=utc_in(0.3))
    assert waker.wait(threading.Event(), LONG) == {"queued"}


def test_an_expired_lease_and_a_due_schedule_are_reasons_too(
        file_engine: Engine, waker: wakeup.Waker) -> None:
    past = utc_in(-5)
    with file_engine.begin() as conn:
        conn.execute(insert(outbox).values(operation="chat.getchats", params="{}",
                                           status="processing", locked_until=past,
                                           lease_token="t", locked_by="gone"))
    assert waker.wait(threading.Event(), LONG) == {"lease"}
    with file_engine.begin() as conn:
        conn.execute(update(outbox).values(status="succeeded", locked_until=None))
        conn.execute(insert(sync_schedule).values(name="s", operation="sync.chats",
                                                  interval_seconds=60, next_run_at=past))
    assert waker.wait(threading.Event(), LONG) == {"schedule"}
    quiet = wakeup.for_engine(file_engine, poll_interval=1.0, schedules=False)
    try:  # a worker started with --no-schedules is not woken by them
        assert quiet.wait(threading.Event(), 0.2) == set()
    finally:
        quiet.close()
    with file_engine.begin() as conn:  # held by another worker until later: not due yet
        conn.execute(update(sync_schedule).values(locked_until=utc_in(3600)))
    assert waker.wait(threading.Event(), 0.2) == set()


def test_stop_ends_a_wait_at_once(waker: wakeup.Waker) -> None:
    stop = threading.Event()
    t, out, looked = wait_in_thread(waker, stop)
    assert looked.wait(LONG)
    stop.set()
    t.join(LONG)
    assert out == [set()]


class RecordingStop(threading.Event):
    """A stop event that records the pauses asked of it and does not sleep through them."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(float(timeout or 0))
        return False


def test_a_row_the_claim_cannot_take_backs_off_instead_of_spinning(
        file_engine: Engine) -> None:
    """A due row seen again on the very first look means the claim just missed it: each
    repeat waits longer, up to poll_interval."""
    Queue(file_engine).enqueue("chat.sendmessage", MSG)
    w = wakeup.for_engine(file_engine, poll_interval=0.4, schedules=False)
    stop = RecordingStop()
    try:
        for _ in range(6):
            assert w.wait(stop, LONG) == {"queued"}
    finally:
        w.close()
    assert stop.pauses == [0.05, 0.1, 0.2, 0.4, 0.4]


def test_babelfish_and_memory_databases_poll(file_engine: Engine) -> None:
    memory = make_engine("sqlite://")
    try:
        assert isinstance(wakeup.for_engine(memory, poll_interval=1, schedules=True),
                          wakeup.PollWaker)
    finally:
        memory.dispose()
    w = wakeup.PollWaker(file_engine, 0.05, True, held=False)
    Queue(file_engine).enqueue("chat.sendmessage", MSG, not_before=utc_in(0.2))
    assert w.wait(threading.Event(), LONG) == {"queued"}


def test_the_sql_server_statement_waits_in_ticks_and_names_its_reasons() -> None:
    sql = wakeup.waitfor_statement()
    assert "WAITFOR DELAY @tick" in sql and "WHILE 1 = 1" in sql
    assert "q.status = N'queued'" in sql  # a literal: the filtered index applies
    assert sql.count("WITH (READPAST)") == 3
    assert "sync_schedule" not in wakeup.waitfor_statement(schedules=False)


def test_an_idle_worker_sends_almost_nothing_and_starts_a_new_row_at_once(
        live: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    settings = dataclasses.replace(live, database_url=url)
    engine = make_engine(url)
    install(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: statements.append(sql))
    worker = Worker(settings, engine, schedules=True)
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        queue = Queue(engine, settings)
        first = queue.enqueue("chat.sendmessage", MSG).id
        assert queue.wait(first, LONG)["status"] == "succeeded"
        # Now idle. After going idle the busy-period clocks fire once more (settle the
        # schedules' runs, recover leases); after that, nothing but the waker's own look.
        pause = threading.Event()
        pause.wait(2.0)
        before = len(statements)
        pause.wait(1.5)
        idle_statements = len(statements) - before
        second = queue.enqueue("chat.sendmessage", MSG).id
        assert queue.wait(second, LONG)["status"] == "succeeded"
    finally:
        worker.stop()
        t.join(LONG)
        engine.dispose()
    # A claim per poll tick (poll_interval 0.05 s) would be 30 in 1.5 s.
    assert idle_statements <= 1, idle_statements


@pytest.mark.skipif(not MSSQL_URL, reason=NO_MSSQL)
def test_sql_server_waker_wakes_on_a_new_row() -> None:
    assert MSSQL_URL
    engine = make_engine(MSSQL_URL)
    install(engine)
    w = wakeup.for_engine(engine, poll_interval=1.0, schedules=False)
    try:
        with engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.status == "queued")
                         .values(status="cancelled"))
        assert w.wait(threading.Event(), 0.3) == set()
        Queue(engine).enqueue("chat.sendmessage", MSG)
        assert w.wait(threading.Event(), LONG) == {"queued"}
    finally:
        w.close()
        engine.dispose()


def test_a_broken_waker_connection_is_an_outage_the_worker_retries(
        file_engine: Engine, waker: wakeup.Waker) -> None:
    from sqlalchemy.exc import OperationalError

    assert waker.wait(threading.Event(), 0.05) == set()
    waker._conn.close()  # type: ignore[attr-defined]  # the file went away, a disk error...
    with pytest.raises(OperationalError):
        waker.wait(threading.Event(), 0.05)
    # The next wait opens a fresh connection and works again.
    Queue(file_engine).enqueue("chat.sendmessage", MSG)
    assert waker.wait(threading.Event(), LONG) == {"queued"}


def test_an_idle_worker_s_loop_still_comes_round_and_claims_nothing_when_it_does(
        live: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The health endpoint calls a loop that has not come round for a minute stalled; an idle
    wait therefore ends every IDLE_TURN seconds, and a turn with nothing due sends nothing."""
    from sqlbridge import worker as worker_mod
    from sqlbridge.health import Observer

    monkeypatch.setattr(worker_mod, "IDLE_TURN", 0.2)
    turns = threading.Semaphore(0)

    class Turns(Observer):
        def loop(self, inflight: int) -> None:
            turns.release()

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    install(engine)
    w = Worker(dataclasses.replace(live, database_url=url), engine, schedules=False,
               observer=Turns())
    t = threading.Thread(target=w.run)
    t.start()
    try:
        for _ in range(3):  # the busy-period clocks after start-up
            assert turns.acquire(timeout=LONG)
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: sent.append(sql))
        for _ in range(5):  # five more idle turns
            assert turns.acquire(timeout=LONG)
    finally:
        w.stop()
        t.join(LONG)
        engine.dispose()
    # Each quiet turn only checks the write lock is available (BEGIN IMMEDIATE, COMMIT).
    assert sent and all(sql == "BEGIN IMMEDIATE" for sql in sent), sent

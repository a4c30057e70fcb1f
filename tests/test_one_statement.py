"""No second statement while the first one's rows are still being read, anywhere.

FreeTDS refuses it ("Invalid cursor state"), and so does Microsoft's ODBC driver without MARS
("Connection is busy with results for another command"). SQLite allows it, so these tests run
the real code over a SQLite connection that refuses it the same way: a cursor that executes
while another cursor of its connection still holds unread rows raises, as those drivers do.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from sqlbridge import sync
from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.worker import Worker

from .conftest import FAST_WORKER


class OneStatementCursor(sqlite3.Cursor):
    """Holds its connection 'busy' from an execute that returned rows until they are all read
    or the cursor is closed."""

    def execute(self, sql: str, params: Any = ()) -> OneStatementCursor:
        self.connection.claim(self)  # type: ignore[attr-defined]
        super().execute(sql, params)
        if self.description is not None:
            self.connection.busy.add(self)  # type: ignore[attr-defined]
        return self

    def executemany(self, sql: str, seq: Any) -> OneStatementCursor:
        self.connection.claim(self)  # type: ignore[attr-defined]
        super().executemany(sql, seq)
        return self

    def _drained(self) -> None:
        self.connection.busy.discard(self)  # type: ignore[attr-defined]

    def fetchone(self) -> Any:
        row = super().fetchone()
        if row is None:
            self._drained()
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        rows = super().fetchmany(size)
        if len(rows) < size:
            self._drained()
        return rows

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        self._drained()
        return rows

    def close(self) -> None:
        self._drained()
        super().close()


class OneStatementConnection(sqlite3.Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy: weakref.WeakSet[OneStatementCursor] = weakref.WeakSet()
        self.refusals: list[str] = []

    def cursor(self, factory: Any = OneStatementCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def claim(self, cursor: OneStatementCursor) -> None:
        others = [c for c in self.busy if c is not cursor]
        if others:
            self.refusals.append("busy")
            raise sqlite3.ProgrammingError(
                "Invalid cursor state: the connection is busy with results for another command")
        self.busy.discard(cursor)


@pytest.fixture
def strict_engine(tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "strict.db"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, factory=OneStatementConnection, timeout=30,
                               isolation_level=None, check_same_thread=False)

    engine = make_engine(f"sqlite:///{path}", creator=connect)
    install(engine)
    yield engine
    engine.dispose()


def test_the_strict_connection_really_refuses_a_second_statement(strict_engine: Engine) -> None:
    with strict_engine.connect() as conn:
        rows = conn.execute(text("SELECT 1 UNION ALL SELECT 2"))
        rows.fetchone()
        with pytest.raises(Exception, match="Invalid cursor state"):
            conn.execute(text("SELECT 3")).all()


def test_schedules_listing_settling_and_running_read_everything_first(
        strict_engine: Engine, tmp_path: Path) -> None:
    queue = Queue(strict_engine, Settings(database_url="sqlite://", worker=FAST_WORKER))
    for name in ("a", "b", "c"):
        sync.add_schedule(strict_engine, name, "chat.getchatchannels", {}, 60)
    assert sync.run_due(queue, "w1") == 3
    listed = sync.list_schedules(strict_engine)
    assert [s["name"] for s in listed] == ["a", "b", "c"]
    assert all(s["last_run"] == {"queued": 1} for s in listed)
    sync.settle(strict_engine)


def test_a_full_sync_and_the_operator_views_read_everything_first(
        strict_engine: Engine) -> None:
    with Sandbox(seed=5) as sandbox:
        sandbox.state.populate(channels=2, chats_per_channel=3, messages_per_chat=5)
        settings = Settings(database_url="sqlite://", accounts={"default": sandbox.account()},
                            worker=dataclasses.replace(FAST_WORKER, concurrency=4))
        summary = sync.sync_now(settings, strict_engine)
        assert summary.requests == {"succeeded": 1 + 2 + 6} and summary.failures == []
        queue = Queue(strict_engine, settings)
        rid = queue.enqueue("chat.getchatchannels", {}).id
        Worker(settings, strict_engine, schedules=True).run(once=True)
        assert queue.get(rid, with_attempts=True)["status"] == "succeeded"
        assert queue.summary()["by_status"]["succeeded"] >= 10
        assert queue.recover_expired() == {"queued": 0, "failed": 0, "uncertain": 0}
        assert sync.list_schedules(strict_engine)[0]["last_status"] == "succeeded"


def test_settle_judges_a_run_from_one_read_of_it(tmp_path: Path) -> None:
    """The schedule last_status race, made deterministic: the run finishes between settle's
    first read of the outbox and any later one. Reading the root's status and the run's
    counts in two statements concluded "failed" (root still processing, everything else
    done), a final status nobody corrected; one statement sees one state."""
    from sqlalchemy import event, update

    from sqlbridge.schema import outbox, sync_schedule
    engine = make_engine(f"sqlite:///{tmp_path / 'race.db'}")
    install(engine)
    queue = Queue(engine, Settings(database_url="sqlite://", worker=FAST_WORKER))
    sync.add_schedule(engine, "r", "chat.getchatchannels", {}, 60)
    assert sync.run_due(queue, "w") == 1
    (claim,) = queue.claim("w", 1, 30)  # the root is processing
    finished = []

    def finish_the_run_now(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # Right after settle's first read of the outbox, "another worker" finishes the run
        # (on the same connection, so the next statement sees it).
        if statement.startswith("SELECT") and "outbox" in statement and not finished:
            finished.append(statement)
            cursor.connection.execute("UPDATE outbox SET status = 'succeeded'")

    event.listen(engine, "after_cursor_execute", finish_the_run_now)
    try:
        sync.settle(engine)
    finally:
        event.remove(engine, "after_cursor_execute", finish_the_run_now)
    assert finished
    with engine.connect() as c:
        status = c.execute(sync_schedule.select()).one().last_status
    assert status in ("queued", "running")  # never a final "failed" from a torn read
    with engine.begin() as c:
        c.execute(update(outbox).where(outbox.c.id == claim.id).values(status="succeeded"))
    sync.settle(engine)
    with engine.connect() as c:
        assert c.execute(sync_schedule.select()).one().last_status == "succeeded"
    engine.dispose()

"""Claims, next_due_in and status read only what they return, however long the backlog.

Not timed: the query plans are checked instead (SQLite's EXPLAIN QUERY PLAN of the very
statements the queue sends). A plan that sorts the backlog ("USE TEMP B-TREE") or reads the
wide table rows grows with the backlog; a plan that walks the right index and stops does not.
scripts/bench_queue.py --backlog prints the times at 1,000,000 rows.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text, update

from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'backlog.db'}")
    install(eng)
    yield eng
    eng.dispose()


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the engine sends, with its parameters, as SQLite received them."""
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


def plans(engine: Engine, action: Callable[[], Any]) -> list[str]:
    """EXPLAIN QUERY PLAN of every data statement ``action`` sent, one text per statement."""
    with captured(engine) as seen:
        action()
    out = []
    with engine.connect() as conn:
        for sql, params in seen:
            if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH")):
                continue
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
            out.append("\n".join(r[3] for r in rows))
    return out


def fill(engine: Engine, queued: int = 300, finished: int = 300) -> None:
    """A backlog with every shape the claim must skip: finished rows, rows not yet due, and
    rows of several priorities, written straight into the table (fast, no validation)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
            "INSERT INTO outbox (operation, params, priority, status, finished_at) "
            "SELECT 'chat.sendmessage', '{}', i % 3, 'succeeded', '2026-01-01 00:00:00.000' "
            "FROM s", (finished,))
        conn.exec_driver_sql(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
            "INSERT INTO outbox (operation, params, priority, status, available_at) "
            "SELECT 'chat.getchats', '{}', i % 3, 'queued', "
            "CASE WHEN i % 5 = 0 THEN '2999-01-01 00:00:00.000' "
            "ELSE '2020-01-01 00:00:00.000' END FROM s", (queued,))


def test_the_claim_walks_its_index_in_order_and_never_sorts_the_backlog(
        sqlite_engine: Engine) -> None:
    fill(sqlite_engine)
    queue = Queue(sqlite_engine, Settings(database_url=str(sqlite_engine.url)))
    [plan] = plans(sqlite_engine, lambda: queue.claim("w", 10, 30))
    assert "SCAN q USING INDEX ix_outbox_claim_order" in plan, plan
    # The picked rows are then found by primary key, not by walking the queued ones again.
    assert re.fullmatch(r"SEARCH (main\.)?outbox USING INTEGER PRIMARY KEY \(rowid=\?\)",
                        plan.splitlines()[0]), plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_claim_takes_due_rows_by_priority_then_age_and_skips_the_rest(
        sqlite_engine: Engine) -> None:
    fill(sqlite_engine, queued=30, finished=10)
    queue = Queue(sqlite_engine, Settings(database_url=str(sqlite_engine.url)))
    with sqlite_engine.connect() as conn:
        due = conn.exec_driver_sql(
            "SELECT id, priority FROM outbox WHERE status = 'queued' "
            "AND available_at < '2999-01-01' ORDER BY priority DESC, id").all()
    got = queue.claim("w", 7, 30)
    assert [c.id for c in got] == [r.id for r in due[:7]]
    rest = queue.claim("w", 100, 30)
    assert [c.id for c in rest] == [r.id for r in due[7:]]
    assert queue.claim("w", 100, 30) == []  # the rows due in 2999 stay queued


def test_next_due_in_is_one_seek(sqlite_engine: Engine) -> None:
    fill(sqlite_engine)
    queue = Queue(sqlite_engine, Settings(database_url=str(sqlite_engine.url)))
    [plan] = plans(sqlite_engine, queue.next_due_in)
    assert "SEARCH q USING INDEX ix_outbox_claim" in plan, plan
    assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan
    assert queue.next_due_in() == 0.0
    with sqlite_engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.available_at < "2999-01-01")
                     .values(status="cancelled"))
    assert queue.next_due_in() > 3600 * 24 * 300


def test_status_counts_from_the_narrow_index_and_seeks_the_rest(sqlite_engine: Engine) -> None:
    fill(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE outbox SET status = 'failed', error_code = 'X', "
                             "finished_at = '2026-02-0' || (id % 9 + 1) WHERE id % 7 = 0 "
                             "AND status = 'succeeded'")
    queue = Queue(sqlite_engine, Settings(database_url=str(sqlite_engine.url)))
    counts, oldest, *recent = plans(sqlite_engine, queue.summary)
    # Counting is one pass over (status, operation) entries: no table rows, no sort.
    assert "COVERING INDEX ix_outbox_status_operation" in counts, counts
    assert "TEMP B-TREE" not in counts, counts
    assert "SEARCH q USING INDEX ix_outbox_queued_created" in oldest, oldest
    for plan in recent:
        assert "ix_outbox_status_finished (status=?)" in plan and "TEMP B-TREE" not in plan, plan
    s = queue.summary(failures=5)
    assert s["by_status"] == {"queued": 300, "succeeded": 258, "failed": 42}
    assert s["oldest_queued_seconds"] is not None and s["oldest_queued_seconds"] >= 0
    finished = [r["finished_at"] for r in s["recent_failures"]]
    assert len(finished) == 5 and finished == sorted(finished, reverse=True)


def test_install_adds_a_new_index_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    install(engine)
    with engine.begin() as conn:  # a database made by a release without the index
        conn.execute(text("DROP INDEX ix_outbox_claim_order"))
    install(engine)
    engine.dispose()
    names = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_outbox_claim_order", "ix_outbox_status_operation",
            "ix_outbox_queued_created"} <= names

"""Schedules: one run per due slot however many workers or processes, misfires run once on the
grid, no overlapping runs, rows saved by T-SQL validated when due, TOML and CLI management."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, insert, select, text, update

from sqlbridge import config, sync
from sqlbridge.config import Settings
from sqlbridge.errors import ConfigError, ValidationError
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox, sync_schedule
from sqlbridge.worker import Worker


def roots(engine: Engine, name: str | None = None) -> int:
    where = [outbox.c.parent_id.is_(None)]
    if name is not None:
        where.append(outbox.c.schedule_id == select(sync_schedule.c.id)
                     .where(sync_schedule.c.name == name).scalar_subquery())
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(outbox).where(*where)).scalar_one()


def schedule_row(engine: Engine, name: str) -> dict:
    with engine.connect() as c:
        return dict(c.execute(select(sync_schedule).where(sync_schedule.c.name == name))
                    .one()._mapping)


def db_now(engine: Engine) -> datetime:
    with engine.connect() as c:
        return sync._db_now(c)


def test_threads_racing_over_many_due_schedules_start_each_once(queue: Queue) -> None:
    for i in range(12):
        sync.add_schedule(queue.engine, f"s{i}", "messenger.structure", {}, "1h")
    barrier = threading.Barrier(4)
    started: list[int] = []

    def tick(n: int) -> None:
        barrier.wait()
        for _ in range(3):
            started.append(sync.run_due(queue, f"w{n}"))

    threads = [threading.Thread(target=tick, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(started) == 12 and roots(queue.engine) == 12


def test_two_worker_processes_and_due_schedules_make_one_run_each(queue: Queue,
                                                                 tmp_path: Path) -> None:
    for i in range(8):
        sync.add_schedule(queue.engine, f"p{i}", "messenger.structure", {}, "1h")
    script = textwrap.dedent(f"""
        import sys, time
        from sqlbridge import sync
        from sqlbridge.db import make_engine
        from sqlbridge.queue import Queue
        queue = Queue(make_engine({queue.engine.url.render_as_string(hide_password=False)!r}))
        go = float(sys.argv[1])
        while time.time() < go:
            time.sleep(0.001)
        print(sum(sync.run_due(queue, sys.argv[2]) for _ in range(20)))
    """)
    go = str(time.time() + 1.5)  # both processes import first, then race from one instant
    procs = [subprocess.Popen([sys.executable, "-c", script, go, f"proc{n}"],
                              stdout=subprocess.PIPE, text=True) for n in range(2)]
    outs = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(outs) == 8 and roots(queue.engine) == 8


def test_two_running_workers_and_one_due_schedule_make_one_run(settings: Settings,
                                                              sandbox: object,
                                                              queue: Queue) -> None:
    live = dataclasses.replace(settings, accounts={"default": sandbox.account()})  # type: ignore[attr-defined]
    sync.add_schedule(queue.engine, "structure", "messenger.structure", {}, "1h")
    workers = [Worker(live, queue.engine, worker_id=f"w{n}") for n in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"max_seconds": 120}) for w in workers]
    for t in threads:
        t.start()
    try:
        # Until the workers' own schedule tick has settled the run (no fixed time: a slow
        # engine takes longer). A torn read used to settle it as "failed" for good.
        deadline = time.monotonic() + 110
        while schedule_row(queue.engine, "structure")["last_status"] in (None, "queued",
                                                                        "running"):
            assert time.monotonic() < deadline, "the run was never settled"
            time.sleep(0.05)
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join()
    assert roots(queue.engine, "structure") == 1
    row = schedule_row(queue.engine, "structure")
    assert row["last_status"] == "succeeded"  # settled by the workers' schedule tick
    assert sum(w.stats.succeeded for w in workers) == 1


def test_a_schedule_missed_for_many_intervals_runs_once_and_stays_on_its_grid(
        queue: Queue) -> None:
    sid = sync.add_schedule(queue.engine, "requests", "messenger.requests",
                            {"userId": "1001"}, "60s")
    slot = schedule_row(queue.engine, "requests")["next_run_at"]
    missed = slot - timedelta(hours=1)  # the worker was down for an hour: 60 missed slots
    with queue.engine.begin() as c:
        c.execute(update(sync_schedule).values(next_run_at=missed))
    assert sync.run_due(queue, "w") == 1
    assert sync.run_due(queue, "w") == 0
    assert roots(queue.engine, "requests") == 1
    nxt = schedule_row(queue.engine, "requests")["next_run_at"]
    now = db_now(queue.engine)
    assert now < nxt <= now + timedelta(seconds=60)  # the next slot, in the future...
    assert (nxt - missed).total_seconds() % 60 == 0  # ...on the 60 s grid: no drift
    with queue.engine.connect() as c:
        key = c.execute(select(outbox.c.request_key)).scalar_one()
    assert key.startswith(f"schedule:{sid}:")


@pytest.mark.sqlite_only
def test_a_next_run_at_written_by_hand_in_sqlite_format_is_claimed_once(queue: Queue) -> None:
    """A DBA's UPDATE stores SQLite's own text ('YYYY-MM-DD HH:MM:SS'), not SQLAlchemy's: the
    claim must not depend on the value surviving a round trip through Python."""
    sync.add_schedule(queue.engine, "hand", "messenger.structure", {}, "1h")
    with queue.engine.begin() as c:
        c.execute(text("UPDATE sync_schedule SET next_run_at = datetime('now', '-3 hours')"))
    assert sync.run_due(queue, "w") == 1
    assert sync.run_due(queue, "w") == 0
    assert roots(queue.engine) == 1


def test_a_slot_that_comes_due_while_the_last_run_is_still_going_is_skipped(
        live_settings: Settings, queue: Queue) -> None:
    sync.add_schedule(queue.engine, "chats", "sync.chats", {}, "1h")
    assert sync.run_due(queue, "w") == 1  # the root waits: no worker is running
    sync.run_now(queue.engine, "chats")
    assert sync.run_due(queue, "w") == 0
    row = schedule_row(queue.engine, "chats")
    assert "skipped" in row["last_error"] and row["next_run_at"] > db_now(queue.engine)
    assert roots(queue.engine) == 1 and row["last_status"] == "queued"

    Worker(live_settings, queue.engine, schedules=False).run(once=True)
    sync.run_now(queue.engine, "chats")
    assert sync.run_due(queue, "w") == 1  # the first run is over: a new one may start
    assert roots(queue.engine) == 2
    row = schedule_row(queue.engine, "chats")
    assert row["last_error"] is None and row["last_status"] == "queued"


@pytest.fixture
def live_settings(settings: Settings, sandbox: object) -> Settings:
    return dataclasses.replace(settings, accounts={"default": sandbox.account()})  # type: ignore[attr-defined]


def test_a_bad_row_inserted_by_sql_fails_when_due_and_keeps_its_grid(queue: Queue) -> None:
    with queue.engine.begin() as c:  # what a DBA's plain INSERT does: nothing validated yet
        c.execute(insert(sync_schedule).values(name="typo", operation="messenger.requests",
                                               params="{}", interval_seconds=300))
    assert sync.run_due(queue, "w") == 1
    row = schedule_row(queue.engine, "typo")
    assert row["last_status"] == "failed" and "userId" in row["last_error"]
    assert row["next_run_at"] > db_now(queue.engine) and roots(queue.engine) == 0


def test_last_status_sums_up_a_run() -> None:
    assert sync.run_status({}, None) == "queued"
    assert sync.run_status({"queued": 1}, "queued") == "queued"
    assert sync.run_status({"succeeded": 3, "queued": 5}, "succeeded") == "running"
    assert sync.run_status({"succeeded": 9}, "succeeded") == "succeeded"
    assert sync.run_status({"succeeded": 8, "failed": 1}, "succeeded") == "partial"
    assert sync.run_status({"failed": 1}, "failed") == "failed"


def test_next_slot_skips_missed_slots_without_drift() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    assert sync.next_slot(t0, 60, t0 + timedelta(seconds=0.4)) == t0 + timedelta(seconds=60)
    assert sync.next_slot(t0, 60, t0 + timedelta(seconds=60)) == t0 + timedelta(seconds=120)
    assert sync.next_slot(t0, 60, t0 + timedelta(hours=5, seconds=1)) == \
        t0 + timedelta(hours=5, seconds=60)
    assert sync.next_slot(t0, 300, t0 - timedelta(seconds=10)) == t0 + timedelta(seconds=300)


def test_schedules_are_checked_upserted_listed_run_now_and_removed(queue: Queue) -> None:
    eng = queue.engine
    with pytest.raises(ValidationError, match="interval 'soon'"):
        sync.add_schedule(eng, "x", "sync.chats", {}, "soon")
    with pytest.raises(ValidationError, match="unknown option 'colour'"):
        sync.add_schedule(eng, "x", "sync.chats", {"colour": "red"}, "5m")
    with pytest.raises(ValidationError, match="'userId' or both"):
        sync.add_schedule(eng, "x", "messenger.requests", {}, "5m")
    with pytest.raises(ValidationError):
        sync.add_schedule(eng, "x", "chat.nosuchmethod.really", {}, "5m")
    assert sync.parse_interval("1h") == 3600 and sync.parse_interval(90) == 90
    assert sync.parse_interval("1d") == 86400 and sync.parse_interval("30s") == 30

    later = db_now(eng) + timedelta(days=1)
    sid = sync.add_schedule(eng, "u", "sync.chats", {"unread_only": "true"}, "5m",
                            start_at=later)
    assert sync.add_schedule(eng, "u", "sync.chats", {"platform": "whatsapp"}, "10m",
                             max_children=5) == sid  # upsert by name
    (item,) = sync.list_schedules(eng)
    assert item["params"] == {"platform": "whatsapp"} and item["interval_seconds"] == 600
    # grid kept; DATETIME2(3) on SQL Server keeps milliseconds, Python has microseconds
    assert item["max_children"] == 5 and abs(item["next_run_at"] - later) < timedelta(
        milliseconds=1)
    assert sync.run_due(queue, "w") == 0
    sync.run_now(eng, "u")
    assert sync.run_due(queue, "w") == 1
    sync.remove_schedule(eng, "u")
    assert sync.list_schedules(eng) == []
    with pytest.raises(sync.ScheduleNotFound):
        sync.remove_schedule(eng, "u")
    with pytest.raises(sync.ScheduleNotFound):
        sync.run_now(eng, "u")


def test_disabled_schedules_do_not_run(queue: Queue) -> None:
    sync.add_schedule(queue.engine, "off", "messenger.structure", {}, "1m", enabled=False)
    assert sync.run_due(queue, "w") == 0 and roots(queue.engine) == 0


def test_schedules_from_the_toml_file_are_upserted_when_the_worker_starts(
        tmp_path: Path, db_url: str, queue: Queue, live_settings: Settings) -> None:
    cfg = tmp_path / "sqlbridge.toml"
    cfg.write_text("""
[[schedules]]
name = "unread"
operation = "sync.chats"
params = { unread_only = true, platform = "telegram" }
interval = "5m"
max_children = 50

[[schedules]]
name = "anna-structure"
operation = "messenger.structure"
interval = 3600
enabled = false
""")
    settings = config.load(cfg, env={}).with_database_url(db_url)
    run_with = dataclasses.replace(live_settings, schedules=settings.schedules)
    Worker(run_with, queue.engine).run(once=True)
    by_name = {s["name"]: s for s in sync.list_schedules(queue.engine)}
    assert by_name["unread"]["params"] == {"unread_only": True, "platform": "telegram"}
    assert by_name["unread"]["max_children"] == 50 and by_name["unread"]["last_run"]
    assert by_name["anna-structure"]["enabled"] is False
    assert by_name["anna-structure"]["interval_seconds"] == 3600
    with queue.engine.connect() as c:
        ops = set(c.execute(select(outbox.c.operation)).scalars())
    assert "chat.getunreadmessages" in ops and "messenger.structure" not in ops

    with pytest.raises(ConfigError, match=r"\[\[schedules\]\] #1 \(x\): unknown key 'every'"):
        sync.load_from_config(queue.engine, [{"name": "x", "operation": "sync.chats",
                                              "every": "5m"}])
    with pytest.raises(ConfigError, match="'interval' is required"):
        sync.load_from_config(queue.engine, [{"name": "x", "operation": "sync.chats"}])
    with pytest.raises(ConfigError, match="#1 \\(x\\): interval"):
        sync.load_from_config(queue.engine, [{"name": "x", "operation": "sync.chats",
                                              "interval": "often"}])


def cli(*args: str) -> tuple[int, str, str]:
    from sqlbridge.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_the_schedule_commands(db_url: str, engine: Engine) -> None:
    from sqlbridge.cli import EXIT_INVALID, EXIT_NOT_FOUND

    code, out, _ = cli("schedule", "add", "chats", "sync.chats", "--param", "unread_only=true",
                       "--interval", "15m", "--max-children", "200", "--database-url", db_url)
    assert code == 0 and "saved" in out
    code, out, _ = cli("schedule", "add", "req", "messenger.requests", "-p", "userId=1001",
                       "--interval", "1h", "--disabled", "--database-url", db_url)
    assert code == 0
    code, out, _ = cli("schedule", "list", "--json", "--database-url", db_url)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["chats"]["params"] == {"unread_only": True}
    assert rows["chats"]["interval_seconds"] == 900 and rows["chats"]["max_children"] == 200
    assert rows["req"]["enabled"] is False and rows["req"]["params"] == {"userId": "1001"}
    code, out, _ = cli("schedule", "list", "--database-url", db_url)
    assert code == 0 and "sync.chats" in out and "messenger.requests" in out
    assert cli("schedule", "run-now", "req", "--database-url", db_url)[0] == 0
    assert cli("schedule", "remove", "req", "--database-url", db_url)[0] == 0
    code, _, err = cli("schedule", "remove", "req", "--database-url", db_url)
    assert code == EXIT_NOT_FOUND and "schedule 'req' does not exist" in err
    code, _, err = cli("schedule", "add", "bad", "sync.chats", "--interval", "sometimes",
                       "--database-url", db_url)
    assert code == EXIT_INVALID and "interval" in err


def test_the_scheduler_statements_parse_as_t_sql(tmp_path: Path) -> None:
    from tests.test_tsql_parse import as_tsql as _parsable
    from tests.test_tsql_parse import parse_errors

    statements = sync.mssql_statements()
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in statements["schedule_pick"]
    assert " IS 1" not in "".join(statements.values())  # SQLite's spelling, not T-SQL
    script = ";\nGO\n".join(_parsable(s) for s in statements.values()) + ";\n"
    assert parse_errors(script, tmp_path) == ""

"""A full chat sync against the sandbox over loopback, with real worker threads: every message
lands once, re-syncs are idempotent, unread flags follow the API, faults are absorbed, the
fan-out respects its limit, and a schedule's last_status tells how its run went."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, true

from sqlbridge import sync
from sqlbridge.config import Settings
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Faults, Sandbox
from sqlbridge.sandbox.server import SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER
from sqlbridge.schema import chat, chat_channel, chat_message, outbox, outbox_attempt
from sqlbridge.worker import Worker


@pytest.fixture
def live(settings: Settings, sandbox: Sandbox) -> Settings:
    """A bigger pool than the default tests use: a full sync is 154 requests."""
    return dataclasses.replace(settings, accounts={"default": sandbox.account()},
                               worker=dataclasses.replace(settings.worker, concurrency=16,
                                                          max_attempts=6))


def count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def operations(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(select(outbox.c.operation, func.count())
                              .group_by(outbox.c.operation)).all())


def test_a_full_sync_lands_every_message_once_and_a_resync_changes_nothing(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    total = sandbox.state.populate(channels=3, chats_per_channel=50, messages_per_chat=200)
    first = sync.sync_now(live, queue.engine)
    assert first.requests == {"succeeded": 1 + 3 + 150} and first.failures == []
    assert first.tables["chat_message"] == {"inserted": total, "updated": 0}
    assert total == 30_000 and count(queue.engine, chat_message) == 30_000
    with queue.engine.connect() as c:  # exactly once: no natural key twice
        assert c.execute(select(func.count(func.distinct(chat_message.c.messageid)))
                         ).scalar_one() == 30_000
    assert first.tables["chat"]["inserted"] == 150
    assert first.tables["chat_channel"]["inserted"] == 3

    second = sync.sync_now(live, queue.engine)
    assert second.tables["chat_message"] == {"inserted": 0, "updated": 30_000}
    assert count(queue.engine, chat_message) == 30_000
    assert count(queue.engine, chat) == 150 and count(queue.engine, chat_channel) == 3

    # New traffic between syncs shows up; the rest stays as it was.
    mid = sandbox.state.add_incoming_message("whatsapp", "100", "34600000000", "chegou agora ✓")
    third = sync.sync_now(live, queue.engine)
    assert third.tables["chat_message"]["inserted"] == 1
    with queue.engine.connect() as c:
        row = c.execute(select(chat_message).where(chat_message.c.messageid == mid)).one()
    assert row.message == "chegou agora ✓" and row.sent is False
    assert count(queue.engine, chat_message) == 30_001

    (state,) = sync.list_schedules(queue.engine)  # sync_now records its runs too
    assert state["name"] == "sync-now:default" and state["enabled"] is False
    assert state["last_status"] == "succeeded" and state["last_run"] == {"succeeded": 154}


def test_unread_flags_clear_when_messages_are_read_in_the_api(live: Settings, sandbox: Sandbox,
                                                              queue: Queue) -> None:
    sandbox.state.populate(channels=1, chats_per_channel=5, messages_per_chat=20,
                           unread_ratio=1.0)
    summary = sync.sync_now(live, queue.engine, unread_only=True)
    assert operations(queue.engine)["chat.getunreadmessages"] == 5
    assert "chat.getmessages" not in operations(queue.engine)
    unread = count(queue.engine, chat_message, chat_message.c.unread == true())
    assert unread == summary.tables["chat_message"]["inserted"] == 5 * 10  # the incoming half
    sandbox.state.mark_read("whatsapp", "100", "34600000000")
    sync.sync_now(live, queue.engine, unread_only=True)
    assert count(queue.engine, chat_message, chat_message.c.unread == true()) == unread - 10
    assert count(queue.engine, chat_message, chat_message.c.destination == "34600000000",
                 chat_message.c.unread == true()) == 0


def test_a_worker_runs_due_schedules_by_itself_with_the_platform_filter(
        live: Settings, queue: Queue) -> None:
    sid = sync.add_schedule(queue.engine, "chats", "sync.chats", {"platform": "telegram"}, "5m")
    Worker(live, queue.engine).run(once=True)
    ops = operations(queue.engine)
    # Only the telegram channel fans out (the filter), into its chats.
    assert ops == {"chat.getchatchannels": 1, "chat.getchats": 1, "chat.getmessages": 2}
    with queue.engine.connect() as c:
        rows = c.execute(select(outbox.c.id, outbox.c.parent_id, outbox.c.schedule_id,
                                outbox.c.operation).order_by(outbox.c.id)).all()
    root, channel = rows[0], rows[1]
    assert root.parent_id is None and channel.parent_id == root.id
    assert all(r.parent_id == channel.id for r in rows[2:])
    assert {r.schedule_id for r in rows} == {sid}  # ids are never assumed (SQL Server: any)
    sync.settle(queue.engine)
    (state,) = sync.list_schedules(queue.engine)
    assert state["last_run"] == {"succeeded": 4} and state["last_status"] == "succeeded"
    assert state["last_request_id"] == root.id


def test_fan_out_stops_at_max_children_and_says_so(live: Settings, sandbox: Sandbox,
                                                   queue: Queue) -> None:
    sandbox.state.populate(channels=1, chats_per_channel=30, messages_per_chat=2)
    sync.add_schedule(queue.engine, "capped", "sync.chats", {}, "1h", max_children=10)
    Worker(live, queue.engine).run(once=True)
    assert count(queue.engine, outbox) == 1 + 10  # 1 getchats + 9 of the 30 getmessages
    (state,) = sync.list_schedules(queue.engine)
    assert "fan-out limited: 21 chat.getmessages requests not started" in state["last_error"]


def test_faults_during_a_sync_are_retried_and_nothing_is_duplicated(
        live: Settings, queue: Queue) -> None:
    with Sandbox(seed=11, faults=Faults(error_rate=0.15, rate_limit_rate=0.0, seed=11)) as sb:
        sb.state.populate(channels=2, chats_per_channel=10, messages_per_chat=30)
        settings = dataclasses.replace(live, accounts={"default": sb.account()})
        summary = sync.sync_now(settings, queue.engine)
    assert summary.requests == {"succeeded": 1 + 2 + 20} and summary.failures == []
    assert count(queue.engine, chat_message) == 2 * 10 * 30
    assert summary.tables["chat_message"]["inserted"] == 600
    assert count(queue.engine, outbox, outbox.c.operation == "chat.getmessages") == 20
    # The faults really happened, were recorded, and were absorbed.
    assert count(queue.engine, outbox_attempt, outbox_attempt.c.outcome == "retry") > 0
    assert Queue(queue.engine, settings).summary()["by_status"] == {"succeeded": 23}


def test_a_sync_whose_root_keeps_failing_shows_the_failure_everywhere(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    # Its failures open the account's circuit breaker on the way (5 in a row): the sync
    # probes it itself after the pause, as a worker would.
    acct = live.accounts["default"]
    live = dataclasses.replace(live, accounts={"default": dataclasses.replace(
        acct, afilnet=dataclasses.replace(acct.afilnet, breaker_cooldown=0.2))})
    assert live.worker.max_attempts > acct.afilnet.breaker_failures
    sandbox.fail_next(live.worker.max_attempts, "500")
    summary = sync.sync_now(live, queue.engine)
    assert summary.requests == {"failed": 1}
    (failure,) = summary.failures
    assert failure["operation"] == "chat.getchatchannels" and failure["error_code"]
    recent = queue.summary()["recent_failures"]
    assert [r["id"] for r in recent] == [summary.root_id]
    (state,) = sync.list_schedules(queue.engine)
    assert state["last_status"] == "failed"


def test_the_sync_command_prints_rows_per_table(tmp_path: Path, db_url: str, engine: Engine,
                                                sandbox: Sandbox) -> None:
    from sqlbridge.cli import main

    sandbox.state.populate(channels=2, chats_per_channel=3, messages_per_chat=4)
    cfg = tmp_path / "sqlbridge.toml"
    cfg.write_text(f"""
[worker]
concurrency = 8
poll_interval = 0.05
backoff_base = 0.05
backoff_max = 0.2

[accounts.default.afilnet]
url = {json.dumps(sandbox.afilnet_post_url)}
user = {json.dumps(SANDBOX_AFILNET_USER)}
password = {json.dumps(SANDBOX_AFILNET_PASSWORD)}
""")
    result = CliRunner().invoke(main, ["sync", "--config", str(cfg), "--database-url", db_url],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "succeeded 9" in result.stdout  # 1 + 2 + 6 requests
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
             if line.startswith("chat")}
    assert lines["chat_message"] == ["24", "0"] and lines["chat"] == ["6", "0"]
    assert "sync: 9/9 requests finished" in result.stderr  # plain lines: not a terminal

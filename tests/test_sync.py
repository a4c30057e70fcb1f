"""Scheduled sync against a big sandbox: every message once, re-syncs idempotent, one run per
due slot however many workers, misfires run once, take_messages hands each message out once."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from sqlbridge import sync
from sqlbridge.config import Settings
from sqlbridge.messages import take_messages
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Faults, Sandbox
from sqlbridge.schema import chat_message, outbox, sync_schedule
from sqlbridge.worker import Worker


@pytest.fixture
def live(settings: Settings, sandbox: Sandbox) -> Settings:
    """A bigger pool than the default tests use: a full sync is 154 requests."""
    return dataclasses.replace(settings, accounts={"default": sandbox.account()},
                               worker=dataclasses.replace(settings.worker, concurrency=16,
                                                          max_attempts=6))


def count(engine, table, *where) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_a_full_sync_lands_every_message_once_and_a_resync_changes_nothing(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    total = sandbox.state.populate(channels=3, chats_per_channel=50, messages_per_chat=200)
    first = sync.sync_now(live, queue.engine)
    assert first.requests == {"succeeded": 1 + 3 + 150}
    assert first.tables["chat_message"]["inserted"] == total == 30_000
    assert count(queue.engine, chat_message) == 30_000
    assert first.tables["chat"]["inserted"] == 150
    second = sync.sync_now(live, queue.engine)
    assert second.tables["chat_message"]["inserted"] == 0
    assert count(queue.engine, chat_message) == 30_000

    # New traffic between syncs shows up; the rest stays as it was.
    mid = sandbox.state.add_incoming_message("whatsapp", "100", "34600000000", "chegou agora")
    third = sync.sync_now(live, queue.engine)
    assert third.tables["chat_message"]["inserted"] == 1
    assert count(queue.engine, chat_message, chat_message.c.messageid == mid) == 1


def test_unread_flags_clear_when_messages_are_read_in_the_api(live: Settings, sandbox: Sandbox,
                                                              queue: Queue) -> None:
    sandbox.state.populate(channels=1, chats_per_channel=5, messages_per_chat=20,
                           unread_ratio=1.0)
    sync.sync_now(live, queue.engine, unread_only=True)
    unread = count(queue.engine, chat_message, chat_message.c.unread.is_(True))
    assert unread == 5 * 10  # every incoming message
    sandbox.state.mark_read("whatsapp", "100", "34600000000")
    sync.sync_now(live, queue.engine, unread_only=True)
    assert count(queue.engine, chat_message, chat_message.c.unread.is_(True)) == unread - 10
    assert count(queue.engine, chat_message, chat_message.c.destination == "34600000000",
                 chat_message.c.unread.is_(True)) == 0


def test_two_workers_and_one_due_schedule_make_one_run(live: Settings, queue: Queue) -> None:
    sync.add_schedule(queue.engine, "structure", "messenger.structure", {}, "1h")
    barrier = threading.Barrier(2)
    started: list[int] = []

    def worker_tick() -> None:
        barrier.wait()
        started.append(sync.run_due(queue, f"w{threading.get_ident()}"))

    threads = [threading.Thread(target=worker_tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(started) == [0, 1]
    assert count(queue.engine, outbox) == 1


def test_a_schedule_missed_for_many_intervals_runs_once_and_stays_on_its_grid(
        queue: Queue) -> None:
    sid = sync.add_schedule(queue.engine, "requests", "messenger.requests",
                            {"userId": "1001"}, "60s")
    with queue.engine.connect() as c:
        slot = c.execute(select(sync_schedule.c.next_run_at)).scalar_one()
    missed = slot - timedelta(hours=1)  # the worker was down for an hour
    with queue.engine.begin() as c:
        c.execute(update(sync_schedule).values(next_run_at=missed))
    assert sync.run_due(queue, "w") == 1
    assert sync.run_due(queue, "w") == 0
    assert count(queue.engine, outbox, outbox.c.schedule_id == sid) == 1
    with queue.engine.connect() as c:
        nxt = c.execute(select(sync_schedule.c.next_run_at)).scalar_one()
    assert nxt > datetime.utcnow() - timedelta(seconds=1)  # in the future...
    assert (nxt - missed).total_seconds() % 60 == 0  # ...and on the 60 s grid: no drift


def test_a_worker_runs_due_schedules_by_itself(live: Settings, queue: Queue) -> None:
    sync.add_schedule(queue.engine, "chats", "sync.chats", {"platform": "telegram"}, "5m")
    Worker(live, queue.engine).run(once=True)
    ops = {}
    with queue.engine.connect() as c:
        for op, n in c.execute(select(outbox.c.operation, func.count())
                               .group_by(outbox.c.operation)):
            ops[op] = n
    # Only the telegram channel fans out (the filter), into its chats.
    assert ops["chat.getchatchannels"] == 1 and ops["chat.getchats"] == 1
    assert ops["chat.getmessages"] == 2
    (state,) = sync.list_schedules(queue.engine)
    assert state["last_run"] == {"succeeded": 4}


def test_fan_out_stops_at_max_children(live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    sandbox.state.populate(channels=1, chats_per_channel=30, messages_per_chat=2)
    sync.add_schedule(queue.engine, "capped", "sync.chats", {}, "1h", max_children=10)
    Worker(live, queue.engine).run(once=True)
    assert count(queue.engine, outbox) == 1 + 10
    (state,) = sync.list_schedules(queue.engine)
    assert "fan-out limited" in state["last_error"]


def test_faults_during_a_sync_are_retried_and_nothing_is_duplicated(
        live: Settings, queue: Queue) -> None:
    with Sandbox(seed=11, faults=Faults(error_rate=0.15, rate_limit_rate=0.0, seed=11)) as sb:
        sb.state.populate(channels=2, chats_per_channel=10, messages_per_chat=30)
        settings = dataclasses.replace(live, accounts={"default": sb.account()})
        summary = sync.sync_now(settings, queue.engine)
    assert summary.requests == {"succeeded": 1 + 2 + 20}
    assert count(queue.engine, chat_message) == 2 * 10 * 30
    with queue.engine.connect() as c:
        retried = c.execute(select(func.count()).select_from(outbox)
                            .where(outbox.c.attempts > 1)).scalar_one()
    assert retried > 0  # the faults really happened, and were absorbed


def test_two_consumers_take_each_incoming_message_exactly_once(queue: Queue) -> None:
    from sqlbridge import inbox

    records = [{"platform": "whatsapp", "platformid": "100", "messageid": f"m{i}",
                "destination": "1", "message": f"m{i}", "sent": i % 4 == 0, "status": "x",
                "datetime": None} for i in range(400)]
    with queue.engine.begin() as c:
        inbox.write(c, "chat_message", "default", {}, records, None)
    taken: list[int] = []
    lock = threading.Lock()

    def consumer(name: str) -> None:
        while batch := take_messages(queue.engine, name, 13):
            with lock:
                taken.extend(r["id"] for r in batch)

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == 300  # the 100 outgoing ones are not "incoming"
    assert take_messages(queue.engine, "late", 10) == []


def test_schedule_rules_are_checked_when_saved(queue: Queue) -> None:
    from sqlbridge.errors import ValidationError

    with pytest.raises(ValidationError, match="interval 'soon'"):
        sync.add_schedule(queue.engine, "x", "sync.chats", {}, "soon")
    with pytest.raises(ValidationError, match="unknown option 'colour'"):
        sync.add_schedule(queue.engine, "x", "sync.chats", {"colour": "red"}, "5m")
    with pytest.raises(ValidationError, match="'userId' or both"):
        sync.add_schedule(queue.engine, "x", "messenger.requests", {}, "5m")
    assert sync.parse_interval("1h") == 3600 and sync.parse_interval(90) == 90

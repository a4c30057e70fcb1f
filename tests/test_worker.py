"""The worker against the sandbox over real HTTP, in threads and in real processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, insert, select

from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.queue import Queue
from sqlbridge.sandbox import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
    SANDBOX_ANNA_USER,
    Sandbox,
)
from sqlbridge.schema import outbox, outbox_attempt
from sqlbridge.worker import Worker

CHAT = {"platform": "whatsapp", "platformid": "100"}


def message(i: int) -> dict[str, str]:
    return {**CHAT, "destination": f"3460{i:07d}", "message": f"hello {i} & 😀"}


def statuses(queue: Queue) -> dict[str, int]:
    with queue.engine.connect() as c:
        return dict(c.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
                    .all())


def worker_env(sb: Sandbox, db_url: str) -> dict[str, str]:
    return {**os.environ, "SQLBRIDGE_DATABASE_URL": db_url,
            "SQLBRIDGE_AFILNET_URL": sb.afilnet_post_url,
            "SQLBRIDGE_AFILNET_USER": SANDBOX_AFILNET_USER,
            "SQLBRIDGE_AFILNET_PASSWORD": SANDBOX_AFILNET_PASSWORD,
            "SQLBRIDGE_ANNA_URL": sb.anna_url,
            "SQLBRIDGE_ANNA_COMPANY_HASH": SANDBOX_ANNA_COMPANY_HASH,
            "SQLBRIDGE_ANNA_USER": SANDBOX_ANNA_USER,
            "SQLBRIDGE_ANNA_PASSWORD": SANDBOX_ANNA_PASSWORD,
            "SQLBRIDGE_CONFIG": ""}


def start_worker(sb: Sandbox, db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sqlbridge", "worker", "--no-schedules",
         "--poll-interval", "0.1", *args],
        env=worker_env(sb, db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_worker_sends_every_request_and_records_one_attempt_each(live: Settings,
                                                                    queue: Queue) -> None:
    ids = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(40)]
    stats = Worker(live, queue.engine, schedules=False).run(once=True)
    assert stats.succeeded == 40
    assert statuses(queue) == {"succeeded": 40}
    row = queue.get(ids[0], with_attempts=True)
    assert row["http_status"] == 200 and len(row["attempt_rows"]) == 1


def test_several_worker_processes_never_send_the_same_row_twice(
        sandbox: Sandbox, db_url: str, queue: Queue) -> None:
    for i in range(240):
        queue.enqueue("chat.sendmessage", message(i))
    procs = [start_worker(sandbox, db_url, "--once", "--concurrency", "4", "--batch", "7")
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert statuses(queue) == {"succeeded": 240}
    with queue.engine.connect() as c:
        per_request = c.execute(select(outbox_attempt.c.request_id, func.count())
                                .group_by(outbox_attempt.c.request_id)).all()
        workers = c.execute(select(func.count(func.distinct(outbox_attempt.c.worker)))).scalar()
    assert len(per_request) == 240 and {n for _, n in per_request} == {1}
    assert workers >= 2  # the work really was shared
    # The sandbox received each message exactly once.
    sent = [m for i in range(240) for m in sandbox.state.messages("whatsapp", "100",
                                                                  f"3460{i:07d}")
            if m["message"] == f"hello {i} & 😀"]
    assert len(sent) == 240


def test_a_killed_worker_s_reads_run_again_and_its_sends_become_uncertain(
        sandbox: Sandbox, db_url: str, queue: Queue, live: Settings) -> None:
    sandbox.faults.latency_ms = 3000  # every call is in flight when the worker dies
    reads = [queue.enqueue("chat.getchats", CHAT).id for _ in range(3)]
    sends = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(3)]
    proc = start_worker(sandbox, db_url, "--concurrency", "8", "--lease", "1")
    wait_until(lambda: statuses(queue).get("processing", 0) == 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    sandbox.faults.latency_ms = 0
    time.sleep(1.2)  # the dead worker's lease runs out
    Worker(live, queue.engine, schedules=False).run(once=True)
    assert {queue.get(r)["status"] for r in reads} == {"succeeded"}
    for r in sends:
        row = queue.get(r, with_attempts=True)
        assert row["status"] == "uncertain" and row["error_code"] == "LEASE_EXPIRED"
        assert [a["outcome"] for a in row["attempt_rows"]] == ["lost_lease"]


def test_sigterm_lets_calls_in_flight_finish_and_leaves_nothing_processing(
        sandbox: Sandbox, db_url: str, queue: Queue) -> None:
    sandbox.faults.latency_ms = 1000
    for i in range(4):
        queue.enqueue("chat.sendmessage", message(i))
    proc = start_worker(sandbox, db_url, "--concurrency", "4")
    wait_until(lambda: statuses(queue).get("processing", 0) == 4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert statuses(queue) == {"succeeded": 4}
    assert "4 succeeded" in out


def test_5xx_answers_are_retried_with_backoff_until_they_succeed(live: Settings,
                                                                 sandbox: Sandbox,
                                                                 queue: Queue) -> None:
    sandbox.fail_next(2, "503")
    rid = queue.enqueue("chat.getchatchannels", {}).id
    Worker(live, queue.engine, schedules=False).run(once=True)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "succeeded" and row["attempts"] == 3
    tries = row["attempt_rows"]
    assert [(a["outcome"], a["http_status"]) for a in tries] == [
        ("retry", 503), ("retry", 503), ("succeeded", 200)]
    gap = (tries[1]["started_at"] - tries[0]["started_at"]).total_seconds()
    assert gap >= live.worker.backoff_base / 2  # backoff waited at least its lower bound


def test_retry_after_on_429_is_honoured(live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    # Retry-After is honoured up to backoff_max (the fast test settings cap it at 0.2 s).
    live = dataclasses.replace(live, worker=dataclasses.replace(live.worker, backoff_max=5))
    sandbox.fail_next(1, "429")  # Retry-After: 1
    rid = queue.enqueue("chat.getchatchannels", {}).id
    Worker(live, queue.engine, schedules=False).run(once=True)
    tries = queue.get(rid, with_attempts=True)["attempt_rows"]
    assert [a["http_status"] for a in tries] == [429, 200]
    assert (tries[1]["started_at"] - tries[0]["started_at"]).total_seconds() >= 1.0


def test_max_attempts_turns_a_failing_request_into_a_dead_letter(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    sandbox.fail_next(10, "500")
    rid = queue.enqueue("chat.getchatchannels", {}, max_attempts=2).id
    Worker(live, queue.engine, schedules=False).run(once=True)
    row = queue.get(rid)
    assert (row["status"], row["attempts"], row["http_status"]) == ("failed", 2, 500)
    assert "gave up after 2 attempts" in row["error_message"]


def test_a_send_that_timed_out_after_leaving_becomes_uncertain(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    account = sandbox.account("default")
    fast = dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet,
                                                                    read_timeout=0.5))
    settings = dataclasses.replace(live, accounts={"default": fast})
    sandbox.faults.timeout_seconds = 1.5
    sandbox.fail_next(1, "timeout")
    rid = queue.enqueue("chat.sendmessage", message(1)).id
    Worker(settings, queue.engine, schedules=False).run(once=True)
    row = queue.get(rid)
    assert row["status"] == "uncertain"
    assert "not sent again" in row["error_message"]


def test_a_send_that_never_left_is_retried(live: Settings, queue: Queue) -> None:
    closed = dataclasses.replace(live.account("default"))
    closed = dataclasses.replace(closed, afilnet=dataclasses.replace(
        closed.afilnet, url="http://127.0.0.1:9/api/http/"))  # nothing listens on port 9
    settings = dataclasses.replace(live, accounts={"default": closed})
    rid = queue.enqueue("chat.sendmessage", message(1), max_attempts=2).id
    Worker(settings, queue.engine, schedules=False).run(once=True)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "failed" and len(row["attempt_rows"]) == 2


def test_a_bad_row_inserted_directly_fails_like_the_procedure_and_the_rest_still_run(
        live: Settings, queue: Queue) -> None:
    with queue.engine.begin() as c:
        c.execute(insert(outbox).values(operation="chat.sendmessage",
                                        params='{"platform": "sms", "platformid": "1"}'))
        c.execute(insert(outbox).values(operation="chat.getchatchannels", params="{}"))
        c.execute(insert(outbox).values(operation="no.such.thing", params="{}"))
    Worker(live, queue.engine, schedules=False).run(once=True)
    with queue.engine.connect() as c:
        ids = c.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars().all()
    bad, good, unknown = (queue.get(i) for i in ids)
    assert (bad["status"], bad["error_code"]) == ("failed", "INVALID_PARAM_VALUE")
    assert bad["error_message"] == ("chat.sendmessage: parameter 'platform' must be one of "
                                    "webchat, whatsapp, telegram, operator; got 'sms'")
    assert good["status"] == "succeeded" and good["provider"] == "afilnet"
    assert (unknown["status"], unknown["error_code"]) == ("failed", "UNKNOWN_OPERATION")


@pytest.mark.sqlite_only
def test_the_worker_survives_a_database_that_is_locked_for_a_while(
        live: Settings, db_url: str, queue: Queue) -> None:
    for i in range(5):
        queue.enqueue("chat.sendmessage", message(i))
    path = db_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
    engine = make_engine(db_url, busy_timeout_ms=100)
    worker = Worker(live, engine, schedules=False)
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    thread.start()
    time.sleep(1.0)
    blocker.execute("ROLLBACK")
    blocker.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert worker.stats.db_errors > 0 and worker.stats.succeeded == 5


@pytest.mark.sqlite_only
def test_secrets_never_reach_the_outbox(live: Settings, sandbox: Sandbox, queue: Queue,
                                        db_url: str) -> None:
    queue.enqueue("user.userhash", {"userId": "1003"})  # the vendor echoes the company hash
    queue.enqueue("messenger.structure", {})
    queue.enqueue("chat.getchatchannels", {})
    Worker(live, queue.engine, schedules=False).run(once=True)
    dump = "\n".join(sqlite3.connect(db_url.removeprefix("sqlite:///")).iterdump())
    for secret in (SANDBOX_AFILNET_PASSWORD, SANDBOX_ANNA_COMPANY_HASH, SANDBOX_ANNA_PASSWORD,
                   SANDBOX_AFILNET_USER):
        assert secret not in dump
    assert "está inativo" in dump  # the vendor's message itself is kept


def test_secrets_never_reach_a_log_line(live: Settings, sandbox: Sandbox, queue: Queue,
                                        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    sandbox.fail_next(1, "503")
    queue.enqueue("user.userhash", {"userId": "1003"})
    queue.enqueue("chat.getchatchannels", {})
    queue.enqueue("messenger.structure", {})
    Worker(live, queue.engine, schedules=False).run(once=True)
    assert "sqlbridge.worker" in caplog.text  # the worker did log
    for secret in (SANDBOX_AFILNET_PASSWORD, SANDBOX_ANNA_COMPANY_HASH, SANDBOX_ANNA_PASSWORD):
        assert secret not in caplog.text


def test_a_call_longer_than_the_lease_keeps_its_row_by_renewing(live: Settings,
                                                               sandbox: Sandbox,
                                                               queue: Queue) -> None:
    sandbox.faults.latency_ms = 2500  # two and a half leases
    rid = queue.enqueue("chat.sendmessage", message(7)).id
    worker = Worker(live, queue.engine, schedules=False, lease_seconds=1.0)
    worker.run(once=True)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "succeeded" and len(row["attempt_rows"]) == 1
    assert worker.stats.recovered.get("uncertain", 0) == 0

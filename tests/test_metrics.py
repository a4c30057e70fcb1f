"""The metrics and health endpoint, scraped over real HTTP while a real worker runs against the
sandbox; counters checked against the outbox, labels and values checked for secrets."""

from __future__ import annotations

import dataclasses
import json
import queue as stdqueue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select

from sqlbridge import registry
from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.dberrors import KINDS
from sqlbridge.metrics import OTHER, Labels, MetricsServer, WorkerMetrics
from sqlbridge.monitoring import queue_health, totals
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

from .test_worker import CHAT, message, worker_env

SECRETS = (SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER, SANDBOX_ANNA_COMPANY_HASH,
           SANDBOX_ANNA_PASSWORD, SANDBOX_ANNA_USER)
HOSTILE_OPERATION = 'evil.op"} 1\nsqlbridge_fake{a="'
HOSTILE_ACCOUNT = "acct\"\n{}" + SANDBOX_AFILNET_PASSWORD


def wait_until(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics, by sample name."""
    text = requests.get(url + "/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, [])
               if all(lab.get(k) == want for k, want in labels.items()))


def count_rows(queue: Queue, *where: object, table: object = outbox) -> int:
    with queue.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table).where(*where)).scalar())


def test_counters_scraped_during_a_run_match_the_outbox_and_carry_no_secret(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    metrics = WorkerMetrics(live.accounts)
    # A send that times out after leaving: uncertain (its own run, so no other call meets it).
    account = live.account("default")
    impatient = dataclasses.replace(live, accounts={"default": dataclasses.replace(
        account, afilnet=dataclasses.replace(account.afilnet, read_timeout=0.5))})
    sandbox.faults.timeout_seconds = 1.5
    sandbox.fail_next(1, "timeout")
    queue.enqueue("chat.sendmessage", message(999))
    Worker(impatient, queue.engine, schedules=False, observer=metrics).run(once=True)

    # Then a mixed load: sends, reads, a refused channel, a hostile direct INSERT, and random
    # 503s (retried, some until max_attempts).
    for i in range(24):
        queue.enqueue("chat.sendmessage", message(i))
    for _ in range(8):
        queue.enqueue("chat.getchats", CHAT)
    queue.enqueue("chat.sendmessage", {**message(1), "platformid": "404"})
    with queue.engine.begin() as c:
        c.execute(insert(outbox).values(operation=HOSTILE_OPERATION, account=HOSTILE_ACCOUNT,
                                        params="{}"))
    sandbox.faults.error_rate = 0.25
    sandbox.faults.latency_ms = 150
    worker = Worker(live, queue.engine, schedules=False, observer=metrics)
    with MetricsServer(metrics, queue.engine, port=0, queue_interval=0.1) as server:
        assert server.address[0] == "127.0.0.1"
        # The queue figures, read from the database on the sampler's clock.
        wait_until(lambda: total(scrape(server.url), "sqlbridge_queue_requests",
                                 state="queued") == 34)
        figures = scrape(server.url)
        assert total(figures, "sqlbridge_queue_requests", operation=OTHER, state="queued") == 1
        assert totals(queue_health(queue.engine))["queued"] == 34
        thread = threading.Thread(target=worker.run, kwargs={"once": True})
        thread.start()
        # Scraped during the run: calls in flight, health green.
        wait_until(lambda: total(scrape(server.url), "sqlbridge_inflight_calls") > 0)
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        thread.join(timeout=120)
        assert not thread.is_alive()
        text = requests.get(server.url + "/metrics", timeout=10).text
        samples = scrape(server.url)

    for status in ("succeeded", "failed", "uncertain"):
        assert total(samples, "sqlbridge_requests_finished_total", outcome=status) == \
            count_rows(queue, outbox.c.status == status), status
    assert count_rows(queue, outbox.c.status == "uncertain") == 1
    assert total(samples, "sqlbridge_uncertain_total") == 1
    retries = count_rows(queue, outbox_attempt.c.outcome == "retry", table=outbox_attempt)
    assert retries > 0 and total(samples, "sqlbridge_retries_total") == retries
    attempts = count_rows(queue, table=outbox_attempt)
    assert total(samples, "sqlbridge_claimed_requests_total") == attempts
    # Every attempt but the hostile row's (refused before any HTTP) has an HTTP duration.
    assert total(samples, "sqlbridge_http_request_duration_seconds_count",
                 provider="afilnet") == attempts - 1
    assert total(samples, "sqlbridge_requests_finished_total", operation=OTHER,
                 account=OTHER, outcome="failed") == 1
    assert total(samples, "sqlbridge_claims_total") >= 2
    assert total(samples, "sqlbridge_inflight_calls") == 0
    assert total(samples, "sqlbridge_database_up") == 1

    # Labels come from closed lists; no secret, message or hostile text anywhere.
    allowed = {"operation": set(registry.OPERATIONS) | {OTHER},
               "account": {"default", OTHER},
               "outcome": {"succeeded", "failed", "uncertain", "queued"},
               "provider": {"afilnet", "anna", "http", OTHER},
               "kind": set(KINDS) | {OTHER},
               "state": {"queued", "due", "processing", "stuck", "uncertain",
                         "closed", "open", "half_open"}}  # queue figures, circuit breakers
    for name, rows in samples.items():
        for labels, _ in rows:
            for key, value in labels.items():
                if key in ("le", "quantile"):
                    continue
                assert value in allowed[key], (name, key, value)
    for secret in (*SECRETS, *live.secrets()):
        assert secret not in text
    assert "hello" not in text and "evil" not in text and "acct" not in text


def test_healthz_fails_while_the_database_is_unreachable_and_recovers(
        live: Settings, db_url: str, queue: Queue) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("holds SQLite's write lock to cut the worker off")
    metrics = WorkerMetrics(live.accounts)
    engine = make_engine(db_url, busy_timeout_ms=50)
    worker = Worker(live, engine, schedules=False, observer=metrics)
    with MetricsServer(metrics, engine, port=0, queue_interval=60) as server:
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(lambda: requests.get(server.url + "/healthz", timeout=10)
                       .status_code == 200 and metrics.last_db_ok is not None)
            blocker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the whole database
            wait_until(lambda: requests.get(server.url + "/healthz", timeout=10)
                       .status_code == 503)
            body = requests.get(server.url + "/healthz", timeout=10).json()
            assert body["status"] == "unhealthy" and body["database"].startswith("unreachable")
            assert total(scrape(server.url), "sqlbridge_db_errors_total", kind="locked") > 0
            assert total(scrape(server.url), "sqlbridge_database_up") == 0
            blocker.execute("ROLLBACK")
            blocker.close()
            wait_until(lambda: requests.get(server.url + "/healthz", timeout=10)
                       .status_code == 200)
        finally:
            worker.stop()
            thread.join(timeout=60)
    engine.dispose()


def test_healthz_fails_when_the_loop_stalls() -> None:
    metrics = WorkerMetrics(stall_after=0.3)
    metrics.loop(0)
    assert metrics.health()[0]
    wait_until(lambda: not metrics.health()[0], timeout=30)  # nobody calls loop() any more
    assert "stalled" in metrics.health()[1]["loop"]
    metrics.loop(0)
    assert metrics.health()[0]


def test_readyz_waits_for_the_schema(tmp_path: Path) -> None:
    from sqlbridge.install import install

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    metrics = WorkerMetrics()
    with MetricsServer(metrics, engine, port=0, queue_interval=1) as server:
        wait_until(lambda: "missing tables" in requests.get(server.url + "/readyz",
                                                            timeout=10).text)
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 503
        install(engine)
        wait_until(lambda: requests.get(server.url + "/readyz", timeout=10).status_code == 200)
        assert requests.get(server.url + "/readyz", timeout=10).json()["schema"] == "verified"
        assert requests.get(server.url + "/nope", timeout=10).status_code == 404
    engine.dispose()


@given(st.text(max_size=300), st.one_of(st.none(), st.integers(), st.text(max_size=50)))
def test_any_operation_or_account_becomes_a_bounded_label(name: str, other: object) -> None:
    labels = Labels(["default", "crm"])
    assert labels.operation(name) in set(registry.OPERATIONS) | {OTHER}
    assert labels.account(name) in {"default", "crm", OTHER}
    assert labels.operation(other) in set(registry.OPERATIONS) | {OTHER}
    assert labels.provider(other) in {"afilnet", "anna", "http", OTHER}


def test_the_worker_command_serves_metrics_on_loopback(sandbox: Sandbox, db_url: str,
                                                       queue: Queue) -> None:
    for i in range(3):
        queue.enqueue("chat.sendmessage", message(i))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlbridge", "worker", "--no-schedules", "--poll-interval",
         "0.1", "--metrics-port", "0", "--metrics-queue-interval", "1"],
        env=worker_env(sandbox, db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines: stdqueue.Queue[str] = stdqueue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr or []],
                              daemon=True)
    reader.start()
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if m := re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", line):
                url = m.group(1)
        wait_until(lambda: count_rows(queue, outbox.c.status == "succeeded") == 3)
        wait_until(lambda: total(scrape(url), "sqlbridge_requests_finished_total",
                                 outcome="succeeded") == 3)
        wait_until(lambda: requests.get(url + "/readyz", timeout=10).status_code == 200)
        health = requests.get(url + "/healthz", timeout=10)
        assert health.status_code == 200 and json.loads(health.text)["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "3 succeeded" in out


def test_a_metrics_port_in_use_is_one_line_and_exit_3(db_url: str, queue: Queue) -> None:
    from click.testing import CliRunner

    from sqlbridge.cli import main

    with MetricsServer(WorkerMetrics(), make_engine(db_url), port=0) as taken:
        port = taken.address[1]
        result = CliRunner().invoke(main, ["worker", "--once", "--metrics-port", str(port),
                                           "--database-url", db_url])
    assert result.exit_code == 3, result.output
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1" in result.output
    assert "Traceback" not in result.output


# -- doctor: clock skew ----------------------------------------------------------------------------

def test_doctor_reports_the_clock_skew_between_host_and_database(db_url: str, queue: Queue,
                                                                  tmp_path: Path) -> None:
    from click.testing import CliRunner
    from sqlalchemy import event

    from sqlbridge.cli import main
    from sqlbridge.commands import _clock_check
    from sqlbridge.health import clock_skew

    result = CliRunner().invoke(main, ["doctor", "--database-url", db_url])
    assert re.search(r"\[ ok \] clock: database clock is [+-]0\.\d\d s from this host's",
                     result.output), result.output
    # A database whose clock runs two minutes ahead: SQLite lets a connection replace its
    # strftime(), which is where sqlbridge reads the database's time.
    engine = make_engine(f"sqlite:///{tmp_path / 'ahead.db'}")

    @event.listens_for(engine, "connect")
    def _ahead(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.create_function("strftime", 2, lambda fmt, when: time.strftime(
            "%Y-%m-%d %H:%M:%S.000000", time.gmtime(time.time() + 120)))

    assert 119 <= clock_skew(engine) <= 121
    state, what, detail = _clock_check(engine)
    assert (state, what) == ("warn", "clock") and "NTP" in detail
    assert re.match(r"database clock is \+1(19|20)\.\d\d s from this host's", detail)
    engine.dispose()


def test_recovered_leases_are_counted_by_the_status_they_get(live: Settings, sandbox: Sandbox,
                                                             queue: Queue) -> None:
    queue.enqueue("chat.sendmessage", message(1))
    queue.enqueue("chat.getchats", CHAT)
    dead = queue.claim("dead-worker", 2, 0.05)  # a worker that claimed, then vanished
    assert len(dead) == 2
    wait_until(lambda: _expired(queue))  # its leases run out
    metrics = WorkerMetrics(live.accounts)
    Worker(live, queue.engine, schedules=False, observer=metrics).run(once=True)
    assert metrics.recovered_total.labels("uncertain")._value.get() == 1
    assert metrics.recovered_total.labels("queued")._value.get() == 1
    assert metrics.finished_total.labels("chat.getchats", "default",
                                         "succeeded")._value.get() == 1


def _expired(queue: Queue) -> bool:
    from sqlbridge.sqlfuncs import utcnow

    with queue.engine.connect() as c:
        return bool(c.execute(select(func.count()).select_from(outbox).where(
            outbox.c.status == "processing", outbox.c.locked_until < utcnow())).scalar() == 2)


def test_scrapes_never_query_the_queue_only_the_slow_clock_does(queue: Queue) -> None:
    from sqlalchemy import event

    reads = []

    @event.listens_for(queue.engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if "oldest_queued_age_seconds" in statement:
            reads.append(time.monotonic())

    metrics = WorkerMetrics()
    with MetricsServer(metrics, queue.engine, port=0, queue_interval=3600) as server:
        wait_until(lambda: metrics.schema_ok)
        before = len(reads)
        for _ in range(20):
            assert requests.get(server.url + "/metrics", timeout=10).status_code == 200
        # At most the sampler's own first read (a random moment in the first hour) can fall
        # in this window; twenty scrapes cause none.
        assert len(reads) - before <= 1

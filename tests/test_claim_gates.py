"""The claim's gates shared by every worker (sqlbridge.gates, sqlbridge.breaker): max_in_flight
and the circuit breaker, with real workers against the sandbox over loopback, on every backend
(SQLite always, SQL Server / Babelfish when SQLBRIDGE_TEST_MSSQL_URL names one).

No timing is asserted except lower bounds ("the pause lasted at least the cool-down"): a
loaded machine makes things slower, never faster. Upper bounds on time are only there to end
a hang.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, event, func, select, update

from sqlbridge import attempt, breaker
from sqlbridge.cli import main
from sqlbridge.config import ConfigError, Settings, load
from sqlbridge.dashboard.server import Dashboard
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.metrics import MetricsServer, WorkerMetrics
from sqlbridge.providers import Providers
from sqlbridge.queue import Claimed, Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import circuit_breaker, outbox, outbox_attempt
from sqlbridge.sqlfuncs import utcnow
from sqlbridge.worker import Worker

from .test_worker import CHAT, message, start_worker, statuses

KEY = ("default", "afilnet")


def gated(settings: Settings, account: str = "default", **fields: Any) -> Settings:
    """``settings`` with ``fields`` set on the account's afilnet section."""
    acct = settings.accounts[account]
    changed = dataclasses.replace(acct, afilnet=dataclasses.replace(acct.afilnet, **fields))
    return dataclasses.replace(settings, accounts={**settings.accounts, account: changed})


def one_at_a_time(settings: Settings) -> Settings:
    """One call at a time: each result is written before the next claim, so the order of
    attempts is exact."""
    return dataclasses.replace(settings, worker=dataclasses.replace(settings.worker,
                                                                    concurrency=1, batch=1))


def wait_until(predicate: Callable[[], object], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def breaker_row(engine: Engine, key: tuple[str, str] = KEY) -> dict[str, Any] | None:
    with engine.connect() as c:
        row = c.execute(select(circuit_breaker).where(circuit_breaker.c.account == key[0],
                                                      circuit_breaker.c.provider == key[1])
                        ).first()
    return None if row is None else dict(row._mapping)


def attempts_by_row(engine: Engine) -> dict[int, int]:
    with engine.connect() as c:
        return dict(c.execute(select(outbox.c.id, outbox.c.attempts)).all())


def calls(sandbox: Sandbox) -> int:
    return len(sandbox.requests_seen)


def reads(queue: Queue, n: int, account: str = "default") -> list[int]:
    return [queue.enqueue("chat.getchats", CHAT, account=account).id for _ in range(n)]


def run_workers(settings: Settings, engine: Engine, n: int, **kwargs: Any) -> list[Worker]:
    workers = [Worker(settings, engine, schedules=False) for _ in range(n)]
    threads = [threading.Thread(target=w.run, kwargs={"once": True, "max_seconds": 300,
                                                      **kwargs}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    return workers


# -- max_in_flight ---------------------------------------------------------------------------


def test_three_workers_together_never_have_more_than_max_in_flight_calls_at_the_api(
        live: Settings, queue: Queue, sandbox: Sandbox) -> None:
    settings = gated(live, max_in_flight=2)
    # A lease no slow engine outlasts: a capped claim can wait for another worker's.
    settings = dataclasses.replace(settings, worker=dataclasses.replace(settings.worker,
                                                                        lease_seconds=60))
    sandbox.faults.latency_ms = 150  # every call is held long enough to overlap
    reads(queue, 24)
    workers = run_workers(settings, queue.engine, 3)
    assert statuses(queue) == {"succeeded": 24}
    assert sum(w.stats.claimed for w in workers) >= 24
    # Three workers of concurrency 4 would hold up to 12 calls at once; the cap holds overall.
    assert 1 <= sandbox.max_in_flight <= 2


def test_a_capped_claim_takes_only_the_room_left_and_other_accounts_still_flow(
        live: Settings, queue: Queue) -> None:
    two = dataclasses.replace(live, accounts={**live.accounts,
                                              "other": live.accounts["default"]})
    settings = gated(two, max_in_flight=2)
    capped = reads(queue, 10)  # first in the claim's order
    free = reads(queue, 5, account="other")
    worker_a, worker_b = Queue(queue.engine, settings), Queue(queue.engine, settings)
    got = worker_a.claim("a", 5, 60)
    # A batch of 5 meets the capped account's backlog first: 2 of it (its room), and no
    # more of it (the claim may come back short).
    assert [c.id for c in got] == capped[:2]
    # Full now: the next claims step over its backlog to the rows behind it, so a capped
    # account never blocks the others.
    assert [c.id for c in worker_b.claim("b", 5, 60)] == free
    assert worker_a.claim("a", 50, 60) == []  # full for every worker
    worker_a.release([c for c in got if c.id == capped[0]])
    again = worker_b.claim("b", 50, 60)
    assert [c.id for c in again] == [capped[0]]  # exactly the room that came back
    assert worker_a.claim("a", 50, 60) == []


def test_a_capped_claim_counts_what_a_concurrent_claim_has_not_committed_yet(
        live: Settings, queue: Queue, db_url: str) -> None:
    settings = gated(live, max_in_flight=2)
    first = reads(queue, 3)
    urgent = queue.enqueue("chat.getchats", CHAT, priority=10).id  # due after that claim
    holder = Queue(queue.engine, settings)
    holder.caps.ensure_rows()
    other_engine = make_engine(db_url)  # the second worker's own connections
    waiter = Queue(other_engine, settings)
    counted = threading.Event()

    def seen(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "AS prov" in statement and "count(" in statement.lower():
            counted.set()  # the second claim has counted the key's rows in flight

    event.listen(other_engine, "after_cursor_execute", seen)
    got: list[list[Claimed]] = []
    try:
        with queue.engine.connect() as conn:
            transaction = conn.begin()
            # A capped claim in progress: it holds the key's lock and has taken two rows,
            # not yet committed (no other transaction can count them).
            holder.caps.lock(conn)
            conn.execute(update(outbox).where(outbox.c.id.in_(first[:2]))
                         .values(status="processing", locked_by="holder",
                                 locked_until=utcnow(60), lease_token="t", attempts=1))
            racer = threading.Thread(target=lambda: got.append(waiter.claim("b", 10, 60)))
            racer.start()
            # Without the lock the second claim counts now, before this commit, and sees
            # none of the first one's rows; with it, it waits (and this wait runs out).
            counted.wait(3)
            transaction.commit()
        racer.join(60)
    finally:
        other_engine.dispose()
    # The second claim counted the first one's two rows: the key was full, and the urgent
    # row (and the third) stayed queued.
    assert got == [[]]
    assert statuses(queue) == {"processing": 2, "queued": 2}
    assert queue.get(urgent)["status"] == "queued"


def expire_leases(engine: Engine) -> None:
    with engine.begin() as c:  # by the server's clock, an hour back
        c.execute(update(outbox).where(outbox.c.status == "processing")
                  .values(locked_until=utcnow(-3600)))


def test_a_dead_worker_s_rows_count_until_lease_recovery_settles_them(
        live: Settings, queue: Queue) -> None:
    settings = gated(live, max_in_flight=1)
    ids = reads(queue, 3)
    dead, alive = Queue(queue.engine, settings), Queue(queue.engine, settings)
    assert [c.id for c in dead.claim("dead", 10, 60)] == [ids[0]]
    assert alive.claim("alive", 10, 60) == []
    expire_leases(queue.engine)
    # Still processing, so still counted: a stalled worker's call may still be running.
    assert alive.claim("alive", 10, 60) == []
    assert alive.recover_expired()["queued"] == 1  # the read goes back to the queue
    assert [c.id for c in alive.claim("alive", 10, 60)] == [ids[0]]


def test_a_killed_worker_process_gives_its_slot_back_after_its_lease(
        sandbox: Sandbox, db_url: str, queue: Queue, live: Settings, tmp_path: Path) -> None:
    config = tmp_path / "capped.toml"
    config.write_text("[accounts.default.afilnet]\nmax_in_flight = 1\n", encoding="utf-8")
    # The dead worker's one call is held at the API until the sandbox stops.
    sandbox.faults.latency_ms = 3_600_000
    ids = reads(queue, 4)
    proc = start_worker(sandbox, db_url, "--concurrency", "8", "--lease", "1",
                        "--config", str(config))
    try:
        wait_until(lambda: statuses(queue).get("processing", 0) == 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert statuses(queue) == {"processing": 1, "queued": 3}  # the cap held in that process
    sandbox.faults.latency_ms = 0
    stats = Worker(gated(live, max_in_flight=1), queue.engine, schedules=False).run(
        once=True, max_seconds=60)
    # The dead worker's slot came back (its row was recovered), so every read ran.
    assert statuses(queue) == {"succeeded": 4}
    assert stats.recovered.get("queued") == 1 and stats.succeeded == 4
    assert {queue.get(i)["status"] for i in ids} == {"succeeded"}


# -- the circuit breaker -------------------------------------------------------------------------


def test_the_breaker_opens_after_n_transient_failures_pauses_and_a_probe_closes_it(
        live: Settings, queue: Queue, sandbox: Sandbox) -> None:
    cooldown = 0.5
    settings = one_at_a_time(gated(live, breaker_failures=3, breaker_cooldown=cooldown))
    reads(queue, 6)
    sandbox.fail_next(3, "503")
    stats = Worker(settings, queue.engine, schedules=False).run(once=True, max_seconds=60)
    assert stats.succeeded == 6 and statuses(queue) == {"succeeded": 6}
    assert calls(sandbox) == 9  # 3 failures, then each row once
    row = breaker_row(queue.engine)
    assert row is not None
    assert (row["state"], row["failures"], row["trips"], row["open_until"]) == \
        ("closed", 0, 1, None)
    with queue.engine.connect() as c:
        tries = c.execute(select(outbox_attempt.c.outcome, outbox_attempt.c.started_at,
                                 outbox_attempt.c.duration_ms)
                          .order_by(outbox_attempt.c.started_at, outbox_attempt.c.id)).all()
    assert [t.outcome for t in tries] == ["retry"] * 3 + ["succeeded"] * 6
    # The probe (the first success) started no earlier than a cool-down after the third
    # failure ended: the claims really paused.
    third_ended = tries[2].started_at + timedelta(milliseconds=tries[2].duration_ms or 0)
    assert (tries[3].started_at - third_ended).total_seconds() >= cooldown * 0.9


def test_while_open_rows_keep_their_attempts_and_a_failed_probe_doubles_the_pause(
        live: Settings, queue: Queue, sandbox: Sandbox) -> None:
    settings = one_at_a_time(gated(live, breaker_failures=2, breaker_cooldown=0.3,
                                   breaker_cooldown_max=0.6))
    ids = reads(queue, 8)
    sandbox.fail_next(10_000, "503")  # the API is down
    worker = Worker(settings, queue.engine, schedules=False)
    thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 300})
    thread.start()
    try:
        # Opened, then two probes failed (each opens it again).
        wait_until(lambda: (breaker_row(queue.engine) or {}).get("trips", 0) >= 3)
    finally:
        worker.stop()
        thread.join(120)
    row = breaker_row(queue.engine)
    assert row is not None and row["state"] == "open"
    assert row["cooldown"] == pytest.approx(0.6)  # 0.3 doubled, then held at the maximum
    tried = attempts_by_row(queue.engine)
    # Every call the API saw was one of the two that opened it or a probe: no row spent its
    # attempts against the dead API while the breaker was open.
    assert sum(tried.values()) == calls(sandbox) == 2 + (row["trips"] - 1)
    assert sum(1 for i in ids if tried[i] == 0) >= len(ids) - calls(sandbox)
    # The API is back: the next probe closes the breaker and the rows run once each.
    sandbox.plan.clear()
    Worker(settings, queue.engine, schedules=False).run(once=True, max_seconds=60)
    row = breaker_row(queue.engine)
    assert row is not None and (row["state"], row["failures"]) == ("closed", 0)
    after = attempts_by_row(queue.engine)
    assert all(after[i] == 1 for i in ids if tried[i] == 0)
    assert statuses(queue).get("queued", 0) == 0


def test_uncertain_sends_and_refusals_never_open_the_breaker(
        live: Settings, queue: Queue, sandbox: Sandbox) -> None:
    settings = one_at_a_time(gated(live, breaker_failures=2, breaker_cooldown=600))
    sends = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(3)]
    sandbox.fail_next(3, "drop")  # each send left, and no answer came: uncertain
    refused = [queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "999"}).id
               for _ in range(3)]  # the vendor answers CHANNEL_NOT_FOUND
    Worker(settings, queue.engine, schedules=False).run(once=True, max_seconds=60)
    assert {queue.get(i)["status"] for i in sends} == {"uncertain"}
    assert {queue.get(i)["status"] for i in refused} == {"failed"}
    row = breaker_row(queue.engine)
    assert row is None or (row["state"], row["failures"], row["trips"]) == ("closed", 0, 0)
    # The same settings do open it on retryable failures: the check above can fail.
    reads(queue, 2)
    sandbox.fail_next(2, "503")
    worker = Worker(settings, queue.engine, schedules=False)
    thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 300})
    thread.start()
    try:
        wait_until(lambda: (breaker_row(queue.engine) or {}).get("state") == "open")
    finally:
        worker.stop()
        thread.join(120)


def trip(queue: Queue, settings: Settings, sandbox: Sandbox, providers: Providers) -> int:
    """Open the default account's afilnet breaker the way a worker does (one real failed
    call, written by ``finish``); return the failed row's id."""
    [claim] = queue.claim("w", 1, 60)
    sandbox.fail_next(1, "503")
    done = attempt.run(claim, settings=settings, call=providers.call, worker="w")
    assert done.api_signal == breaker.DOWN
    queue.finish([done])
    assert (breaker_row(queue.engine) or {}).get("state") == "open"
    return claim.id


def test_a_success_on_any_worker_resets_the_count_of_failures_in_a_row(
        live: Settings, queue: Queue, sandbox: Sandbox, providers: Providers) -> None:
    settings = gated(live, breaker_failures=3, breaker_cooldown=600)
    worker_a, worker_b = Queue(queue.engine, settings), Queue(queue.engine, settings)
    reads(queue, 5)

    def attempt_on(q: Queue, fail: bool) -> None:
        [claim] = q.claim("w", 1, 60)
        if fail:
            sandbox.fail_next(1, "503")
        q.finish([attempt.run(claim, settings=settings, call=providers.call, worker="w")])

    attempt_on(worker_a, fail=True)
    attempt_on(worker_a, fail=True)
    attempt_on(worker_b, fail=False)  # another worker hears the API answer
    attempt_on(worker_a, fail=True)
    attempt_on(worker_a, fail=True)
    row = breaker_row(queue.engine)
    # 2, reset, 2: never 3 in a row, so it stayed closed.
    assert row is not None and (row["state"], row["failures"], row["trips"]) == ("closed", 2, 0)


def end_the_pause(engine: Engine) -> None:
    with engine.begin() as c:  # by the server's clock: the cool-down is over
        c.execute(update(circuit_breaker).values(open_until=utcnow(-1)))


def test_only_one_worker_probes_and_the_others_stay_paused_until_it_answers(
        live: Settings, queue: Queue, sandbox: Sandbox, providers: Providers) -> None:
    settings = gated(live, breaker_failures=1, breaker_cooldown=600)
    two = dataclasses.replace(settings, accounts={**settings.accounts,
                                                  "other": settings.accounts["default"]})
    q1, q2 = Queue(queue.engine, two), Queue(queue.engine, two)
    ids = reads(queue, 4)
    other = reads(queue, 2, account="other")
    trip(q1, two, sandbox, providers)
    assert [c.id for c in q2.claim("b", 10, 60)] == other  # only the paused key waits
    assert q1.claim("a", 10, 60, probe=KEY) == []  # the pause is not over yet
    end_the_pause(queue.engine)
    q1.breakers.refresh(force=True)
    assert q1.breakers.due_probes() == [KEY]
    probes: list[list[Claimed]] = []
    racers = [threading.Thread(target=lambda q=q: probes.append(q.claim("x", 10, 60,
                                                                        probe=KEY)))
              for q in (q1, q2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(60)
    won = [p for p in probes if p]
    assert len(won) == 1 and len(won[0]) == 1  # one worker, one row
    assert q2.claim("b", 10, 60) == [] and q1.claim("a", 10, 60) == []  # still paused
    done = attempt.run(won[0][0], settings=two, call=providers.call, worker="x")
    q1.finish([done])
    row = breaker_row(queue.engine)
    assert row is not None and (row["state"], row["failures"]) == ("closed", 0)
    rest: list[Claimed] = []
    # Every other row of the key is claimed again (the one that failed once its back-off ends).
    wait_until(lambda: rest.extend(q2.claim("b", 10, 60)) or len(rest) >= len(ids) - 1)
    assert sorted(c.id for c in rest) == sorted(i for i in ids if i != won[0][0].id)


def test_status_metrics_and_dashboard_show_an_open_breaker(
        live: Settings, queue: Queue, sandbox: Sandbox, providers: Providers,
        db_url: str) -> None:
    settings = gated(live, breaker_failures=1, breaker_cooldown=600)
    reads(queue, 2)
    trip(Queue(queue.engine, settings), settings, sandbox, providers)

    result = CliRunner().invoke(main, ["status", "--database-url", db_url],
                                catch_exceptions=False)
    assert result.exit_code == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("default"))
    assert re.match(r"default\s+afilnet\s+open\s+\d+s\s+1\s+1\s+HTTP_503", line), line
    result = CliRunner().invoke(main, ["status", "--json", "--database-url", db_url],
                                catch_exceptions=False)
    [shown] = json.loads(result.stdout)["circuit_breakers"]
    assert (shown["account"], shown["provider"], shown["state"], shown["failures"]) == \
        ("default", "afilnet", "open", 1)
    assert 0 < shown["seconds_left"] <= 600

    metrics = WorkerMetrics(["default"])
    with MetricsServer(metrics, queue.engine, port=0, queue_interval=0.05) as server:
        def state_samples() -> dict[str, float]:
            text = requests.get(server.url + "/metrics", timeout=10).text
            return {m.group(1): float(m.group(2)) for m in re.finditer(
                r'^sqlbridge_circuit_state\{account="default",provider="afilnet",'
                r'state="(\w+)"\} (\S+)$', text, re.M)}
        wait_until(lambda: state_samples().get("open") == 1.0)
        assert state_samples() == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
        text = requests.get(server.url + "/metrics", timeout=10).text
        assert 'sqlbridge_circuit_trips_total{account="default",provider="afilnet"} 1.0' \
            in text

    with Dashboard(settings, queue.engine, port=0) as board:
        page = requests.get(board.url, timeout=30).text
    table = page[page.index('id="breakers"'):]
    table = table[:table.index("</table>")]
    assert re.search(r"<td>default</td><td>afilnet</td><td class=\"breaker-open\">open</td>"
                     r"<td class=\"num\">1</td>", table), table


def test_limits_are_checked_where_they_are_written(tmp_path: Path) -> None:
    def refused(body: str) -> str:
        path = tmp_path / "bad.toml"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError) as e:
            load(path, env={})
        return str(e.value)

    assert "accounts.a.afilnet.max_in_flight must be a whole number from 1 to 10,000; got 0" \
        in refused("[accounts.a.afilnet]\nmax_in_flight = 0\n")
    assert "max_in_flight must be a whole number" in refused(
        "[accounts.a.anna]\nmax_in_flight = 2.5\n")
    assert "breaker_failures must be a whole number from 0 to 1,000; got -1" in refused(
        "[accounts.a.http]\nbreaker_failures = -1\n")
    assert "breaker_cooldown must be a number of seconds greater than 0 and at most 86400" \
        in refused("[accounts.a.afilnet]\nbreaker_cooldown = nan\n")
    assert "breaker_cooldown_max (5) must be at least breaker_cooldown (10)" in refused(
        "[accounts.a.afilnet]\nbreaker_cooldown = 10\nbreaker_cooldown_max = 5\n")
    assert "unknown setting accounts.a.max_in_flight" in refused(
        "[accounts.a]\nmax_in_flight = 3\n")
    path = tmp_path / "good.toml"
    path.write_text("[accounts.a.afilnet]\nmax_in_flight = 4\nbreaker_failures = 0\n",
                    encoding="utf-8")
    section = load(path, env={}).accounts["a"].afilnet
    assert (section.max_in_flight, section.breaker_failures) == (4, 0)
    assert load(path, env={}).accounts["a"].anna.breaker_failures == 5  # the default


def test_a_breaker_set_to_0_never_opens(live: Settings, queue: Queue,
                                        sandbox: Sandbox) -> None:
    settings = one_at_a_time(gated(live, breaker_failures=0))
    reads(queue, 3)
    sandbox.fail_next(100, "503")
    Worker(settings, queue.engine, schedules=False).run(once=True, max_seconds=60)
    assert statuses(queue) == {"failed": 3}  # every attempt spent, as without a breaker
    assert breaker_row(queue.engine) is None
    with queue.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(outbox_attempt)).scalar() == 9


@pytest.mark.sqlite_only
def test_a_capped_claim_still_walks_the_claim_index_and_counts_only_rows_in_flight(
        tmp_path: Path) -> None:
    from .test_backlog import fill, plans

    engine = make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    install(engine)
    fill(engine)
    settings = gated(Settings(database_url=str(engine.url)), max_in_flight=2)
    count, claim = plans(engine, lambda: Queue(engine, settings).claim("w", 10, 30))
    engine.dispose()
    # The count reads the rows in flight (the partial index holds nothing else).
    assert "SCAN p USING INDEX ix_outbox_lease" in count, count
    # The claim walks the claim index in order, as an uncapped one does; only the rows it
    # picked (at most a batch) are numbered per key.
    assert "SCAN q USING INDEX ix_outbox_claim_order" in claim, claim
    lines = claim.splitlines()
    sorts = [i for i, line in enumerate(lines) if "TEMP B-TREE" in line]
    assert all(lines[i - 1] == "SCAN p" for i in sorts), claim  # the picked rows' sort only
    assert re.match(r"SEARCH (main\.)?outbox USING INTEGER PRIMARY KEY", claim), claim


@pytest.mark.sqlite_only
def test_a_worker_on_a_database_that_lacks_the_new_tables_says_to_install(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    install(engine)
    with engine.begin() as conn:  # as installed by a release before 006
        conn.exec_driver_sql("DROP TABLE circuit_breaker")
    engine.dispose()
    result = CliRunner().invoke(main, ["worker", "--once", "--database-url", url])
    assert result.exit_code == 7, result.output  # one line, no traceback
    assert "circuit_breaker" in result.stderr and "Traceback" not in result.output
    assert "sqlbridge install applies them" in result.stderr
    result = CliRunner().invoke(main, ["install", "--database-url", url])
    assert result.exit_code == 0
    result = CliRunner().invoke(main, ["worker", "--once", "--database-url", url])
    assert result.exit_code == 0, result.output


def test_turning_a_breaker_off_lets_its_next_success_close_it(
        live: Settings, queue: Queue, sandbox: Sandbox, providers: Providers) -> None:
    on = gated(live, breaker_failures=1, breaker_cooldown=0.2)
    reads(queue, 3)
    trip(Queue(queue.engine, on), on, sandbox, providers)
    # The settings change (breaker_failures = 0) while it is open: the workers still pause
    # the key and probe it, and the probe's success closes it.
    off = gated(live, breaker_failures=0)
    stats = Worker(off, queue.engine, schedules=False).run(once=True, max_seconds=60)
    assert stats.succeeded == 3 and statuses(queue) == {"succeeded": 3}
    row = breaker_row(queue.engine)
    assert row is not None and (row["state"], row["failures"]) == ("closed", 0)


def test_a_healthy_api_costs_no_breaker_writes(live: Settings, queue: Queue) -> None:
    reads(queue, 10)
    worker = Worker(live, queue.engine, schedules=False)
    assert worker.run(once=True, max_seconds=60).succeeded == 10
    # Every breaker closed and counting nothing: the finish batches wrote nothing for them.
    assert worker.queue.breakers.writes == 0
    assert breaker_row(queue.engine) is None

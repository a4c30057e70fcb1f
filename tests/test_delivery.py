"""The delivery rule ("may this have been delivered, may it be sent again?"), end to end over
real HTTP against the sandbox, whose own record says what it actually did. Each test here was
checked to fail when the line it guards is broken (see docs/reliability.md)."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, insert, select, update

from sqlbridge import attempt, delivery, sync
from sqlbridge.config import Settings
from sqlbridge.delivery import Reach, Verdict
from sqlbridge.queue import Queue, mssql_statements
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import outbox, sync_schedule
from sqlbridge.sqlfuncs import utcnow
from sqlbridge.worker import Worker

CHAT = {"platform": "whatsapp", "platformid": "100"}


def send(i: int) -> dict[str, str]:
    return {**CHAT, "destination": f"3460{i:07d}", "message": f"delivery-{i}"}


def delivered(sb: Sandbox, marker: str) -> int:
    """How many times the sandbox processed a request carrying ``marker``."""
    return sum(1 for _, what in sb.processed if marker in what)


def run_once(settings: Settings, queue: Queue) -> None:
    Worker(settings, queue.engine, schedules=False).run(once=True)


def resend_allowed(live: Settings) -> Settings:
    account = live.account("default")
    return dataclasses.replace(live, accounts={"default": dataclasses.replace(
        account, afilnet=dataclasses.replace(account.afilnet, allow_resend=True),
        anna=dataclasses.replace(account.anna, allow_resend=True))})


# -- the rule itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(("reach", "sending", "resend_ok", "expected"), [
    (Reach.NOT_SENT, True, False, Verdict.RETRY),
    (Reach.NOT_DONE, True, False, Verdict.RETRY),
    (Reach.REFUSED, True, False, Verdict.FAIL),
    (Reach.REFUSED, False, False, Verdict.FAIL),
    (Reach.MAYBE, True, False, Verdict.UNCERTAIN),
    (Reach.MAYBE, True, True, Verdict.RETRY),
    (Reach.MAYBE, False, False, Verdict.RETRY),
])
def test_the_rule_table(reach: Reach, sending: bool, resend_ok: bool,
                        expected: Verdict) -> None:
    assert delivery.verdict(reach, sending=sending, resend_ok=resend_ok) is expected


@pytest.mark.parametrize(("status", "reach"), [
    (429, Reach.NOT_DONE), (503, Reach.NOT_DONE), (500, Reach.MAYBE), (502, Reach.MAYBE),
    (504, Reach.MAYBE), (520, Reach.MAYBE), (400, Reach.REFUSED), (404, Reach.REFUSED)])
def test_what_each_status_says(status: int, reach: Reach) -> None:
    assert delivery.reach_of_status(status) is reach


def test_what_a_failure_without_a_status_says() -> None:
    assert delivery.reach_of_failure(delivered=False, http_status=None) is Reach.NOT_SENT
    assert delivery.reach_of_failure(delivered=True, http_status=None) is Reach.MAYBE
    assert delivery.reach_of_failure(delivered=True, http_status=200) is Reach.MAYBE


# -- sends over the wire --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "503"])
def test_a_send_answered_not_done_is_retried_not_made_uncertain(
        live: Settings, sandbox: Sandbox, queue: Queue, kind: str) -> None:
    live = dataclasses.replace(live, worker=dataclasses.replace(live.worker, backoff_max=0.05))
    sandbox.fail_next(1, kind, path_contains="api/http")
    rid = queue.enqueue("chat.sendmessage", send(1)).id
    run_once(live, queue)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "succeeded", row
    assert [a["outcome"] for a in row["attempt_rows"]] == ["retry", "succeeded"]
    assert delivered(sandbox, "delivery-1") == 1


@pytest.mark.parametrize("kind", ["after_502", "after_504", "after_500", "after_drop"])
def test_a_send_whose_answer_was_lost_after_processing_is_uncertain_and_sent_once(
        live: Settings, sandbox: Sandbox, queue: Queue, kind: str) -> None:
    sandbox.fail_next(1, kind, path_contains="api/http")
    rid = queue.enqueue("chat.sendmessage", send(2)).id
    run_once(live, queue)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "uncertain", row
    assert "not sent again" in row["error_message"]
    assert len(row["attempt_rows"]) == 1
    assert delivered(sandbox, "delivery-2") == 1


@pytest.mark.parametrize("kind", ["after_garbled", "after_html"])
def test_a_send_with_a_garbled_2xx_is_uncertain(live: Settings, sandbox: Sandbox,
                                                queue: Queue, kind: str) -> None:
    sandbox.fail_next(1, kind, path_contains="api/http")
    rid = queue.enqueue("chat.sendmessage", send(3)).id
    run_once(live, queue)
    row = queue.get(rid)
    assert (row["status"], row["http_status"]) == ("uncertain", 200), row
    assert delivered(sandbox, "delivery-3") == 1


@pytest.mark.parametrize(("operation", "params"), [
    ("user.userhashforced", {"userId": "7001", "userName": "Ana"}),
    ("user.inactivate", {"userId": "1001"}),
])
def test_anna_sends_answered_200_without_success_are_never_sent_again(
        live: Settings, sandbox: Sandbox, queue: Queue, operation: str,
        params: dict[str, str]) -> None:
    sandbox.fail_next(1, "after_garbled", path_contains="User/")
    rid = queue.enqueue(operation, params).id
    run_once(live, queue)
    row = queue.get(rid, with_attempts=True)
    assert (row["status"], row["http_status"]) == ("uncertain", 200), row
    assert len(row["attempt_rows"]) == 1
    assert sum(1 for op, _ in sandbox.processed if op.startswith("User/")) == 1


def test_allow_resend_sends_an_unknown_outcome_send_again(live: Settings, sandbox: Sandbox,
                                                           queue: Queue) -> None:
    sandbox.fail_next(1, "after_502", path_contains="api/http")
    rid = queue.enqueue("chat.sendmessage", send(4)).id
    run_once(resend_allowed(live), queue)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "succeeded"
    assert delivered(sandbox, "delivery-4") == 2  # what allow_resend accepts


def test_a_read_whose_answer_was_lost_is_retried(live: Settings, sandbox: Sandbox,
                                                 queue: Queue) -> None:
    sandbox.fail_next(1, "after_504", path_contains="api/http")
    rid = queue.enqueue("chat.getchatchannels", {}).id
    run_once(live, queue)
    assert queue.get(rid)["status"] == "succeeded"


def test_a_huge_retry_after_is_clamped_to_backoff_max_and_said(live: Settings, sandbox: Sandbox,
                                                               queue: Queue) -> None:
    # No sandbox fault sends such a header; a tiny server does.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Throttle(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(429)
            self.send_header("Retry-After", "99999999999999")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        account = live.account("default")
        settings = dataclasses.replace(live, accounts={"default": dataclasses.replace(
            account, afilnet=dataclasses.replace(
                account.afilnet, url=f"http://127.0.0.1:{server.server_address[1]}/"))},
            worker=dataclasses.replace(live.worker, backoff_max=3600))
        rid = queue.enqueue("chat.getchatchannels", {}).id
        Worker(settings, queue.engine, schedules=False).run(once=True)
        row = queue.get(rid)
        assert row["status"] == "queued" and "waiting backoff_max 3600s" in row["error_message"]
        with queue.engine.connect() as c:
            when = c.execute(select(outbox.c.available_at).where(outbox.c.id == rid)).scalar()
        assert when is not None  # a real date, not NULL
        due = queue.next_due_in()
        assert due is not None and 3500 <= due <= 3600
    finally:
        server.shutdown()
        server.server_close()


# -- lease recovery agrees with the worker -------------------------------------------------------


def _claim_and_expire(queue: Queue) -> None:
    assert queue.claim("dead-worker", 10, 30)
    with queue.engine.begin() as c:
        # The server's clock, an hour back (datetime minus an interval is not T-SQL).
        c.execute(update(outbox).values(locked_until=utcnow(-3600)))


def test_recovery_fails_an_invalid_row_with_its_validation_code_not_uncertain(
        queue: Queue) -> None:
    with queue.engine.begin() as c:
        rid = c.execute(insert(outbox).values(
            operation="chat.sendmessage", params='{"platform": "sms", "platformid": "1"}')
            .returning(outbox.c.id)).scalar_one()  # no id is assumed: SQL Server's go on
    _claim_and_expire(queue)
    assert queue.recover_expired() == {"queued": 0, "failed": 1, "uncertain": 0}
    row = queue.get(rid)
    assert row["status"] == "failed" and row["error_code"] == "INVALID_PARAM_VALUE"


def test_an_unknown_account_fails_the_same_way_in_the_worker_and_in_recovery(
        live: Settings, queue: Queue) -> None:
    a = queue.enqueue("chat.sendmessage", send(5), account="nobody").id
    _claim_and_expire(queue)
    q = Queue(queue.engine, live)
    q.recover_expired()
    b = queue.enqueue("chat.sendmessage", send(6), account="nobody").id
    run_once(live, queue)
    assert (queue.get(a)["status"], queue.get(a)["error_code"]) == ("failed", "UNKNOWN_ACCOUNT")
    assert (queue.get(b)["status"], queue.get(b)["error_code"]) == ("failed", "UNKNOWN_ACCOUNT")


def test_recovery_of_a_send_honours_allow_resend(live: Settings, queue: Queue) -> None:
    queue.enqueue("chat.sendmessage", send(7))
    _claim_and_expire(queue)
    assert Queue(queue.engine, resend_allowed(live)).recover_expired()["queued"] == 1
    _claim_and_expire(queue)
    assert Queue(queue.engine, live).recover_expired()["uncertain"] == 1


def test_a_row_processing_with_no_lease_at_all_is_recovered(live: Settings,
                                                           queue: Queue) -> None:
    with queue.engine.begin() as c:
        c.execute(insert(outbox).values(operation="chat.getchatchannels", params="{}",
                                        status="processing", attempts=1))
    assert Queue(queue.engine, live).recover_expired() == {"queued": 1, "failed": 0,
                                                           "uncertain": 0}


# -- the queue's own promises -----------------------------------------------------------------


def test_shutdown_releases_claims_not_yet_started(live: Settings, queue: Queue) -> None:
    for i in range(2):
        queue.enqueue("chat.sendmessage", send(10 + i))
    w = Worker(live, queue.engine, schedules=False, grace=30)
    first, second = queue.claim(w.id, 2, 30)
    gate = threading.Event()

    def held() -> attempt.Completion:
        gate.wait(30)
        return attempt.run(first, settings=live, call=lambda *_: (_ for _ in ()).throw(
            RuntimeError("x")), worker=w.id)

    pool = ThreadPoolExecutor(1)
    inflight = {pool.submit(held): first}
    inflight[pool.submit(lambda: None)] = second  # queued behind: never started
    threading.Timer(0.3, gate.set).start()
    w._shutdown(pool, inflight, [], w._inbox_writer(), {})  # noqa: SLF001
    row = queue.get(second.id)
    assert (row["status"], row["attempts"]) == ("queued", 0)
    assert w.stats.released == 1


def test_enqueue_in_a_callers_transaction_finds_an_existing_request_key(queue: Queue) -> None:
    with queue.engine.begin() as c:
        a = queue.enqueue("chat.getchatchannels", {}, request_key="k-1", conn=c)
        b = queue.enqueue("chat.getchatchannels", {}, request_key="k-1", conn=c)
    assert (a.created, b.created, a.id) == (True, False, b.id)
    with queue.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(outbox)).scalar() == 1


def test_the_schedule_key_is_per_slot(queue: Queue) -> None:
    sync.add_schedule(queue.engine, "s", "messenger.structure", {}, "1h")
    sync.run_now(queue.engine, "s")
    assert sync.run_due(queue, "w") == 1
    with queue.engine.begin() as c:  # the first run is over
        c.execute(update(outbox).values(status="succeeded"))
    time.sleep(0.01)  # the next slot starts at a later instant
    sync.run_now(queue.engine, "s")
    assert sync.run_due(queue, "w") == 1
    with queue.engine.connect() as c:
        keys = c.execute(select(outbox.c.request_key).order_by(outbox.c.id)).scalars().all()
        sid = c.execute(select(sync_schedule.c.id)).scalar()
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(k.startswith(f"schedule:{sid}:") for k in keys)


def test_the_claim_checks_status_queued_again_in_the_update_itself() -> None:
    # Babelfish ignores the locking hints: the outer WHERE is what stops two claims from
    # taking the same row. Cut out the subquery and the check must still be there.
    claim = mssql_statements()["claim"]
    head, _, rest = claim.partition("IN (")
    depth, i = 1, 0
    while depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    outer = head + rest[i:]
    assert "status = " in outer.split("WHERE", 1)[1], claim


@pytest.mark.parametrize("kind", ["502", "drop"])
def test_a_send_whose_token_request_failed_was_never_sent_and_is_retried(
        live: Settings, sandbox: Sandbox, queue: Queue, kind: str) -> None:
    sandbox.fail_next(1, kind, path_contains="GetToken")
    rid = queue.enqueue("user.inactivate", {"userId": "1001"}).id
    run_once(live, queue)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "succeeded", row
    assert [a["outcome"] for a in row["attempt_rows"]] == ["retry", "succeeded"]
    assert sum(1 for op, _ in sandbox.processed if op == "User/Inactivate") == 1

"""The outbox state machine on a real SQLite file: each test is one rule of the queue."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError

from sqlbridge.errors import InvalidState, RequestNotFound, ValidationError
from sqlbridge.queue import Completion, Queue
from sqlbridge.schema import outbox, outbox_attempt

SEND = {"platform": "whatsapp", "platformid": "100", "destination": "34600000000",
        "message": "olá & # % 😀"}
READ = {"platform": "whatsapp", "platformid": "100"}


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def done(claim, status="succeeded", **kw) -> Completion:
    return Completion(id=claim.id, lease_token=claim.lease_token, attempt=claim.attempts,
                      status=status, started_at=now(), duration_ms=1, worker="test", **kw)


def test_enqueue_stores_the_vendor_shaped_params_and_the_provider(queue: Queue) -> None:
    r = queue.enqueue("messenger.requests", {"userId": "1001", "dataIni": "01/01/2024",
                                             "status": "A", "pendentes": ""})
    row = queue.get(r.id)
    assert row["provider"] == "anna" and row["status"] == "queued"
    assert json.loads(row["params"]) == {"userId": "1001",
                                         "messengerFilters": {"dataIni": "01/01/2024",
                                                              "status": "A"}}


def test_unicode_and_long_text_survive_the_outbox(queue: Queue) -> None:
    long = "€ & # % ç 😀 " * 1000  # 12,000 characters: sp_OA* would cut it at 8,000
    r = queue.enqueue("chat.sendmessage", {**SEND, "message": long})
    assert json.loads(queue.get(r.id)["params"])["message"] == long


def test_the_same_request_key_returns_the_first_request(queue: Queue) -> None:
    first = queue.enqueue("chat.sendmessage", SEND, request_key="order-42")
    again = queue.enqueue("chat.sendmessage", dict(SEND), request_key="order-42")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id
    with queue.engine.begin() as conn:  # the path the worker's fan-out takes
        assert queue.enqueue("chat.sendmessage", SEND, request_key="order-42",
                             conn=conn).id == first.id
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).all() == [(first.id,)]


def test_the_same_request_key_for_another_request_is_refused_naming_the_first(
        queue: Queue) -> None:
    first = queue.enqueue("chat.sendmessage", SEND, request_key="order-42")
    for op, params, account in [("chat.sendmessage", {**SEND, "message": "other"}, "default"),
                                ("chat.getchats", {"platform": "whatsapp",
                                                   "platformid": "100"}, "default"),
                                ("chat.sendmessage", SEND, "marketing")]:
        with pytest.raises(ValidationError) as e:
            queue.enqueue(op, params, account=account, request_key="order-42")
        assert e.value.code == "IDEMPOTENCY_CONFLICT"
        assert f"request {first.id}" in str(e.value)
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).all() == [(first.id,)]


def test_bad_parameters_are_refused_and_nothing_is_stored(queue: Queue) -> None:
    with pytest.raises(ValidationError) as e:
        queue.enqueue("chat.sendmessage", {**SEND, "platform": "sms"})
    assert e.value.code == "INVALID_PARAM_VALUE"
    assert "platform" in str(e.value) and "whatsapp" in str(e.value)
    with pytest.raises(ValidationError, match="unknown operation"):
        queue.enqueue("chat.nosuchthing.really", {})
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).all() == []


def test_claims_take_higher_priority_first_and_never_the_same_row_twice(queue: Queue) -> None:
    low = queue.enqueue("chat.getchats", READ).id
    high = queue.enqueue("chat.getchats", READ, priority=10).id
    first = queue.claim("w1", 1, 30)
    second = queue.claim("w2", 5, 30)
    assert [c.id for c in first] == [high]
    assert [c.id for c in second] == [low]
    assert queue.claim("w3", 5, 30) == []
    assert first[0].attempts == 1 and first[0].lease_token != second[0].lease_token


def test_not_before_keeps_a_request_back(queue: Queue) -> None:
    # Margins of minutes, not milliseconds: a slow engine (Babelfish under load) took longer
    # than half a second between the enqueue and the first claim.
    queue.enqueue("chat.getchats", READ, not_before=now() + timedelta(minutes=5))
    assert queue.claim("w", 5, 30) == []
    due = queue.enqueue("chat.getchats", {**READ, "platformid": "7"},
                        not_before=now() - timedelta(minutes=5)).id
    assert [c.id for c in queue.claim("w", 5, 30)] == [due]


def test_a_worker_that_lost_its_lease_cannot_write_the_row(queue: Queue) -> None:
    queue.enqueue("chat.getchats", READ)
    (stale,) = queue.claim("slow-worker", 1, 0.01)
    time.sleep(0.05)
    assert queue.recover_expired() == {"queued": 1, "failed": 0, "uncertain": 0}
    (fresh,) = queue.claim("fast-worker", 1, 30)
    assert queue.finish([done(stale, response='{"stale": true}')]) == [stale.id]
    assert queue.finish([done(fresh, response='{"fresh": true}')]) == []
    row = queue.get(fresh.id, with_attempts=True)
    assert row["status"] == "succeeded" and row["response"] == '{"fresh": true}'
    assert [a["outcome"] for a in row["attempt_rows"]] == ["lost_lease", "lost_lease",
                                                           "succeeded"]


def test_a_retry_waits_its_backoff_before_it_can_be_claimed_again(queue: Queue) -> None:
    queue.enqueue("chat.getchats", READ)
    (c,) = queue.claim("w", 1, 30)
    queue.finish([done(c, "queued", retry_in=0.4, error_code="HTTP_503")])
    assert queue.claim("w", 1, 30) == []
    time.sleep(0.5)
    (again,) = queue.claim("w", 1, 30)
    assert again.attempts == 2
    assert queue.get(c.id)["error_code"] == "HTTP_503"


def test_expired_reads_are_queued_again_and_expired_sends_become_uncertain(queue: Queue) -> None:
    read = queue.enqueue("chat.getchats", READ).id
    send = queue.enqueue("chat.sendmessage", SEND).id
    queue.claim("doomed-worker", 2, 0.01)
    time.sleep(0.05)
    assert queue.recover_expired() == {"queued": 1, "failed": 0, "uncertain": 1}
    assert queue.get(read)["status"] == "queued"
    sent = queue.get(send)
    assert sent["status"] == "uncertain" and sent["error_code"] == "LEASE_EXPIRED"
    assert "may or may not have been delivered" in sent["error_message"]


def test_an_expired_read_on_its_last_attempt_fails(queue: Queue) -> None:
    rid = queue.enqueue("chat.getchats", READ, max_attempts=1).id
    queue.claim("w", 1, 0.01)
    time.sleep(0.05)
    queue.recover_expired()
    assert queue.get(rid)["status"] == "failed"


def test_cancel_only_touches_queued_requests(queue: Queue) -> None:
    a = queue.enqueue("chat.getchats", READ).id
    queue.cancel(a)
    assert queue.get(a)["status"] == "cancelled"
    with pytest.raises(InvalidState, match="only queued"):
        queue.cancel(a)
    with pytest.raises(RequestNotFound):
        queue.cancel(999)


def test_retry_requeues_failed_uncertain_and_cancelled_requests(queue: Queue) -> None:
    rid = queue.enqueue("chat.getchats", READ).id
    (c,) = queue.claim("w", 1, 30)
    queue.finish([done(c, "failed", error_code="CHANNEL_NOT_FOUND")])
    queue.retry(rid)
    row = queue.get(rid)
    assert (row["status"], row["attempts"], row["error_code"]) == ("queued", 0, None)
    with pytest.raises(InvalidState, match="only failed, uncertain or cancelled"):
        queue.retry(rid)


def test_purge_deletes_only_old_finished_requests_and_their_attempts(queue: Queue) -> None:
    old = queue.enqueue("chat.getchats", READ).id
    recent = queue.enqueue("chat.getchats", READ).id
    waiting = queue.enqueue("chat.getchats", READ, not_before=now() + timedelta(hours=1)).id
    claims = queue.claim("w", 5, 30)
    queue.finish([done(c) for c in claims])
    with queue.engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == old)
                     .values(finished_at=now() - timedelta(days=40)))
    assert queue.purge(30 * 86400) == 1
    with queue.engine.connect() as conn:
        assert {r.id for r in conn.execute(select(outbox.c.id))} == {recent, waiting}
        assert conn.execute(select(outbox_attempt.c.request_id)).scalars().all() == [recent]
    with pytest.raises(ValidationError, match="cannot purge status 'queued'"):
        queue.purge(0, ["queued"])


def test_a_plain_insert_needs_only_operation_and_params(queue: Queue) -> None:
    with queue.engine.begin() as conn:
        conn.execute(insert(outbox).values(operation="chat.getchats",
                                           params='{"platform": "telegram", "platformid": 200}'))
    (c,) = queue.claim("w", 5, 30)
    # No max_attempts given: the worker's setting, as for Python's enqueue and the procedures.
    assert (c.account, c.operation, c.attempts, c.max_attempts) == (
        "default", "chat.getchats", 1, queue.settings.worker.max_attempts)


def test_max_attempts_means_the_same_from_every_entry_point(queue: Queue) -> None:
    """NULL is "the worker's setting", read when the row is claimed: a plain INSERT and
    Python's enqueue agree, whatever the setting is when the worker runs; an explicit value
    stays the row's own."""
    import dataclasses
    default = queue.enqueue("chat.getchatchannels", {}).id
    own = queue.enqueue("chat.getchatchannels", {}, max_attempts=2).id
    with queue.engine.begin() as conn:
        conn.execute(insert(outbox).values(operation="chat.getchatchannels", params="{}"))
        stored = dict(conn.execute(select(outbox.c.id, outbox.c.max_attempts)).all())
    assert stored[default] == 0 and stored[own] == 2 and list(stored.values()).count(0) == 2
    later = Queue(queue.engine, dataclasses.replace(
        queue.settings, worker=dataclasses.replace(queue.settings.worker, max_attempts=9)))
    limits = {c.id: c.max_attempts for c in later.claim("w", 10, 30)}
    assert limits == {i: (2 if i == own else 9) for i in stored}


@pytest.mark.sqlite_only
def test_params_must_be_json(queue: Queue) -> None:
    with pytest.raises(IntegrityError), queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO outbox (operation, params) VALUES ('x.y', 'not json')"))


def test_release_gives_back_an_unstarted_claim_without_counting_an_attempt(queue: Queue) -> None:
    rid = queue.enqueue("chat.getchats", READ).id
    claims = queue.claim("w", 1, 30)
    assert queue.release(claims) == 1
    row = queue.get(rid)
    assert (row["status"], row["attempts"], row["lease_token"]) == ("queued", 0, None)


def test_concurrent_claimers_share_out_the_rows_without_overlap(queue: Queue) -> None:
    ids = [queue.enqueue("chat.getchats", READ).id for _ in range(200)]
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while batch := queue.claim(name, 7, 30):
            with lock:
                taken.extend(c.id for c in batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == ids

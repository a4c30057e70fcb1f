"""The per-batch paths made cheaper for CPU: finish as one executemany per batch (with the
lease fence intact), cached statements, the worker's completion queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import event, update

from sqlbridge.config import Settings
from sqlbridge.queue import Completion, Queue
from sqlbridge.schema import outbox
from sqlbridge.worker import Worker

READ = {"platform": "whatsapp", "platformid": "100"}


def done(claim, status: str = "succeeded", **kw) -> Completion:  # type: ignore[no-untyped-def]
    return Completion(id=claim.id, lease_token=claim.lease_token, attempt=claim.attempts,
                      status=status, started_at=datetime.now(UTC).replace(tzinfo=None),
                      duration_ms=1, worker="test", **kw)


def test_one_batch_writes_the_held_rows_and_fences_the_lost_ones(queue: Queue) -> None:
    for _ in range(5):
        queue.enqueue("chat.getchats", READ)
    claims = queue.claim("w", 5, 30)
    lost, taken = claims[1], claims[3]
    with queue.engine.begin() as conn:  # one lease was recovered, another row re-claimed
        conn.execute(update(outbox).where(outbox.c.id == lost.id)
                     .values(status="queued", lease_token=None))
        conn.execute(update(outbox).where(outbox.c.id == taken.id)
                     .values(lease_token="someone-else"))
    fenced = queue.finish([done(c, response=f'{{"n": {c.id}}}') for c in claims])
    assert sorted(fenced) == sorted([lost.id, taken.id])
    for c in claims:
        row = queue.get(c.id, with_attempts=True)
        if c in (lost, taken):
            assert row["status"] in ("queued", "processing") and row["response"] is None
            assert row["attempt_rows"][-1]["outcome"] == "lost_lease"
        else:
            assert row["status"] == "succeeded" and row["response"] == f'{{"n": {c.id}}}'


def test_a_batch_is_a_constant_number_of_statements(queue: Queue) -> None:
    for _ in range(30):
        queue.enqueue("chat.getchats", READ)
    claims = queue.claim("w", 30, 30)
    sent: list[str] = []
    event.listen(queue.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: sent.append(sql.split()[0]))
    assert queue.finish([done(c) for c in claims]) == []
    # BEGIN, the lease check, one executemany UPDATE, one executemany INSERT of attempts.
    assert sent.count("UPDATE") == 1 and sent.count("INSERT") == 1, sent
    assert len(sent) <= 4, sent


def test_the_worker_collects_every_finished_call(live: Settings, queue: Queue) -> None:
    ids = [queue.enqueue("chat.sendmessage", {**READ, "destination": f"3460{i:07d}",
                                              "message": f"m{i}"}).id for i in range(60)]
    worker = Worker(live, queue.engine, schedules=False, concurrency=16, batch=7)
    t = threading.Thread(target=worker.run, kwargs={"once": True})
    t.start()
    t.join(120)
    assert not t.is_alive()
    assert worker.stats.succeeded == 60
    assert {queue.get(i)["status"] for i in ids} == {"succeeded"}

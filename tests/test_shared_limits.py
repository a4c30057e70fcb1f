"""rate_limit shared by every worker (sqlbridge.shared_limits), against a real SQLite file.

Only lower bounds on time are asserted: a loaded machine makes things slower, never faster,
so the checks cannot flake the wrong way.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from sqlalchemy import Engine, func, select

from sqlbridge.config import Settings
from sqlbridge.queue import Queue
from sqlbridge.schema import rate_limit_slot
from sqlbridge.shared_limits import BLOCK_SECONDS, SharedRateLimiter
from sqlbridge.worker import Worker

KEY = ("default", "afilnet")


def test_three_workers_together_keep_one_account_s_rate(engine: Engine) -> None:
    rate, calls = 10.0, 30
    limiters = [SharedRateLimiter(engine) for _ in range(3)]  # one per worker process
    times: list[float] = []
    lock = threading.Lock()

    def caller(limiter: SharedRateLimiter, n: int) -> None:
        for _ in range(n):
            limiter.acquire(KEY, rate)
            with lock:
                times.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=caller, args=(limiters[i % 3], calls // 6))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(times) == calls
    # 30 disjoint slots 0.1 s apart: the last is at least 2.9 s after the first could be.
    assert max(times) - start >= (calls - 1) / rate - 0.05
    # Each round trip reserved a block of slots, not one.
    assert sum(lim.reservations for lim in limiters) <= calls / round(rate * BLOCK_SECONDS) + 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rate_limit_slot)).scalar() == 1


def test_no_limit_means_no_database_work(engine: Engine) -> None:
    limiter = SharedRateLimiter(engine)
    for _ in range(5):
        limiter.acquire(KEY, None)
    assert limiter.reservations == 0


def test_slots_that_went_by_unused_are_not_spent_late(engine: Engine) -> None:
    rate = 20.0  # a block holds 5 slots, 0.05 s apart
    limiter = SharedRateLimiter(engine)
    limiter.acquire(KEY, rate)
    threading.Event().wait(0.6)  # the rest of the block is now in the past
    limiter.acquire(KEY, rate)
    t0 = time.monotonic()
    limiter.acquire(KEY, rate)
    # Had the stale slots been used, this call would have returned at once.
    assert time.monotonic() - t0 >= 0.5 / rate


def test_a_worker_that_dies_with_slots_reserved_only_slows_the_others(engine: Engine) -> None:
    rate = 8.0
    dead = SharedRateLimiter(engine)
    dead.acquire(KEY, rate)  # reserves a block of 2, uses one, then "dies"
    alive = SharedRateLimiter(engine)
    t0 = time.monotonic()
    alive.acquire(KEY, rate)
    # The survivor's first slot comes after the dead worker's whole block.
    assert time.monotonic() - t0 >= 2 / rate - 0.05


def test_two_workers_sending_for_one_account_respect_its_rate(live: Settings,
                                                              queue: Queue) -> None:
    account = live.accounts["default"]
    limited = dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet,
                                                                       rate_limit=10.0))
    settings = dataclasses.replace(live, accounts={"default": limited})
    for i in range(20):
        queue.enqueue("chat.sendmessage", {"platform": "whatsapp", "platformid": "100",
                                           "destination": f"3460{i:07d}", "message": "hi"})
    workers = [Worker(settings, queue.engine, schedules=False, concurrency=8)
               for _ in range(2)]
    start = time.monotonic()
    threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(w.stats.succeeded for w in workers) == 20
    # Two workers with their own limiters would have taken about 1 s; shared, 20 calls at
    # 10 a second take at least 1.9 s.
    assert time.monotonic() - start >= 1.9 - 0.05


def test_an_unreachable_database_fails_the_call_as_not_sent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlbridge.db import make_engine
    from sqlbridge.errors import TransientError

    broken = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    limiter = SharedRateLimiter(broken)
    try:
        limiter.acquire(KEY, 5.0)
    except TransientError as exc:
        assert exc.code == "RATE_LIMIT_UNAVAILABLE" and exc.delivered is False
    else:
        raise AssertionError("acquire must fail when the table cannot be reached")
    finally:
        broken.dispose()

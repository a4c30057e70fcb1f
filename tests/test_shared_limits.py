"""rate_limit shared by every worker (sqlbridge.shared_limits), against a real SQLite file.

Only lower bounds on time are asserted: a loaded machine makes things slower, never faster,
so the checks cannot flake the wrong way.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from sqlalchemy import Engine, event, func, select

from sqlbridge.config import Settings
from sqlbridge.queue import Queue
from sqlbridge.schema import rate_limit_slot
from sqlbridge.shared_limits import (
    BLOCK_SECONDS,
    STALE_SLOTS,
    SharedRateLimiter,
    _Block,
    _drop_stale,
)
from sqlbridge.sqlfuncs import epoch_now
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


def _next_free(engine: Engine) -> tuple[float, float]:
    """(next_at, the database's now) of KEY's row."""
    with engine.connect() as conn:
        next_at, now = conn.execute(select(rate_limit_slot.c.next_at, epoch_now())).one()
    return float(next_at), float(now)


def test_a_worker_that_dies_with_slots_reserved_only_slows_the_others(engine: Engine) -> None:
    rate = 8.0
    dead = SharedRateLimiter(engine)
    dead.acquire(KEY, rate)  # reserves a block of 2, uses one, then "dies"
    dead_end, db_now = _next_free(engine)
    t0 = time.monotonic()
    alive = SharedRateLimiter(engine)
    alive.acquire(KEY, rate)
    # The survivor's block starts where the dead worker's whole block ends (or later, if that
    # end had passed), and its first call waits for it. Measured from the end the database
    # records, not from the dead worker's return: a slow first round trip (over 100 ms on a
    # new Babelfish connection) returns late, inside its own block.
    assert _next_free(engine)[0] >= dead_end + 2 / rate
    assert time.monotonic() - t0 >= (dead_end - db_now) - 0.05


def test_a_block_that_arrives_late_does_not_fire_its_past_slots_together(
        engine: Engine) -> None:
    """The block is stamped by the database's clock at the UPDATE; if the answer comes back
    later than its slots (a loaded server, a new connection), those slots are dropped: a
    burst of calls on arrival would break the rate for everyone."""
    rate, delay = 20.0, 0.16  # a block of 5 slots 0.05 s apart: 3 gone by on arrival
    slowed: list[bool] = []

    def slow_first_reservation(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        if not slowed and statement.lstrip().upper().startswith("UPDATE") and \
                "rate_limit_slot" in statement:
            slowed.append(True)
            time.sleep(delay)

    limiter = SharedRateLimiter(engine)
    limiter.acquire(KEY, rate)  # the row exists, and this worker's block ...
    threading.Event().wait(BLOCK_SECONDS + 0.1)  # ... has gone by: the next one reserves
    slowed.clear()
    event.listen(engine, "after_cursor_execute", slow_first_reservation)
    try:
        calls = []
        for _ in range(3):
            limiter.acquire(KEY, rate)
            calls.append(time.monotonic())
    finally:
        event.remove(engine, "after_cursor_execute", slow_first_reservation)
    assert slowed
    # Late slots fired on arrival would be ~0 s apart; a slot kept late by up to
    # STALE_SLOTS intervals leaves at least the rest of an interval before the next.
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert min(gaps) >= (1 - STALE_SLOTS) / rate - 0.005, gaps


def test_a_slow_database_does_not_make_a_worker_drop_its_slots_every_time(
        engine: Engine) -> None:
    """Each reservation starts its block the last round trip ahead, so the answer arrives
    before its slots: dropping the late ones on every round trip would cut the rate."""
    rate, delay, calls = 20.0, 0.2, 40  # blocks of 5, 0.05 s apart; answers take 0.2 s

    def slow_reservations(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE") and "rate_limit_slot" in statement:
            time.sleep(delay)

    limiter = SharedRateLimiter(engine)
    event.listen(engine, "after_cursor_execute", slow_reservations)
    try:
        for _ in range(calls):
            limiter.acquire(KEY, rate)
    finally:
        event.remove(engine, "after_cursor_execute", slow_reservations)
    block = round(rate * BLOCK_SECONDS)
    # Whole blocks after the first: about 9 round trips. Blocks that start "now" arrive
    # 3 slots late and keep 2 of 5: about 20.
    assert limiter.reservations <= calls / block + 4, limiter.reservations


def test_a_database_slower_than_a_block_fails_the_call_as_not_sent(engine: Engine) -> None:
    """Every block gone by on arrival, RESERVE_TRIES times: the call is not made (the queue
    tries it later), rather than spending late slots or reserving for ever."""
    from sqlbridge.errors import TransientError
    from sqlbridge.shared_limits import RESERVE_TRIES

    SharedRateLimiter(engine).acquire(KEY, 20.0)  # the row exists

    def too_slow(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE") and "rate_limit_slot" in statement:
            time.sleep(0.6)  # longer than a block, its lead and the stale allowance together

    limiter = SharedRateLimiter(engine)
    event.listen(engine, "after_cursor_execute", too_slow)
    try:
        limiter.acquire(KEY, 20.0)
    except TransientError as exc:
        assert exc.code == "RATE_LIMIT_UNAVAILABLE" and exc.delivered is False
        assert f"{RESERVE_TRIES} blocks of slots in a row had gone by" in str(exc)
    else:
        raise AssertionError("acquire must give up when every block arrives too late")
    finally:
        event.remove(engine, "after_cursor_execute", too_slow)
    assert limiter.reservations == RESERVE_TRIES


def test_a_late_slot_is_kept_only_within_the_stale_allowance() -> None:
    interval = 0.1
    for late_by in (0.0, 0.05, 0.051, 0.08, 0.1, 0.13, 0.29):
        block = _Block(rate=10.0, next_local=100.0 - late_by, left=5)
        _drop_stale(block, 100.0, interval)
        # What is left starts at most STALE_SLOTS intervals ago, and no usable slot was lost.
        assert block.next_local >= 100.0 - STALE_SLOTS * interval - 1e-9, late_by
        assert block.next_local < 100.0 - STALE_SLOTS * interval + interval, late_by
        assert block.left == 5 - round((block.next_local - (100.0 - late_by)) / interval)


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

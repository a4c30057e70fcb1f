"""The worker process: claim, call on a thread pool, write back, repeat.

One thread (the caller of ``run``) owns every database conversation; the pool threads only do
HTTP (and, for an account with a ``rate_limit``, reserve send slots in blocks:
``sqlbridge.shared_limits``). That keeps database round trips few and batched (one claim per
batch, one finish transaction for everything that completed since the last loop, one lease
renewal per claim token) and means a database outage pauses bookkeeping without touching
calls in flight.

Shutdown (SIGTERM/SIGINT through ``stop()``): no new claims; claims not yet started are
released back to the queue without counting an attempt; calls in flight get ``grace`` seconds
(default 30) to finish and be written. Calls still running after that are abandoned: their rows
keep their leases, which expire and are settled by lease recovery (reads run again, sends become
``uncertain``), and ``stats.abandoned`` tells the caller to exit without waiting for them.
A row whose content cannot be read (a poison row) fails alone with UNREADABLE_ROW (see
``Queue.claim``); a statement that still fails on data is logged and skipped, never retried in a
loop, and a result that cannot be stored is replaced by a plain failure of its own row.
A lost database connection is retried with back-off until it returns or the worker is stopped;
completions wait in memory meanwhile, and if their leases expired in the gap the fenced finish
refuses them and recovery settles the rows (reads run again, sends become ``uncertain``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from . import attempt, dbcheck, dberrors, logs, sync, wakeup
from .config import Settings
from .db import make_engine
from .health import Observer
from .queue import PURGE_BATCH, Claimed, Completion, Queue, is_data_error
from .shared_limits import SharedRateLimiter

log = logging.getLogger("sqlbridge.worker")
T = TypeVar("T")

# Longest a finished result waits in memory before it is written.
FLUSH_INTERVAL = 0.1
# With --once, a queued row due within this many seconds (a retry's backoff) is waited for.
ONCE_HORIZON = 30.0
# Seconds calls in flight get to finish after a stop request (``sqlbridge worker --grace``).
DEFAULT_GRACE = 30.0
# [worker] retention runs at start and then this often (seconds).
RETENTION_EVERY = 3600.0
# While idle, the waker reports expired leases and due schedules itself; these clocks are
# only a safety net (and keep an idle worker's database traffic near zero).
IDLE_CHECK_EVERY = 300.0
# ...and an idle wait ends at least this often, so the loop comes round (the health endpoint's
# stall threshold is 60 s or more); a wait that ended with nothing to do claims nothing.
IDLE_TURN = 20.0


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    uncertain: int = 0
    fenced: int = 0
    released: int = 0
    # Calls still running when the shutdown grace ran out (left to lease recovery).
    abandoned: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    db_errors: int = 0

    def __str__(self) -> str:
        return logs.stats_sentence(self)

    def count(self, status: str) -> None:
        name = {"queued": "retried"}.get(status, status)
        setattr(self, name, getattr(self, name) + 1)


def _drain(completed: SimpleQueue[Future[Completion]], timeout: float) -> list[Future[Completion]]:
    """The calls finished so far, waiting up to ``timeout`` for the first one."""
    try:
        got = [completed.get(timeout=timeout) if timeout > 0 else completed.get_nowait()]
    except Empty:
        return []
    while True:
        try:
            got.append(completed.get_nowait())
        except Empty:
            return got


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Worker:
    """Runs requests from the outbox until stopped (or, with ``once``, until it is empty)."""

    def __init__(self, settings: Settings, engine: Engine | None = None, *,
                 worker_id: str | None = None, concurrency: int | None = None,
                 batch: int | None = None, poll_interval: float | None = None,
                 lease_seconds: float | None = None, call: attempt.Caller | None = None,
                 schedules: bool = True, grace: float = DEFAULT_GRACE,
                 observer: Observer | None = None) -> None:
        self.settings = settings
        self.grace = max(0.0, grace)
        self.observer = observer or Observer()  # metrics and health (sqlbridge.health)
        self.engine = engine or make_engine(settings.database_url)
        self.queue = Queue(self.engine, settings)
        w = settings.worker
        self.id = worker_id or default_worker_id()
        self.concurrency = concurrency or w.concurrency
        self.batch = batch or w.batch
        self.poll_interval = poll_interval if poll_interval is not None else w.poll_interval
        self.lease = lease_seconds or w.lease_seconds
        self.schedules = schedules
        self._providers: Any = None
        self._call = call
        self._stop = threading.Event()
        self._next_retention = 0.0
        self.stats = WorkerStats()

    # -- wiring ----------------------------------------------------------------------------

    def _caller(self) -> attempt.Caller:
        if self._call is None:
            from .providers import build_providers

            self._providers = build_providers(pool_size=self.concurrency)
            # rate_limit holds across every worker, not per process (sqlbridge.shared_limits).
            self._providers.transport.limiter = SharedRateLimiter(self.engine)
            self._call = self._providers.call
        return self._call

    @staticmethod
    def _inbox_writer() -> Callable[..., Any]:
        from . import inbox

        return inbox.write

    def stop(self) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- database calls that survive outages --------------------------------------------------

    def _db(self, what: str, fn: Callable[[], T], *, must_finish: bool = False,
            skip_data_errors: bool = True) -> T | None:
        """Run one queue call; on a lost connection or deadlock, back off and try again.

        Gives up (returns None) once the worker is stopping, except for ``must_finish`` calls
        (writing results, releasing claims), which keep trying for one lease period: after
        that the leases have expired anyway and recovery settles the rows. A failure caused by
        a row's content (``is_data_error``) is not an outage: running the same statement again
        would fail the same way forever, so it is logged and skipped (returns None), unless
        ``skip_data_errors`` is off (the caller handles it).

        Which database errors are outages is decided in one place, ``dberrors.classify``; any
        other error is raised. Running ``fn`` again after a dropped connection is safe even
        when the first run's commit may have landed: every statement the worker repeats is
        fenced by the state it expects (finish, renew, release: the lease token; recovery: an
        expired lease; claim: ``status='queued'``), so a repeat matches nothing it already
        changed; ``Queue.finish`` recognises its own earlier attempt rows, and a repeated claim
        takes back the rows its lost commit claimed (``Queue.repeatable_claim``).
        """
        pause = 0.2
        deadline: float | None = None
        while True:
            try:
                result = fn()
                self.observer.db_ok()
                return result
            except Exception as exc:
                if is_data_error(exc):
                    if not skip_data_errors:
                        raise
                    log.error("%s failed on a row's content and was skipped: %s", what,
                              str(exc)[:300])
                    return None
                if not isinstance(exc, OperationalError | DBAPIError):
                    raise
                self.stats.db_errors += 1
                error = dberrors.classify(exc)
                self.observer.db_error(error)
                if not error.transient:
                    log.error("database error during %s is not an outage, stopping: %s", what,
                              str(exc.orig).splitlines()[0][:300])
                    raise
                log.warning("database unavailable during %s (%s: %s); retrying in %.1fs", what,
                            error, dbcheck.classify(exc, self.engine.url), pause)
            if self._stop.is_set():
                if not must_finish:
                    return None
                deadline = deadline or time.monotonic() + self.lease
                if time.monotonic() > deadline:
                    log.error("gave up on %s: the database stayed unreachable", what)
                    return None
                time.sleep(pause)
            else:
                self._stop.wait(pause)
            pause = min(pause * 2, 10.0)

    # -- the loop --------------------------------------------------------------------------

    def run(self, *, once: bool = False, max_seconds: float | None = None) -> WorkerStats:
        """Process requests. ``once``: stop when nothing is queued or in flight (the demo and
        tests use it); ``max_seconds``: stop after that long."""
        call = self._caller()
        writer = self._inbox_writer()
        started = time.monotonic()
        inflight: dict[Future[Completion], Claimed] = {}
        # Calls report here as they finish: the loop takes what is done without registering
        # a waiter on every call in flight each time round (that cost O(concurrency) per call).
        completed: SimpleQueue[Future[Completion]] = SimpleQueue()
        done: list[Completion] = []
        tokens: dict[str, float] = {}  # lease token -> when it was last renewed
        last_flush = time.monotonic()
        next_recovery = 0.0
        next_schedules = 0.0
        fan_out = functools.partial(sync.followups, self.engine)
        if self.schedules and self.settings.schedules:
            self._db("schedules from settings", lambda: sync.bootstrap(self.engine,
                                                                        self.settings))
        waker: wakeup.Waker | None = None
        quiet = False  # the last idle wait ended with nothing due: no claim to make
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sqlbridge-call")
        log.info("worker %s started: concurrency %d, batch %d", self.id, self.concurrency,
                 self.batch)
        try:
            while not self._stop.is_set():
                self.observer.loop(len(inflight))
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                idle = not inflight and not done
                if now >= next_recovery:
                    recovered = self._db("lease recovery", self.queue.recover_expired) or {}
                    self.observer.recovered(recovered)
                    for k, v in recovered.items():
                        self.stats.recovered[k] = self.stats.recovered.get(k, 0) + v
                    next_recovery = now + (IDLE_CHECK_EVERY if idle else max(1.0, self.lease / 4))
                    quiet = False
                self._retention(now)
                if self.schedules and now >= next_schedules:
                    self._db("schedules", lambda: sync.run_due(self.queue, self.id))
                    next_schedules = now + (IDLE_CHECK_EVERY if idle else 1.0)
                    quiet = False

                free = self.concurrency - len(inflight)
                claims: list[Claimed] = []
                # Claim in batches: refill when half the slots are free (or all are idle),
                # not one row per finished call, so each claim statement carries many rows.
                if free > 0 and (not inflight or free >= max(1, self.concurrency // 2)) \
                        and not quiet:
                    t0 = time.monotonic()
                    claims = self._probes(free)
                    claims += self._db("claim", self.queue.repeatable_claim(
                        self.id, min(free - len(claims), self.batch), self.lease)) or []
                    self.observer.claimed(claims, time.monotonic() - t0)
                for c in claims:
                    tokens.setdefault(c.lease_token, now)
                    fut = pool.submit(attempt.run, c, settings=self.settings, call=call,
                                      worker=self.id, followups=fan_out)
                    fut.add_done_callback(completed.put)
                    inflight[fut] = c
                self.stats.claimed += len(claims)
                quiet = False
                if claims:  # busy again: the checks return to their busy clocks
                    next_recovery = min(next_recovery, now + max(1.0, self.lease / 4))
                    next_schedules = min(next_schedules, now + 1.0)

                if inflight:
                    timeout = 0.0 if claims and len(inflight) < self.concurrency else 0.05
                    for fut in _drain(completed, timeout):
                        inflight.pop(fut)
                        done.append(fut.result())
                elif not claims:
                    if once and not done:
                        due = self._db("next due", self.queue.next_due_in)
                        # Wait for retries about to fall due; leave far-future rows queued.
                        if due is None or due > ONCE_HORIZON:
                            break
                        if due == 0:
                            # Due rows that no claim could take (a full max_in_flight, an
                            # open circuit breaker): a dead worker's leases may be what holds
                            # them, so recovery keeps its busy clock.
                            next_recovery = min(next_recovery, now + max(1.0, self.lease / 4))
                        self._stop.wait(min(max(due, 0.01), self.poll_interval))
                        continue
                    # Idle: wait for a due row, an expired lease or a due schedule (the
                    # waker says which), or for the next clock; no claim until then.
                    until = min(next_recovery, next_schedules if self.schedules else math.inf,
                                started + max_seconds if max_seconds is not None else math.inf,
                                time.monotonic() + FLUSH_INTERVAL if done else math.inf,
                                self._next_retention if self.settings.worker.retention
                                is not None else math.inf, time.monotonic() + IDLE_TURN)
                    waker = waker or self._db("wake-up setup", self._waker)
                    woke = (self._db("wake-up", functools.partial(
                        waker.wait, self._stop, until - time.monotonic())) if waker else None
                            ) or set()
                    quiet = not woke
                    if quiet and waker is not None:
                        self._db("database check", waker.probe)
                    if wakeup.LEASE in woke:
                        next_recovery = 0.0
                    if wakeup.SCHEDULE in woke:
                        next_schedules = 0.0

                # Write results in batches too: when half the pool has finished, when a short
                # while has passed, or when nothing else is running.
                if done and (len(done) >= max(1, self.concurrency // 2) or not inflight
                             or time.monotonic() - last_flush >= FLUSH_INTERVAL):
                    self._flush(done, writer)
                    last_flush = time.monotonic()
                self._renew(tokens, inflight)
        finally:
            if waker is not None:
                waker.close()
            self._shutdown(pool, inflight, done, writer, tokens)
        return self.stats

    def _probes(self, free: int) -> list[Claimed]:
        """One probe row for each circuit breaker whose pause is over (sqlbridge.breaker),
        if this worker wins it. The breakers are read at most once a second, so this costs
        nothing while every breaker is closed."""
        claims: list[Claimed] = []
        for key in self._db("circuit breakers", self.queue.breakers.due_probes) or []:
            if len(claims) >= free:
                break
            got = self._db("probe", self.queue.repeatable_claim(self.id, 1, self.lease,
                                                                probe=key)) or []
            if got:
                log.info("circuit breaker %s/%s: probing with request %d", key[0], key[1],
                         got[0].id)
            claims += got
        return claims

    def _retention(self, now: float) -> None:
        """``[worker] retention``: purge finished requests older than it, on a slow clock
        (bounded batches, so claims are never held up)."""
        age = self.settings.worker.retention
        if age is None or now < self._next_retention:
            return
        # One batch per tick keeps the loop (claims, results, lease renewals) moving; while
        # a full batch came back there is more, so the next tick comes soon.
        purged = self._db("retention purge", lambda: self.queue.purge(age, max_batches=1))
        self._next_retention = now + (1.0 if purged and purged >= PURGE_BATCH
                                      else RETENTION_EVERY)
        if purged:
            log.info("retention: purged %d finished requests older than %gs", purged, age)

    def _waker(self) -> wakeup.Waker:
        return wakeup.for_engine(self.engine, poll_interval=self.poll_interval,
                                 schedules=self.schedules)

    def _flush(self, done: list[Completion], writer: Callable[..., Any]) -> None:
        try:
            fenced = self._db("finish", lambda: self.queue.finish(done, writer),
                              must_finish=True, skip_data_errors=False)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            fenced = self._finish_one_by_one(done, writer)
        if fenced is None:
            return
        logs.attempts_written(done, fenced)
        self.observer.finished(done, fenced)
        for c in done:
            if c.id in fenced:
                self.stats.fenced += 1
                log.warning("request %d: lease lost before its result was written", c.id)
            else:
                self.stats.count(c.status)
        done.clear()

    def _finish_one_by_one(self, done: list[Completion],
                           writer: Callable[..., Any]) -> list[int] | None:
        """A batch failed on some result's content (textsafe should make that impossible; this
        is the net under it): write each result alone, and replace one that still cannot be
        written by a plain failure of its row, so one answer never holds back the others."""
        fenced: list[int] = []
        for i, c in enumerate(done):
            try:
                got = self._db("finish", lambda c=c: self.queue.finish([c], writer),
                               must_finish=True, skip_data_errors=False)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                log.error("request %d: its result could not be stored (%s); failing it",
                          c.id, type(exc).__name__)
                plain = Completion(
                    id=c.id, lease_token=c.lease_token, attempt=c.attempt, status="failed",
                    started_at=c.started_at, duration_ms=c.duration_ms, worker=c.worker,
                    provider=c.provider, http_status=c.http_status,
                    error_code="UNSTORABLE_RESULT",
                    error_message=f"the result could not be stored: {type(exc).__name__}")
                done[i] = plain
                got = self._db("finish", lambda p=plain: self.queue.finish([p], None),
                               must_finish=True)
            if got is None:
                return None
            fenced.extend(got)
        return fenced

    def _renew(self, tokens: dict[str, float], inflight: dict[Future[Completion], Claimed]) -> None:
        now = time.monotonic()
        if not tokens or now - min(tokens.values()) < self.lease / 3:
            return  # nothing due: skip the walk over every call in flight
        live = {c.lease_token for c in inflight.values()}
        for token in list(tokens):
            if token not in live:
                del tokens[token]
            elif now - tokens[token] >= self.lease / 3:
                self._db("lease renewal", lambda t=token: self.queue.renew(t, self.lease))
                tokens[token] = now

    def _shutdown(self, pool: ThreadPoolExecutor, inflight: dict[Future[Completion], Claimed],
                  done: list[Completion], writer: Callable[..., Any],
                  tokens: dict[str, float]) -> None:
        unstarted = [c for fut, c in inflight.items() if fut.cancel()]
        if unstarted:
            released = self._db("release", lambda: self.queue.release(unstarted),
                                must_finish=True) or 0
            self.stats.released += released
        running = {fut: c for fut, c in inflight.items() if not fut.cancelled()}
        ends = time.monotonic() + self.grace
        while running:
            left = ends - time.monotonic()
            if left <= 0:
                break
            finished, _ = wait(list(running), timeout=min(left, 1.0),
                               return_when=FIRST_COMPLETED)
            for fut in finished:
                running.pop(fut)
                done.append(fut.result())
            self._renew(tokens, running)  # a long grace must not lose the leases
        if running:
            self.stats.abandoned = len(running)
            log.warning("worker %s: %d calls still running after the %gs grace; leaving their "
                        "rows to lease recovery (ids %s)", self.id, len(running), self.grace,
                        ", ".join(str(c.id) for c in running.values()))
        # Abandoned calls keep running on their threads until their own deadline; nothing
        # waits for them (the process exits; see the worker command).
        pool.shutdown(wait=not running, cancel_futures=True)
        if done:
            self._flush(done, writer)
        if self._providers is not None and not running:
            self._providers.close()
        log.info("worker %s stopped: %s", self.id, self.stats)

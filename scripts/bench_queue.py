"""Queue and worker benchmark: prints figures, asserts nothing (targets live here, not in tests).

Measures, on the embedded default (SQLite file + the sandbox on 127.0.0.1):
- enqueue rate through the validating Python path;
- end-to-end throughput of one worker (claim -> HTTP -> finish) at a few sandbox latencies,
  the sandbox running in a separate process;
- database round trips per request (statements the worker sent / requests finished);
- peak resident memory of the process.

Usage: .venv/bin/python scripts/bench_queue.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import event

from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.worker import Worker


@contextlib.contextmanager
def sandbox_process(latency_ms: float) -> Iterator[Sandbox]:
    """The sandbox in its own process, so it does not share the worker's GIL: the figures
    then measure sqlbridge, not a Python HTTP server fighting it for one core."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sqlbridge", "sandbox", "--port", str(port),
                             "--latency-ms", str(latency_ms)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        handle = Sandbox(port=port)  # not started: only its URLs and credentials are used
        yield handle
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def count_statements(engine) -> list[int]:
    counter = [0]

    def before(*_args: object) -> None:
        counter[0] += 1

    event.listen(engine, "before_cursor_execute", before)
    return counter


def bench(requests: int, concurrency: int, latency_ms: float, workdir: Path) -> dict[str, float]:
    url = f"sqlite:///{workdir / f'bench-{latency_ms:g}.db'}"
    engine = make_engine(url)
    install(engine)
    with sandbox_process(latency_ms) as sb:
        settings = Settings(database_url=url, accounts={"default": sb.account("default")},
                            worker=dataclasses.replace(WorkerSettings(), concurrency=concurrency,
                                                       batch=100, poll_interval=0.05))
        queue = Queue(engine, settings)
        t0 = time.perf_counter()
        for i in range(requests):
            queue.enqueue("chat.sendmessage", {"platform": "whatsapp", "platformid": "100",
                                               "destination": f"3460000{i % 50:04d}",
                                               "message": f"bench {i} olá 😀"})
        enqueue_s = time.perf_counter() - t0
        statements = count_statements(engine)
        t0 = time.perf_counter()
        stats = Worker(settings, engine, schedules=False).run(once=True)
        run_s = time.perf_counter() - t0
    engine.dispose()
    return {
        "latency_ms": latency_ms,
        "enqueue_per_s": requests / enqueue_s,
        "worker_per_s": stats.succeeded / run_s,
        "succeeded": stats.succeeded,
        "statements_per_request": statements[0] / max(1, stats.succeeded),
    }


def _timed(fn: object, repeat: int = 7) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_backlog(rows: int, workdir: Path) -> dict[str, float]:
    """Claim, next_due_in and status with ``rows`` queued and ``rows`` finished requests.

    The rows are written with one INSERT ... SELECT each (the point is the reads, not how the
    rows got there). Every claim takes 50 rows, so the backlog shrinks by 50 per timing.
    """
    url = f"sqlite:///{workdir / 'backlog.db'}"
    engine = make_engine(url)
    install(engine)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for status, finished in (("succeeded", "'2026-01-01 00:00:01.000000'"),
                                 ("queued", "NULL")):
            conn.exec_driver_sql(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                "INSERT INTO outbox (account, provider, operation, params, priority, status, "
                "available_at, created_at, finished_at) SELECT 'default', 'afilnet', "
                "'chat.sendmessage', '{\"platform\":\"whatsapp\",\"message\":\"x\"}', i % 3, "
                f"'{status}', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', "
                f"{finished} FROM s", (rows,))
    fill_s = time.perf_counter() - t0
    queue = Queue(engine, Settings(database_url=url))
    figures = {
        "backlog_rows": rows,
        "backlog_fill_s": fill_s,
        "claim_50_ms": _timed(lambda: queue.claim("bench", 50, 60)),
        "next_due_in_ms": _timed(queue.next_due_in),
        "status_ms": _timed(queue.summary, repeat=3),
    }
    engine.dispose()
    return figures


def bench_idle(samples: int, latency_ms: float, workdir: Path,
               idle_window: float = 20.0) -> dict[str, float]:
    """An idle worker (its own thread, the sandbox in its own process): enqueue one request at
    a time at random moments and time enqueue -> claim (created_at -> started_at, both the
    database's clock; the HTTP call leaves right after the claim); then count what the idle
    worker sends to the database in ``idle_window`` seconds."""
    url = f"sqlite:///{workdir / 'idle.db'}"
    engine = make_engine(url)
    install(engine)
    rng = random.Random(7)
    with sandbox_process(latency_ms) as sb:
        settings = Settings(database_url=url, accounts={"default": sb.account("default")},
                            worker=dataclasses.replace(WorkerSettings(), concurrency=8))
        queue = Queue(engine, settings)
        worker = Worker(settings, engine, schedules=True)
        thread = threading.Thread(target=worker.run)
        thread.start()
        pause = threading.Event()
        delays = []
        try:
            for i in range(samples):
                pause.wait(rng.uniform(0.2, 0.6))
                rid = queue.enqueue("chat.sendmessage", {
                    "platform": "whatsapp", "platformid": "100",
                    "destination": "34600000001", "message": f"idle {i}"}).id
                row = queue.wait(rid, 30, poll=0.01)
                delays.append((_dt(row["started_at"]) - _dt(row["created_at"])).total_seconds())
            pause.wait(3.0)  # the busy-period clocks fire once more after going idle
            statements = count_statements(engine)
            pause.wait(idle_window)
            idle_statements = statements[0]
        finally:
            worker.stop()
            thread.join()
    engine.dispose()
    delays.sort()
    return {
        "idle_samples": samples,
        "wakeup_p50_ms": statistics.median(delays) * 1000,
        "wakeup_p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000,
        "idle_statements_per_min": idle_statements * 60 / idle_window,
    }


def _dt(value: object) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]


def bench_bulk(rows: int, workdir: Path) -> dict[str, float]:
    """Queue.enqueue_many: validated, ``request_key`` on every other row, 2,000 per
    transaction."""
    url = f"sqlite:///{workdir / 'bulk.db'}"
    engine = make_engine(url)
    install(engine)
    queue = Queue(engine, Settings(database_url=url))
    requests = [{"operation": "chat.sendmessage",
                 "params": {"platform": "whatsapp", "platformid": "100",
                            "destination": f"3460000{i % 50:04d}", "message": f"bulk {i} olá"},
                 **({"request_key": f"bulk-{i}"} if i % 2 else {})} for i in range(rows)]
    t0, c0 = time.perf_counter(), time.process_time()
    created = sum(r.created for r in queue.enqueue_many(requests))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.dispose()
    assert created == rows
    # Per CPU second too: on a shared machine the wall-clock rate says more about the
    # neighbours than about sqlbridge.
    return {"bulk_rows": rows, "bulk_rows_per_s": rows / elapsed,
            "bulk_rows_per_cpu_s": rows / cpu}


def print_backlog(b: dict[str, float]) -> None:
    print(f"backlog: {b['backlog_rows']:,.0f} queued + {b['backlog_rows']:,.0f} finished rows "
          f"(written in {b['backlog_fill_s']:.0f} s)")
    print(f"  claim of 50: {b['claim_50_ms']:.2f} ms   next_due_in: {b['next_due_in_ms']:.2f} ms"
          f"   status (summary): {b['status_ms']:.0f} ms   (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="queued (and as many finished) rows for the claim-time case; 0 skips")
    parser.add_argument("--idle-samples", type=int, default=40,
                        help="single requests sent to an idle worker (wake-up latency); 0 skips")
    parser.add_argument("--bulk", type=int, default=100_000,
                        help="rows for the bulk enqueue (enqueue_many) case; 0 skips")
    args = parser.parse_args()
    if args.bulk:
        with tempfile.TemporaryDirectory() as tmp:
            b = bench_bulk(args.bulk, Path(tmp))
        print(f"bulk enqueue (Queue.enqueue_many): {b['bulk_rows']:,.0f} rows at "
              f"{b['bulk_rows_per_s']:,.0f} rows/s ({b['bulk_rows_per_cpu_s']:,.0f} per CPU "
              "second)")
    if args.idle_samples:
        with tempfile.TemporaryDirectory() as tmp:
            i = bench_idle(args.idle_samples, 50.0, Path(tmp))
        print(f"idle worker: enqueue -> claim p50 {i['wakeup_p50_ms']:.0f} ms, p99 "
              f"{i['wakeup_p99_ms']:.0f} ms ({i['idle_samples']:.0f} samples); idle database "
              f"statements {i['idle_statements_per_min']:.1f}/min")
    if args.backlog:
        with tempfile.TemporaryDirectory() as tmp:
            print_backlog(bench_backlog(args.backlog, Path(tmp)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency in (0.0, 20.0):
            rows.append(bench(args.requests, args.concurrency, latency, Path(tmp)))
    print(f"queue benchmark: {args.requests} chat.sendmessage requests, "
          f"concurrency {args.concurrency}, SQLite + sandbox on 127.0.0.1")
    print(f"{'sandbox latency':>16} {'enqueue/s':>10} {'worker req/s':>13} "
          f"{'succeeded':>10} {'DB statements/request':>22}")
    for r in rows:
        print(f"{r['latency_ms']:>14.0f}ms {r['enqueue_per_s']:>10.0f} "
              f"{r['worker_per_s']:>13.0f} {r['succeeded']:>10.0f} "
              f"{r['statements_per_request']:>22.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

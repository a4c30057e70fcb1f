"""Queue and worker benchmark: prints figures and writes them as JSON; asserts nothing (the
targets live here, in the printout, not in timed tests).

One run measures, on the embedded default (a SQLite file) against the sandbox in its own
process with 50 ms latency:
- the sandbox's own capacity (a load generator of two processes), so it is known not to be
  the bottleneck;
- the sequential baseline: one blocking call at a time, the sp_OACreate pattern;
- the worker at concurrency 1, 8, 32, 64 and with ``--processes 2`` (2 x 32): requests per
  second (from the rows' own started_at/finished_at), the ratio to the baseline and to
  concurrency / latency, CPU per request, database statements and commits per request;
- an idle worker: enqueue -> claim p50/p99 and database statements per idle minute;
- claim, next_due_in and status with 1,000,000 queued + 1,000,000 finished rows;
- bulk enqueue (Queue.enqueue_many) rows per second;
- peak resident memory.

Usage: .venv/bin/python scripts/bench_queue.py [--quick] [--json FILE] [--backlog N] ...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, event, func, select

from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.errors import SqlbridgeError
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.sandbox import SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER, Sandbox
from sqlbridge.schema import outbox
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


LATENCY_MS = 50.0
SEND = "chat.sendmessage"


def _send(i: int) -> dict[str, object]:
    return {"operation": SEND, "params": {"platform": "whatsapp", "platformid": "100",
                                          "destination": f"3460000{i % 50:04d}",
                                          "message": f"bench {i} olá 😀"}}


def _worker_env(sb: Sandbox, url: str) -> dict[str, str]:
    return {**os.environ, "SQLBRIDGE_DATABASE_URL": url, "SQLBRIDGE_CONFIG": "",
            "SQLBRIDGE_AFILNET_URL": sb.afilnet_post_url,
            "SQLBRIDGE_AFILNET_USER": SANDBOX_AFILNET_USER,
            "SQLBRIDGE_AFILNET_PASSWORD": SANDBOX_AFILNET_PASSWORD}


def sandbox_capacity(port: int, connections: int, seconds: float) -> float:
    """Requests per second the sandbox serves to ``connections`` concurrent keep-alive
    clients, spread over two load-generator processes (each its own GIL)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--load", str(port),
                               str(connections // 2), str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return sum(float(p.communicate()[0].strip() or 0) for p in procs) / seconds


def _load(port: int, threads: int, seconds: float) -> None:
    """One load-generator process (``--load``): print how many calls completed."""
    from sqlbridge import registry
    from sqlbridge.providers import build_providers

    account = Sandbox(port=port).account("default")
    providers = build_providers(pool_size=threads)
    op, params = registry.validate(SEND, _send(0)["params"])  # type: ignore[arg-type]
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def loop(n: int) -> None:
        while time.monotonic() < stop:
            try:
                providers.call(op, params, account)
            except SqlbridgeError:
                continue  # a dropped connection under load: not a served request
            counts[n] += 1

    pool = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    providers.close()
    print(sum(counts))


def sequential_baseline(sb: Sandbox, calls: int) -> float:
    """One blocking call after another (what sp_OACreate does): calls per second."""
    from sqlbridge import registry
    from sqlbridge.providers import build_providers

    providers = build_providers(pool_size=1)
    op, params = registry.validate(SEND, _send(0)["params"])  # type: ignore[arg-type]
    account = sb.account("default")
    t0 = time.perf_counter()
    for _ in range(calls):
        providers.call(op, params, account)
    elapsed = time.perf_counter() - t0
    providers.close()
    return calls / elapsed


def _rate_from_rows(engine: Engine) -> tuple[int, float]:
    """(succeeded, requests per second) from the rows' own timestamps (database clock): the
    span from the first claim to the last write, so process start-up is not counted."""
    with engine.connect() as conn:
        n, first, last = conn.execute(
            select(func.count(), func.min(outbox.c.started_at), func.max(outbox.c.finished_at))
            .where(outbox.c.status == "succeeded")).one()
    span = (_dt(last) - _dt(first)).total_seconds() if n else 0.0
    return int(n), n / span if span > 0 else 0.0


def bench_worker(sb: Sandbox, concurrency: int, requests: int, workdir: Path,
                 processes: int = 1) -> dict[str, float]:
    """One worker (``processes`` 1: a thread of this process, statements counted; more: the
    ``worker --processes`` supervisor as a child process) draining ``requests`` sends."""
    url = f"sqlite:///{workdir / f'worker-{concurrency}-{processes}.db'}"
    engine = make_engine(url)
    install(engine)
    settings = Settings(database_url=url, accounts={"default": sb.account("default")},
                        worker=dataclasses.replace(WorkerSettings(), concurrency=concurrency,
                                                   batch=max(50, concurrency)))
    Queue(engine, settings).enqueue_many(_send(i) for i in range(requests))
    statements, commits = count_statements(engine), [0]
    event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    cpu0 = time.process_time()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if processes == 1:
        Worker(settings, engine, schedules=False).run(once=True)
        cpu = time.process_time() - cpu0
    else:
        subprocess.run([sys.executable, "-m", "sqlbridge", "worker", "--once", "--no-schedules",
                        "--processes", str(processes), "--concurrency", str(concurrency),
                        "--batch", str(max(50, concurrency)), "--log-level", "WARNING"],
                       env=_worker_env(sb, url), check=True, stdout=subprocess.DEVNULL)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (children.ru_utime + children.ru_stime
               - children0.ru_utime - children0.ru_stime)
    succeeded, rate = _rate_from_rows(engine)
    engine.dispose()
    total = concurrency * processes
    return {
        "load_average": os.getloadavg()[0],
        "concurrency": total, "processes": processes, "requests": requests,
        "succeeded": succeeded, "req_per_s": rate,
        "share_of_limit": rate / (total * 1000 / LATENCY_MS),
        "cpu_ms_per_request": cpu * 1000 / max(1, succeeded),
        # Round trips on SQL Server: every statement, plus every commit (SQLite: no network).
        "statements_per_request": statements[0] / max(1, succeeded) if processes == 1
        else float("nan"),
        "round_trips_per_request": (statements[0] + commits[0]) / max(1, succeeded)
        if processes == 1 else float("nan"),
    }


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "load_average_start": os.getloadavg()}

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
        "load_average": os.getloadavg()[0],
        "backlog_rows": rows,
        "backlog_fill_s": fill_s,
        "claim_50_ms": _timed(lambda: queue.claim("bench", 50, 60)),
        "next_due_in_ms": _timed(queue.next_due_in),
        "status_ms": _timed(queue.summary, repeat=3),
    }
    engine.dispose()
    return figures


def bench_idle(samples: int, latency_ms: float, workdir: Path, idle_window: float = 30.0,
               lease: float = 60.0) -> dict[str, float]:
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
                            worker=dataclasses.replace(WorkerSettings(), concurrency=8,
                                                       lease_seconds=lease))
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
            # After going idle the busy-period clocks fire once more (recovery after lease/4,
            # schedules after 1 s); the idle count starts after that.
            pause.wait(max(1.0, lease / 4) + 1.0)
            statements = count_statements(engine)
            pause.wait(idle_window)
            idle_statements = statements[0]
        finally:
            worker.stop()
            thread.join()
    engine.dispose()
    delays.sort()
    return {
        "load_average": os.getloadavg()[0],
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
    return {"load_average": os.getloadavg()[0], "bulk_rows": rows,
            "bulk_rows_per_s": rows / elapsed,
            "bulk_rows_per_cpu_s": rows / cpu}


def print_backlog(b: dict[str, float]) -> None:
    print(f"backlog: {b['backlog_rows']:,.0f} queued + {b['backlog_rows']:,.0f} finished rows "
          f"(written in {b['backlog_fill_s']:.0f} s)")
    print(f"  claim of 50: {b['claim_50_ms']:.2f} ms   next_due_in: {b['next_due_in_ms']:.2f} ms"
          f"   status (summary): {b['status_ms']:.0f} ms   (medians; load "
          f"{b['load_average']:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small numbers everywhere (the test suite's smoke run)")
    parser.add_argument("--json", default="bench-results.json", help="where to write figures")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="about how long each worker case runs")
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="queued (and as many finished) rows for the claim-time case; 0 skips")
    parser.add_argument("--bulk", type=int, default=100_000,
                        help="rows for the bulk enqueue (enqueue_many) case; 0 skips")
    parser.add_argument("--idle-samples", type=int, default=40,
                        help="single requests sent to an idle worker (wake-up latency); 0 skips")
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        _load(int(args.load[0]), int(args.load[1]), float(args.load[2]))
        return
    if args.quick:
        args.seconds, args.backlog, args.bulk, args.idle_samples = 0.2, 10_000, 3_000, 3
    cases = (1, 8) if args.quick else (1, 8, 32, 64)
    out: dict[str, object] = {"machine": machine(), "latency_ms": LATENCY_MS}
    m = out["machine"]
    print(f"machine: {m['cpu_model']} x {m['cpus']} CPUs, {m['platform']}, Python "  # type: ignore[index]
          f"{m['python']}, SQLite {m['sqlite']}; load average at start "  # type: ignore[index]
          + "/".join(f"{x:.1f}" for x in m["load_average_start"]))  # type: ignore[index]
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(LATENCY_MS) as sb:
        work = Path(tmp)
        port = int(sb.afilnet_post_url.split(":")[2].split("/")[0])
        connections = 8 if args.quick else 64
        capacity = sandbox_capacity(port, connections, 0.3 if args.quick else 3.0)
        out["sandbox_capacity_req_per_s"] = capacity
        print(f"sandbox ({LATENCY_MS:.0f} ms latency, own process): serves {capacity:,.0f} "
              f"req/s to {connections} connections from 2 load processes (the limit at that "
              f"concurrency: {connections * 1000 / LATENCY_MS:,.0f})")
        base = sequential_baseline(sb, max(10, int(args.seconds * 1000 / LATENCY_MS)))
        out["sequential_req_per_s"] = base
        rows = []
        for c in cases:
            rows.append(bench_worker(sb, c, max(20, int(args.seconds * c * 1000 / LATENCY_MS)),
                                     work))
        per = 4 if args.quick else 32
        rows.append(bench_worker(sb, per, max(20, int(args.seconds * 2 * per * 1000
                                                      / LATENCY_MS)), work, processes=2))
        out["worker"] = rows
    print(f"\n{'case':<26}{'req/s':>8}{'x base':>8}{'of c/lat':>10}{'CPU ms/req':>12}"
          f"{'stmts/req':>11}{'trips/req':>11}{'load':>6}")
    print(f"{'sequential (sp_OA pattern)':<26}{base:>8.0f}{1:>8.1f}"
          f"{base / (1000 / LATENCY_MS):>10.0%}")
    for r in rows:
        name = f"worker c={r['concurrency']:.0f}" + (f" ({r['processes']:.0f} processes)"
                                                     if r["processes"] > 1 else "")
        print(f"{name:<26}{r['req_per_s']:>8.0f}{r['req_per_s'] / base:>8.1f}"
              f"{r['share_of_limit']:>10.0%}{r['cpu_ms_per_request']:>12.2f}"
              f"{r['statements_per_request']:>11.2f}{r['round_trips_per_request']:>11.2f}"
              f"{r['load_average']:>6.1f}")
    print("(of c/lat: share of concurrency / latency, the most c calls of 50 ms can do; "
          "CPU: this process's, or for --processes the supervisor's and its children's, "
          "start-up included)")
    if args.idle_samples:
        with tempfile.TemporaryDirectory() as tmp:
            i = bench_idle(args.idle_samples, LATENCY_MS, Path(tmp),
                           idle_window=1.0 if args.quick else 30.0,
                           lease=4.0 if args.quick else 60.0)
        out["idle"] = i
        print(f"\nidle worker: enqueue -> claim p50 {i['wakeup_p50_ms']:.0f} ms, p99 "
              f"{i['wakeup_p99_ms']:.0f} ms ({i['idle_samples']:.0f} samples); idle database "
              f"statements {i['idle_statements_per_min']:.1f}/min (SQLite; SQL Server: one "
              f"waiting statement per 6 s by design); load {i['load_average']:.1f}")
    if args.backlog:
        with tempfile.TemporaryDirectory() as tmp:
            b = bench_backlog(args.backlog, Path(tmp))
        out["backlog"] = b
        print_backlog(b)
    if args.bulk:
        with tempfile.TemporaryDirectory() as tmp:
            bk = bench_bulk(args.bulk, Path(tmp))
        out["bulk"] = bk
        print(f"bulk enqueue (Queue.enqueue_many): {bk['bulk_rows']:,.0f} rows at "
              f"{bk['bulk_rows_per_s']:,.0f} rows/s ({bk['bulk_rows_per_cpu_s']:,.0f} per CPU "
              f"second); load {bk['load_average']:.1f}")
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    out["peak_rss_mb"] = rss
    out["load_average_end"] = os.getloadavg()
    print(f"peak resident memory: {rss:.0f} MB (largest of this process and its children); "
          "load average at end " + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

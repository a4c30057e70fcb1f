"""Metrics benchmark: prints figures, asserts nothing.

Measures, on the embedded default (SQLite file + the sandbox in its own process):
- worker throughput with and without the metrics observer (the hooks' cost);
- the time of one /metrics scrape after the run;
- the time of one queue_health read (what each worker runs on its slow clock) on an outbox of
  many finished rows and a live queue.

Usage: .venv/bin/python scripts/bench_metrics.py [--requests N] [--history N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_queue import sandbox_process  # noqa: E402 - the scripts directory, not a package

from sqlbridge.config import Settings, WorkerSettings  # noqa: E402
from sqlbridge.db import make_engine  # noqa: E402
from sqlbridge.install import install  # noqa: E402
from sqlbridge.metrics import MetricsServer, WorkerMetrics  # noqa: E402
from sqlbridge.monitoring import queue_health  # noqa: E402
from sqlbridge.queue import Queue  # noqa: E402
from sqlbridge.schema import outbox  # noqa: E402
from sqlbridge.worker import Worker  # noqa: E402

MESSAGE = {"platform": "whatsapp", "platformid": "100", "destination": "34600000000",
           "message": "hello"}


def run(requests_n: int, with_metrics: bool, directory: Path) -> tuple[float, float | None]:
    url = f"sqlite:///{directory / ('m.db' if with_metrics else 'n.db')}"
    engine = make_engine(url)
    install(engine)
    queue = Queue(engine)
    for i in range(requests_n):
        queue.enqueue("chat.sendmessage", {**MESSAGE, "destination": f"3460{i:07d}"})
    with sandbox_process(0) as sb:
        settings = Settings(database_url=url, accounts={"default": sb.account("default")},
                            worker=WorkerSettings(concurrency=16, batch=50, poll_interval=0.05))
        observer = WorkerMetrics(settings.accounts) if with_metrics else None
        worker = Worker(settings, engine, schedules=False, observer=observer)
        t0 = time.perf_counter()
        worker.run(once=True)
        rate = requests_n / (time.perf_counter() - t0)
    scrape = None
    if observer is not None:
        with MetricsServer(observer, engine, port=0) as server:
            requests.get(server.url + "/metrics", timeout=10)
            t0 = time.perf_counter()
            for _ in range(20):
                requests.get(server.url + "/metrics", timeout=10)
            scrape = (time.perf_counter() - t0) / 20
    engine.dispose()
    return rate, scrape


def health_read(history: int, directory: Path) -> float:
    url = f"sqlite:///{directory / 'h.db'}"
    engine = make_engine(url)
    install(engine)
    rows = [{"operation": "chat.sendmessage", "params": "{}", "status": "succeeded"}] * history
    rows += [{"operation": "chat.getchats", "params": "{}", "status": "queued"}] * (history // 10)
    with engine.begin() as c:
        for i in range(0, len(rows), 5000):
            c.execute(insert(outbox), rows[i:i + 5000])
    queue_health(engine)
    t0 = time.perf_counter()
    for _ in range(10):
        queue_health(engine)
    took = (time.perf_counter() - t0) / 10
    engine.dispose()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--history", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        # Alternating rounds, best of three each: the machine is shared and the first round
        # pays for imports and warm-up.
        plain = observed = 0.0
        scrape: float | None = None
        for i in range(3):
            with tempfile.TemporaryDirectory(dir=d) as r:
                plain = max(plain, run(args.requests, False, Path(r))[0])
                rate, scrape = run(args.requests, True, Path(r))
                observed = max(observed, rate)
            print(f"  round {i + 1}: best so far {plain:,.0f}/s plain, {observed:,.0f}/s "
                  "observed")
        print(f"worker throughput, {args.requests} sends, concurrency 16: "
              f"{plain:,.0f}/s without metrics, {observed:,.0f}/s with "
              f"({(observed / plain - 1) * 100:+.1f} %)")
        print(f"one /metrics scrape: {(scrape or 0) * 1000:.1f} ms")
        took = health_read(args.history, Path(d))
        print(f"one queue_health read, {args.history:,} finished + {args.history // 10:,} "
              f"queued rows (SQLite): {took * 1000:.1f} ms")


if __name__ == "__main__":
    main()

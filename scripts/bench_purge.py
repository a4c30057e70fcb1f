"""Purge benchmark: prints figures, asserts nothing.

Fills a SQLite outbox with N finished requests (each with one attempt row), then purges them
while a second thread keeps claiming freshly queued requests, and reports how long the purge
took and how long the claims had to wait: once in bounded batches (the default, 500 requests
per transaction) and once as a single transaction (what purge did before). The
claim waits are the point: a purge must never stall the workers.

Usage: .venv/bin/python scripts/bench_purge.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import delete, func, insert, literal, select, update

from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import PURGE_BATCH, PURGEABLE, Queue
from sqlbridge.schema import outbox, outbox_attempt


def fill(queue: Queue, n: int) -> None:
    rows = [{"operation": "chat.getchatchannels", "params": "{}", "status": "succeeded"}
            for _ in range(n)]
    with queue.engine.begin() as c:
        c.execute(insert(outbox), rows)
        c.execute(update(outbox).values(finished_at=func.datetime("now", "-40 days")))
        c.execute(insert(outbox_attempt).from_select(
            ["request_id", "attempt", "started_at", "outcome"],
            select(outbox.c.id, literal(1), func.datetime("now"), literal("succeeded"))))


def purge_at_once(queue: Queue) -> int:
    """What purge did before batches: two DELETEs in one transaction."""
    old = Queue._purgeable(30 * 86400, PURGEABLE)
    with queue.engine.begin() as c:
        c.execute(delete(outbox_attempt).where(
            outbox_attempt.c.request_id.in_(select(outbox.c.id).where(old))))
        return c.execute(delete(outbox).where(old)).rowcount


def run(n: int, batch: int, directory: Path) -> None:
    url = f"sqlite:///{directory / f'purge-{batch}.db'}"
    engine = make_engine(url)
    install(engine)
    queue = Queue(engine)
    fill(queue, n)
    waits: list[float] = []
    done = threading.Event()

    def claimer() -> None:
        while not done.is_set():
            t0 = time.perf_counter()  # a producer's insert and a worker's claim, both writes
            queue.enqueue("chat.getchatchannels")
            queue.claim("bench", 1, 60)
            waits.append(time.perf_counter() - t0)
            time.sleep(0.005)

    t = threading.Thread(target=claimer)
    t.start()
    t0 = time.perf_counter()
    purged = queue.purge(30 * 86400, batch=batch) if batch else purge_at_once(queue)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    waits.sort()
    p99 = waits[int(len(waits) * 0.99) - 1] if waits else 0.0
    how = f"batches of {batch}" if batch else "one transaction"
    print(f"{how:>17}: purged {purged} requests (+ attempts) in {seconds:.2f}s "
          f"({purged / seconds:,.0f}/s); enqueue+claim meanwhile: {len(waits)}, median "
          f"{statistics.median(waits) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {waits[-1] * 1000:.1f} ms")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (PURGE_BATCH, 0):
            run(args.requests, batch, Path(tmp))


if __name__ == "__main__":
    main()

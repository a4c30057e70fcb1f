"""Sync ingest benchmark: prints figures, asserts nothing.

1. The upsert step alone: chat messages through ``inbox.write`` into a SQLite file, in batches
   the size of one ``chat.getmessages`` answer, first as inserts, then again as a re-sync
   (updates). Target: at least 20,000 messages per second.
2. End to end: a full ``sync.chats`` of the sandbox (channels -> chats -> messages) over HTTP on
   127.0.0.1 with one worker, messages per second from start to finish.

Usage: .venv/bin/python scripts/bench_ingest.py [--messages N] [--batch B]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from sqlbridge import inbox, sync
from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.sandbox import Sandbox


def upsert_rate(workdir: Path, messages: int, batch: int) -> tuple[float, float]:
    engine = make_engine(f"sqlite:///{workdir / 'ingest.db'}")
    install(engine)
    rows = [{"platform": "whatsapp", "platformid": "100", "messageid": f"m{i:09d}",
             "destination": f"3460{i // batch:07d}", "message": f"message {i} olá 😀",
             "sent": i % 2 == 0, "status": "delivered", "datetime": "2026-11-24 10:00:00"}
            for i in range(messages)]
    rates = []
    for _ in range(2):  # first pass inserts, second pass updates
        t0 = time.perf_counter()
        for start in range(0, messages, batch):
            chunk = rows[start:start + batch]
            params = {"platform": "whatsapp", "platformid": "100",
                      "destination": chunk[0]["destination"]}
            with engine.begin() as conn:  # one transaction per answer, as the worker does
                inbox.write(conn, "chat_message", "default", params, chunk, start)
        rates.append(messages / (time.perf_counter() - t0))
    engine.dispose()
    return rates[0], rates[1]


def end_to_end(workdir: Path) -> tuple[int, float]:
    url = f"sqlite:///{workdir / 'sync.db'}"
    engine = make_engine(url)
    install(engine)
    with Sandbox(seed=1) as sb:
        total = sb.state.populate(channels=3, chats_per_channel=50, messages_per_chat=200)
        settings = Settings(database_url=url, accounts={"default": sb.account()},
                            worker=dataclasses.replace(WorkerSettings(), concurrency=16,
                                                       poll_interval=0.05))
        summary = sync.sync_now(settings, engine)
    engine.dispose()
    return total, total / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inserted, updated = upsert_rate(Path(tmp), args.messages, args.batch)
        total, e2e = end_to_end(Path(tmp))
    print(f"sync ingest benchmark (SQLite file, batches of {args.batch} like one getmessages "
          "answer)")
    print(f"  upsert step, new messages:       {inserted:>10,.0f} messages/s "
          f"({args.messages:,} messages; target >= 20,000)")
    print(f"  upsert step, re-sync (updates):  {updated:>10,.0f} messages/s")
    print(f"  full sync over HTTP (sandbox):   {e2e:>10,.0f} messages/s "
          f"({total:,} messages, 154 requests, 1 worker x 16 threads)")


if __name__ == "__main__":
    main()

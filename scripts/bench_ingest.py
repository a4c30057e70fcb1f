"""Sync ingest benchmark: prints figures, asserts nothing.

1. The upsert step alone: chat messages through ``inbox.write`` into a SQLite file, one
   transaction per batch the size of one ``chat.getmessages`` answer (as the worker writes
   them), first as inserts, then the same messages again as a re-sync (updates). Target: at
   least 20,000 messages per second.
2. End to end: full ``sync.chats`` runs (channels -> chats -> messages) over HTTP on 127.0.0.1
   with one worker, the sandbox in its own process so it does not share the worker's GIL; the
   first run inserts, the second confirms every row again.

Usage: .venv/bin/python scripts/bench_ingest.py [--messages N] [--channels C] [--chats K]
       [--per-chat M] [--concurrency T]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import urllib.request
from pathlib import Path

# The sandbox in its own process, started the same way as for the queue benchmark.
from bench_queue import sandbox_process  # noqa: E402 - a sibling script

from sqlbridge import inbox, sync
from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.sandbox import Sandbox


def upsert_rates(workdir: Path, messages: int, batch: int) -> tuple[float, float]:
    """Messages per second through inbox.write: (inserts, updates)."""
    engine = make_engine(f"sqlite:///{workdir / f'ingest-{batch}.db'}")
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
            with engine.begin() as conn:
                inbox.write(conn, "chat_message", "default", params, chunk, start)
        rates.append(messages / (time.perf_counter() - t0))
    engine.dispose()
    return rates[0], rates[1]




def populate(sb: Sandbox, **sizes: int) -> int:
    request = urllib.request.Request(sb.url + "_sandbox/populate", method="POST",
                                     data=json.dumps(sizes).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - loopback only
        return int(json.load(answer)["messages"])


def end_to_end(workdir: Path, channels: int, chats: int, per_chat: int,
               concurrency: int) -> list[dict[str, float]]:
    url = f"sqlite:///{workdir / 'sync.db'}"
    engine = make_engine(url)
    install(engine)
    runs = []
    with sandbox_process(0.0) as sb:
        total = populate(sb, channels=channels, chats_per_channel=chats,
                         messages_per_chat=per_chat)
        settings = Settings(database_url=url, accounts={"default": sb.account()},
                            worker=dataclasses.replace(WorkerSettings(), concurrency=concurrency,
                                                       poll_interval=0.05))
        for label in ("first sync (inserts)", "re-sync (no change)"):
            summary = sync.sync_now(settings, engine)
            requests = sum(summary.requests.values())
            runs.append({"label": label, "messages": total, "requests": requests,
                         "seconds": summary.seconds,
                         "inserted": summary.tables["chat_message"]["inserted"],
                         "failed": requests - summary.requests.get("succeeded", 0)})
    engine.dispose()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--per-chat", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        upserts = {b: upsert_rates(Path(tmp), args.messages, b) for b in (200, 1000)}
        runs = end_to_end(Path(tmp), args.channels, args.chats, args.per_chat,
                          args.concurrency)

    print("\nsync ingest benchmark: SQLite file (WAL), sandbox on 127.0.0.1\n")
    print(f"upsert step alone (inbox.write, one transaction per batch, "
          f"{args.messages:,} messages; target >= 20,000/s)")
    print(f"  {'batch':>6}  {'inserts msg/s':>14}  {'updates msg/s':>14}  target")
    for batch, (ins, upd) in upserts.items():
        ok = "met" if min(ins, upd) >= 20_000 else "MISSED"
        print(f"  {batch:>6}  {ins:>14,.0f}  {upd:>14,.0f}  {ok}")
    print(f"\nend to end (sync.chats, {args.channels} channels x {args.chats} chats x "
          f"{args.per_chat} messages; 1 worker x {args.concurrency} threads; sandbox process)")
    print(f"  {'run':<22} {'requests':>8} {'seconds':>8} {'msg/s':>9} {'req/s':>7} "
          f"{'inserted':>9} {'failed':>6}")
    for r in runs:
        print(f"  {r['label']:<22} {r['requests']:>8.0f} {r['seconds']:>8.2f} "
              f"{r['messages'] / r['seconds']:>9,.0f} {r['requests'] / r['seconds']:>7,.0f} "
              f"{r['inserted']:>9,.0f} {r['failed']:>6.0f}")


if __name__ == "__main__":
    main()

"""What the claim's gates cost (sqlbridge.gates): prints figures, asserts nothing.

On a SQLite file, a claim of 50 (the median of several) when
- no gate is in play (every row's breaker is closed: the breaker's NOT EXISTS is still checked
  for each row the claim takes);
- one account's circuit breaker is open and N of its rows are due ahead of the others in the
  claim's order (the claim steps over them: a look at each row and its breaker);
- one account is capped (max_in_flight) and full, with N rows ahead;
and the statements a capped claim sends. N defaults to 10,000 and 100,000.

Usage: .venv/bin/python scripts/bench_gates.py [--paused N ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from sqlbridge.config import Settings, _account
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.schema import circuit_breaker


def fill(url: str, ahead: int, behind: int = 20_000) -> None:
    """``ahead`` due rows of account 'slow', then ``behind`` of account 'fast'."""
    engine = make_engine(url)
    install(engine)
    with engine.begin() as conn:
        for account, n in (("slow", ahead), ("fast", behind)):
            if n:
                conn.exec_driver_sql(
                    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                    "WHERE i < ?) INSERT INTO outbox (account, provider, operation, params, "
                    "status, available_at) SELECT ?, 'afilnet', 'chat.getchats', "
                    "'{\"platform\":\"whatsapp\",\"platformid\":\"1\"}', 'queued', "
                    "'2026-01-01 00:00:00.000000' FROM s", (n, account))
    engine.dispose()


def settings(url: str, cap: int | None = None) -> Settings:
    slow = {"afilnet": {"max_in_flight": cap}} if cap else {}
    return Settings(database_url=url, accounts={"slow": _account("slow", slow),
                                                "fast": _account("fast", {})})


def claim_ms(queue: Queue, repeat: int = 7) -> tuple[float, int]:
    """Median ms of a claim of 50 (each claim's rows are released again), and statements."""
    sent = [0]

    def count(*_: Any) -> None:
        sent[0] += 1

    times = []
    for _ in range(repeat):
        sent[0] = 0
        event.listen(queue.engine, "before_cursor_execute", count)
        t0 = time.perf_counter()
        got = queue.claim("bench", 50, 60)
        times.append((time.perf_counter() - t0) * 1000)
        event.remove(queue.engine, "before_cursor_execute", count)
        queue.release(got)
    return statistics.median(times), sent[0]


def case(workdir: Path, name: str, ahead: int, *, open_breaker: bool = False,
         cap: int | None = None) -> dict[str, Any]:
    url = f"sqlite:///{workdir / f'{name}-{ahead}.db'}"
    fill(url, ahead)
    queue = Queue(make_engine(url), settings(url, cap))
    if open_breaker:
        with queue.engine.begin() as conn:
            conn.execute(insert(circuit_breaker).values(
                account="slow", provider="afilnet", state="open", failures=5,
                open_until=datetime(2999, 1, 1), cooldown=30.0, trips=1))
    if cap:
        queue.claim("holder", cap, 3600)  # the capped account is full
    ms, statements = claim_ms(queue)
    queue.engine.dispose()
    return {"case": name, "rows_ahead": ahead, "claim_50_ms": round(ms, 2),
            "statements_per_claim": statements}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paused", type=int, nargs="+", default=[10_000, 100_000],
                        help="rows of the paused or full account ahead in the claim order")
    parser.add_argument("--json", default="bench-gates.json", help="where to write figures")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(case(work, "no gate in play", 0))
        for n in args.paused:
            rows.append(case(work, "breaker open", n, open_breaker=True))
            rows.append(case(work, "max_in_flight full", n, cap=4))
    print(f"claim of 50 on SQLite (median of 7; load {os.getloadavg()[0]:.1f})")
    for r in rows:
        print(f"  {r['case']:<20} {r['rows_ahead']:>9,} rows ahead: {r['claim_50_ms']:8.2f} ms, "
              f"{r['statements_per_claim']} statements")
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

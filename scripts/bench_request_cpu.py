"""Worker CPU per request, taken apart: the claim, the call (validation, HTTP, reading the
answer) and the finish, on one thread, against the sandbox in its own process with no
latency. Thread CPU time, so neither the sandbox nor the wait for it is counted; no thread pool,
so what it prints is the work itself (the worker's threads add GIL hand-offs on top: compare
with scripts/bench_queue.py's "CPU ms/req"). Prints figures, asserts nothing.

Usage: .venv/bin/python scripts/bench_request_cpu.py [--requests N] [--batch B] [--profile]
``--profile`` adds cProfile's top functions by cumulative time (profiling inflates the figures).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from sqlbridge import attempt, inbox, sync
from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.providers import build_providers
from sqlbridge.queue import Queue
from sqlbridge.shared_limits import SharedRateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import _send, sandbox_process  # noqa: E402 - the benchmark's own helpers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="rows per claim and finish")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(0.0) as sb:
        url = f"sqlite:///{Path(tmp) / 'cpu.db'}"
        engine = make_engine(url)
        install(engine)
        settings = Settings(database_url=url, accounts={"default": sb.account("default")},
                            worker=dataclasses.replace(WorkerSettings(), batch=args.batch))
        queue = Queue(engine, settings)
        queue.enqueue_many(_send(i) for i in range(args.requests + args.batch))
        providers = build_providers(pool_size=2)
        providers.transport.limiter = SharedRateLimiter(engine)
        fan_out = functools.partial(sync.followups, engine)

        def one_batch() -> tuple[int, float, float, float]:
            t0 = time.thread_time()
            claims = queue.claim("bench", args.batch, 60)
            t1 = time.thread_time()
            done = [attempt.run(c, settings=settings, call=providers.call, worker="bench",
                                followups=fan_out) for c in claims]
            t2 = time.thread_time()
            queue.finish(done, inbox.write)
            t3 = time.thread_time()
            failed = [c for c in done if c.status != "succeeded"]
            if failed:
                raise SystemExit(f"request {failed[0].id}: {failed[0].error_message}")
            return len(claims), t1 - t0, t2 - t1, t3 - t2

        one_batch()  # warm: connections, compiled statements, imports
        profile = cProfile.Profile() if args.profile else None
        n, spent = 0, [0.0, 0.0, 0.0]
        if profile:
            profile.enable()
        while n < args.requests:
            got, *times = one_batch()
            n += got
            spent = [a + b for a, b in zip(spent, times, strict=True)]
        if profile:
            profile.disable()
        providers.close()
        engine.dispose()
    claim, call, finish = (1000 * s / n for s in spent)
    print(f"{n} requests, batches of {args.batch}, {len(os.environ)} environment variables; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"CPU per request (ms): claim {claim:.3f}, call {call:.3f}, finish {finish:.3f}; "
          f"total {claim + call + finish:.3f}")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()

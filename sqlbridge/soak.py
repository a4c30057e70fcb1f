"""The fault soak: many requests, worker processes killed at random, a vendor that fails before
and after doing the work; then the sandbox's own record of what it did is held against the
outbox. ``tests/test_soak.py`` runs it small, ``scripts/soak`` large; both print ``Report``.

What is checked (each must be 0):

- lost: an enqueued request that is missing or not finished when the queue has drained;
- duplicate sends outside ``uncertain``: a send the vendor processed twice or more whose row
  says anything but ``uncertain``;
- succeeded sends never delivered: a send marked ``succeeded`` the vendor never processed;
- stuck: a row left ``processing``.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from .config import Settings, WorkerSettings
from .db import make_engine
from .install import install
from .queue import Queue
from .sandbox import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    Sandbox,
)
from .sandbox.faults import Faults
from .schema import outbox

TERMINAL = ("succeeded", "failed", "uncertain", "cancelled")


@dataclass
class Report:
    requests: int = 0
    sends: int = 0
    reads: int = 0
    kills: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    vendor_requests: int = 0
    vendor_processed: int = 0
    lost: int = 0
    duplicate_sends_outside_uncertain: int = 0
    duplicate_sends_in_all: int = 0
    succeeded_sends_never_delivered: int = 0
    stuck_processing: int = 0
    uncertain_sends_delivered: int = 0
    uncertain_sends_not_delivered: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate_sends_outside_uncertain
                    or self.succeeded_sends_never_delivered or self.stuck_processing)

    def lines(self) -> list[str]:
        return [
            f"requests {self.requests} ({self.sends} sends, {self.reads} reads), "
            f"2 worker processes, {self.kills} SIGKILLs, {self.seconds:.1f}s",
            f"vendor saw {self.vendor_requests} requests, processed {self.vendor_processed}",
            f"final statuses: {dict(sorted(self.statuses.items()))}",
            f"uncertain sends: {self.uncertain_sends_delivered} delivered once, "
            f"{self.uncertain_sends_not_delivered} never delivered",
            f"lost: {self.lost}",
            f"sends delivered twice outside uncertain: "
            f"{self.duplicate_sends_outside_uncertain} (twice in any status: "
            f"{self.duplicate_sends_in_all})",
            f"succeeded sends never delivered: {self.succeeded_sends_never_delivered}",
            f"rows stuck processing: {self.stuck_processing}",
        ]


def _config(path: Path, db_url: str, sb: Sandbox) -> None:
    path.write_text(f"""
database_url = "{db_url}"

[worker]
concurrency = 4
batch = 8
poll_interval = 0.1
lease_seconds = 3
max_attempts = 12
backoff_base = 0.05
backoff_max = 0.3

[accounts.default.afilnet]
url = "{sb.afilnet_post_url}"
user = "{SANDBOX_AFILNET_USER}"
password = "{SANDBOX_AFILNET_PASSWORD}"
connect_timeout = 2
read_timeout = 1
""", encoding="utf-8")


def _start(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SQLBRIDGE_CONFIG": str(config)}
    for var in [v for v in env if v.startswith("SQLBRIDGE_") and v != "SQLBRIDGE_CONFIG"]:
        del env[var]
    return subprocess.Popen([sys.executable, "-m", "sqlbridge", "worker", "--no-schedules",
                             "--grace", "2", "--log-level", "ERROR"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(requests: int = 2000, *, seed: int = 7, workers: int = 2,
        kill_every: tuple[float, float] = (0.7, 2.0), budget: float = 600.0,
        directory: str | None = None, progress: bool = False) -> Report:
    """Run the soak and return its figures (see the module docstring)."""
    rng = random.Random(seed)
    report = Report(requests=requests)
    faults = Faults(seed=seed, error_rate=0.04, rate_limit_rate=0.03, drop_rate=0.02,
                    malformed_rate=0.01, timeout_rate=0.01, after_rate=0.09,
                    timeout_seconds=1.5)
    with tempfile.TemporaryDirectory(dir=directory) as tmp, Sandbox(faults=faults,
                                                                   seed=seed) as sb:
        db_url = f"sqlite:///{Path(tmp) / 'soak.db'}"
        engine = make_engine(db_url)
        install(engine)
        queue = Queue(engine, Settings(database_url=db_url, worker=WorkerSettings(
            max_attempts=12)))
        config = Path(tmp) / "soak.toml"
        _config(config, db_url, sb)
        sends: dict[int, str] = {}
        for i in range(requests):
            if rng.random() < 0.5:
                marker = f"soak-{seed}-{i}"
                rid = queue.enqueue("chat.sendmessage", {
                    "platform": "whatsapp", "platformid": "100",
                    "destination": f"3460{i:07d}", "message": marker}).id
                sends[rid] = marker
            else:
                queue.enqueue("chat.getchatchannels", {})
        report.sends, report.reads = len(sends), requests - len(sends)

        t0 = time.monotonic()
        procs = [_start(config) for _ in range(workers)]
        next_kill = t0 + rng.uniform(*kill_every)
        try:
            while time.monotonic() - t0 < budget:
                with engine.connect() as c:
                    open_rows = c.execute(select(func.count()).select_from(outbox).where(
                        outbox.c.status.not_in(TERMINAL))).scalar_one()
                if open_rows == 0:
                    break
                now = time.monotonic()
                # Kill while there is plenty left; near the end let the queue drain.
                if now >= next_kill and open_rows > requests * 0.02:
                    n = rng.randrange(len(procs))
                    procs[n].send_signal(signal.SIGKILL)
                    procs[n].wait()
                    procs[n] = _start(config)
                    report.kills += 1
                    next_kill = now + rng.uniform(*kill_every)
                if progress:
                    print(f"  {now - t0:6.1f}s open {open_rows} kills {report.kills}",
                          file=sys.stderr, flush=True)
                time.sleep(0.5)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        report.seconds = time.monotonic() - t0

        with sb._seen_lock:  # noqa: SLF001 - the sandbox's own record
            processed = list(sb.processed)
            report.vendor_requests = len(sb.requests_seen)
        report.vendor_processed = len(processed)
        times = collections.Counter(what for op, what in processed if op == "chat.sendmessage")
        with engine.connect() as c:
            rows = dict(c.execute(select(outbox.c.id, outbox.c.status)).all())
        engine.dispose()

    report.statuses = dict(collections.Counter(rows.values()))
    report.lost = requests - sum(1 for s in rows.values() if s in TERMINAL)
    report.stuck_processing = sum(1 for s in rows.values() if s == "processing")
    report.lost -= report.stuck_processing  # counted on its own line
    for rid, marker in sends.items():
        status, n = rows.get(rid), times.get(marker, 0)
        if n >= 2:
            report.duplicate_sends_in_all += 1
            if status != "uncertain":
                report.duplicate_sends_outside_uncertain += 1
        if status == "succeeded" and n == 0:
            report.succeeded_sends_never_delivered += 1
        if status == "uncertain":
            if n:
                report.uncertain_sends_delivered += 1
            else:
                report.uncertain_sends_not_delivered += 1
    return report

"""``sqlbridge worker --processes N``: real processes, real signals."""

from __future__ import annotations

import os
import queue as queue_mod
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from tests.test_worker import message, statuses, worker_env

pytestmark = pytest.mark.sqlite_only
LONG = 60.0


class Lines:
    """A process's stderr, line by line, waited on without sleeping."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._q: queue_mod.Queue[str] = queue_mod.Queue()
        assert proc.stderr is not None
        stream = proc.stderr
        threading.Thread(target=lambda: [self._q.put(line) for line in stream],
                         daemon=True).start()

    def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        deadline = time.monotonic() + LONG
        while True:
            found = [m for line in self.seen if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            try:
                self.seen.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue_mod.Empty:
                raise AssertionError(
                    f"no {count}x {pattern!r} in:\n" + "".join(self.seen)) from None


@pytest.fixture
def supervisor(sandbox: Sandbox, db_url: str, queue: Queue
               ) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlbridge", "worker", "--no-schedules", "--processes", "2",
         "--concurrency", "3", "--poll-interval", "0.1"],
        env=worker_env(sandbox, db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(LONG)


def wait_until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + LONG
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_n_workers_run_a_crashed_one_comes_back_and_sigterm_stops_all(
        supervisor: tuple[subprocess.Popen[str], Lines], queue: Queue) -> None:
    proc, lines = supervisor
    pids = [int(m.group(2)) for m in lines.wait_for(r"worker process (\d) started \(pid (\d+)\)",
                                                     2)]
    # Each child is a full worker with the options given to the supervisor.
    lines.wait_for(r"worker \S+ started: concurrency 3", 2)
    ids = [queue.enqueue("chat.sendmessage", message(i)).id for i in range(30)]
    wait_until(lambda: statuses(queue) == {"succeeded": 30}, "first requests not sent")

    os.kill(pids[0], signal.SIGKILL)
    lines.wait_for(r"worker process 0 exited with code -9; starting it again in 1 s")
    restarted = lines.wait_for(r"worker process 0 started \(pid (\d+)\)", 2)[-1]
    assert int(restarted.group(1)) not in pids
    more = [queue.enqueue("chat.sendmessage", message(100 + i)).id for i in range(10)]
    wait_until(lambda: statuses(queue) == {"succeeded": 40}, "requests after the crash")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(LONG) == 0
    lines.wait_for(r"signal 15: forwarding to 2 worker processes")
    assert not alive(pids[1]) and not alive(int(restarted.group(1)))
    assert {queue.get(i)["status"] for i in ids + more} == {"succeeded"}


def test_a_configuration_error_stops_the_supervisor_with_its_code(
        sandbox: Sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = worker_env(sandbox, "postgresql://u:p@127.0.0.1:1/db")
    done = subprocess.run([sys.executable, "-m", "sqlbridge", "worker", "--processes", "2"],
                          env=env, capture_output=True, text=True, timeout=LONG)
    assert done.returncode == 3, done.stderr
    assert "SQLite and SQL Server" in done.stderr or "not supported" in done.stderr
    assert "starting it again" not in done.stderr


def test_with_once_every_process_exits_when_the_queue_is_empty(
        sandbox: Sandbox, db_url: str, queue: Queue) -> None:
    for i in range(12):
        queue.enqueue("chat.sendmessage", message(i))
    done = subprocess.run([sys.executable, "-m", "sqlbridge", "worker", "--once",
                           "--no-schedules", "--processes", "2"],
                          env=worker_env(sandbox, db_url), capture_output=True, text=True,
                          timeout=LONG)
    assert done.returncode == 0, done.stderr
    assert statuses(queue) == {"succeeded": 12}
    assert "starting it again" not in done.stderr

"""A call's total deadline, enforced on the socket itself.

Socket timeouts bound each read, not the call: a server that sends its status line and then one
header byte a second never trips a read timeout, and the standard library reads headers with no
clock of its own. ``Transport.send`` checks its deadline between body reads; this module covers
the rest (the wait for the status line and the headers, and any single blocked read) by shutting
the call's socket down when the deadline passes. The blocked read then returns at once, the
transport sees a dropped connection, and, because ``Call.expired`` is set, reports
``DEADLINE_EXCEEDED``.

One daemon thread serves every call of the process (a heap of deadlines), so a call costs a heap
push and pop, not a thread. Connections join the current thread's call when they send a request
(``WatchedHTTPConnection.request``), which covers fresh and reused keep-alive connections alike.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Call:
    """One call under watch: the connections it used, and whether its deadline passed."""

    __slots__ = ("conns", "done", "ends", "expired")

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.conns: list[Any] = []
        self.expired = False
        self.done = False


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Call]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="sqlbridge-deadline",
                                            daemon=True)
            self._thread.start()

    def add(self, call: Call) -> None:
        with self._cv:
            self._start()
            heapq.heappush(self._heap, (call.ends, next(self._seq), call))
            if self._heap[0][2] is call:
                self._cv.notify()

    def finish(self, call: Call) -> None:
        # Under the lock: the watchdog never cuts a connection that is already back in the
        # pool serving another call.
        with self._cv:
            call.done = True

    def attach(self, call: Call, conn: Any) -> None:
        with self._cv:
            if not call.done:
                call.conns.append(conn)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                ends, _, call = self._heap[0]
                wait = ends - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                call.expired = True
                conns = list(call.conns)
            for conn in conns:
                _cut(conn)


def _cut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the TLS object under the
    # thread that is reading from it. Shutting the raw socket makes that read end now.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = Watchdog()
_current = threading.local()


@contextmanager
def deadline(seconds: float) -> Iterator[Call]:
    """Watch the HTTP exchange made by this thread inside the block; cut it at ``seconds``."""
    call = Call(time.monotonic() + seconds)
    previous = getattr(_current, "call", None)
    _current.call = call
    WATCHDOG.add(call)
    try:
        yield call
    finally:
        WATCHDOG.finish(call)
        _current.call = previous


class _Watched:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        call = getattr(_current, "call", None)
        if call is not None:
            WATCHDOG.attach(call, self)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}

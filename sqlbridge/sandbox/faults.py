"""Faults the sandbox can inject: random by rate (load tests, demos) or scripted (tests that
need exactly "the next two calls answer 503").

Most faults happen *before* the request is processed (nothing was done). The ``after_*`` kinds
happen *after* it: the sandbox does the work (a message is sent, a user forced) and then the
answer is lost or replaced, as when a gateway answers 502/504 after the backend succeeded or a
connection drops on the way back. These are what make a resent send a duplicate.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

BEFORE_KINDS = ("503", "500", "502", "429", "timeout", "drop", "html", "empty", "badjson")
# The request is processed, then: a gateway error, no answer, or a garbled 200.
AFTER_KINDS = ("after_502", "after_504", "after_500", "after_drop", "after_timeout",
               "after_html", "after_garbled")
KINDS = BEFORE_KINDS + AFTER_KINDS


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0  # HTTP 503
    rate_limit_rate: float = 0.0  # HTTP 429 with Retry-After: 1
    timeout_rate: float = 0.0  # answer only after timeout_seconds
    drop_rate: float = 0.0  # close the connection without an answer
    malformed_rate: float = 0.0  # HTTP 200 with an HTML page
    empty_rate: float = 0.0  # HTTP 200 with no body
    # After processing: one of after_kinds, drawn evenly.
    after_rate: float = 0.0
    after_kinds: tuple[str, ...] = AFTER_KINDS
    timeout_seconds: float = 5.0
    seed: int | None = None


@dataclass
class _Scripted:
    remaining: int
    kind: str
    needle: str | None


class FaultPlan:
    """Decides the fault (if any) for each API request, thread-safely and reproducibly."""

    def __init__(self, faults: Faults, seed: int | None = None) -> None:
        self.faults = faults
        # One generator for every thread, drawn under the lock: with a seed, the same sequence
        # of requests meets the same faults.
        self._rng = random.Random(faults.seed if faults.seed is not None else seed)
        self._lock = threading.Lock()
        self._scripted: list[_Scripted] = []

    def fail_next(self, n: int, kind: str, path_contains: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; allowed: {', '.join(KINDS)}")
        with self._lock:
            self._scripted.append(_Scripted(n, kind, path_contains))

    def clear(self) -> None:
        with self._lock:
            self._scripted.clear()

    def choose(self, path: str) -> str | None:
        with self._lock:
            # Scripted faults first, oldest first: a test's "next two calls" is exact.
            for entry in self._scripted:
                if entry.remaining > 0 and (entry.needle is None or entry.needle in path):
                    entry.remaining -= 1
                    self._scripted = [e for e in self._scripted if e.remaining > 0]
                    return entry.kind
            f = self.faults
            draw = self._rng.random()
            for rate, kind in ((f.error_rate, "503"), (f.rate_limit_rate, "429"),
                               (f.timeout_rate, "timeout"), (f.drop_rate, "drop"),
                               (f.malformed_rate, "html"), (f.empty_rate, "empty")):
                if draw < rate:
                    return kind
                draw -= rate
            if draw < f.after_rate and f.after_kinds:
                return f.after_kinds[self._rng.randrange(len(f.after_kinds))]
            return None

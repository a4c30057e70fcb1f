"""Requests-per-second limits, one token bucket per (account, provider).

Shared by every thread of one worker, so ``rate_limit = 5`` means five calls a second for the
account whatever the concurrency. ``acquire`` blocks; the waiting is done outside the lock, and
each caller reserves its slot before sleeping, so threads leave in the order they arrived and a
burst of callers is spread out instead of stampeding when a token appears.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up (1: no bursts, since a vendor's
    limit is usually enforced over short windows and a burst is what gets throttled)."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be greater than 0")
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token now, possibly on credit; returns the seconds to wait before using it."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            time.sleep(wait)


class RateLimiter:
    """The buckets of one worker, keyed by (account, provider)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def acquire(self, key: tuple[str, str], per_second: float | None) -> None:
        """Wait for a slot; no limit configured means no wait."""
        if not per_second:
            return
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != per_second:  # settings reloaded
                bucket = self._buckets[key] = TokenBucket(per_second)
        bucket.acquire()

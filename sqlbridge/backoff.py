"""How long a failed request waits before its next try.

Exponential with jitter so that a burst of failures (the remote went down for everyone) does
not come back as a synchronized burst of retries. A server's ``Retry-After`` wins over our own
guess: it knows when it will take traffic again, and ignoring it gets accounts throttled.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def delay(attempt: int, *, base: float = 2.0, cap: float = 600.0,
          retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    rng = rng or random
    if retry_after is not None and retry_after >= 0:
        # Up to 10% later than asked, never earlier: many clients told "1 s" must not all
        # return at the same millisecond.
        return retry_after * (1 + 0.1 * rng.random())
    exp = min(cap, base * (2 ** max(0, attempt - 1)))
    # "Equal jitter": at least half the exponential step, so the delay still grows.
    return exp / 2 + rng.random() * exp / 2


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())

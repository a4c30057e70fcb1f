"""How long a failed request waits before its next try.

Exponential with jitter so that a burst of failures (the remote went down for everyone) does
not come back as a synchronized burst of retries. A server's ``Retry-After`` wins over our own
guess: it knows when it will take traffic again, and ignoring it gets accounts throttled, up to
``cap`` (``backoff_max``): a server asking for years (``Retry-After: 99999999999999``) gets
``cap``, and the attempt's message says so (``clamp_note``). No delay ever exceeds MAX_DELAY,
which keeps SQL Server's ``DATEADD(millisecond, …)`` (an INT, about 24.8 days) from overflowing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 20 days: below DATEADD(millisecond, INT)'s limit of 2**31 ms, whatever backoff_max says.
MAX_DELAY = 20 * 24 * 3600.0


def _cap(cap: float) -> float:
    return min(cap, MAX_DELAY) if cap == cap and cap > 0 else MAX_DELAY


def delay(attempt: int, *, base: float = 2.0, cap: float = 600.0,
          retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    rng = rng or random
    cap = _cap(cap)
    if retry_after is not None and retry_after >= 0:
        # Up to 10% later than asked, never earlier: many clients told "1 s" must not all
        # return at the same millisecond. Never beyond the cap.
        return min(cap, retry_after * (1 + 0.1 * rng.random()))
    exp = min(cap, base * (2 ** min(max(0, attempt - 1), 64)))
    # "Equal jitter": at least half the exponential step, so the delay still grows.
    return exp / 2 + rng.random() * exp / 2


def clamp_note(retry_after: float | None, cap: float) -> str | None:
    """The sentence an attempt's message carries when ``Retry-After`` asked for more than the
    cap, or None."""
    if retry_after is None or retry_after <= _cap(cap):
        return None
    asked = "an unreadably long time" if retry_after == float("inf") else f"{retry_after:.0f}s"
    return (f"the server asked to wait {asked} (Retry-After); waiting backoff_max "
            f"{_cap(cap):g}s instead")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())

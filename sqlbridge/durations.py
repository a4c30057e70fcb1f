"""Ages with a unit (``30d``, ``12h``, ``90m``, ``45s``), the one rule for ``purge
--older-than`` and ``[worker] retention``.

A bare number is refused: "30" read as seconds once deleted a month of history in a blink.
Negative, non-finite and absurdly large ages are refused too (``-1d`` would mean "everything",
``1e400`` overflows the database's date arithmetic).
"""

from __future__ import annotations

import math
import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# 100 years: beyond it date arithmetic on either database overflows, and no history is older.
MAX_AGE_SECONDS = 100 * 365 * 86400
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE | re.ASCII)
ALLOWED = "a positive number with a unit: 30d, 12h, 90m or 45s"


def parse_age(text: object) -> float:
    """Seconds in ``text``; ``ValueError`` with a sentence naming what is allowed."""
    m = _AGE.match(str(text)) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{str(text)[:40]!r} is not an age; use {ALLOWED}")
    seconds = float(m.group(1)) * UNITS[m.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_AGE_SECONDS:
        raise ValueError(f"{str(text)[:40]!r} is out of range; use {ALLOWED}, at most 36500d")
    return seconds

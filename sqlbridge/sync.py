"""Scheduled sync (owned by the scheduling work; placeholder until it lands).

The worker calls ``run_due`` once per loop and ``followups`` after each successful request.
"""

from __future__ import annotations

from typing import Any


def run_due(queue: Any, worker_id: str) -> int:
    """Enqueue the requests of every due schedule; return how many schedules ran."""
    return 0


def followups(row: Any, op: Any, params: dict[str, Any], result: Any) -> list[dict[str, Any]]:
    """Child requests a finished sync request fans out into (enqueue keyword arguments)."""
    return []

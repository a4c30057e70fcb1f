"""What the worker tells the outside world about itself: the observer hooks, health, readiness.

``Observer`` is the whole interface the worker calls: a handful of one-line hooks, each a no-op
here, so a worker without ``--metrics-port`` pays nothing. ``HealthState`` keeps what
``/healthz`` and ``/readyz`` answer from; ``sqlbridge.metrics`` adds the Prometheus counters.

Health (``/healthz``) fails when

- the last database call failed and none has succeeded since (the worker cannot reach the
  database: it is riding out an outage, not doing work), or
- the loop has not come round for ``stall_after`` seconds (stuck in a call that never returns,
  a deadlocked thread): a restart is the cure, which is what an orchestrator does with it.

Readiness (``/readyz``) turns true once every sqlbridge table was found in the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, inspect, select

from .schema import SCHEMA, metadata
from .sqlfuncs import utcnow

if TYPE_CHECKING:
    from .dberrors import DbError
    from .queue import Claimed, Completion


class Observer:
    """The hooks ``Worker`` calls; every one is a no-op here. Called from the worker's loop
    thread only."""

    def loop(self, inflight: int) -> None:
        """The loop came round; ``inflight`` calls are running."""

    def db_ok(self) -> None:
        """A database call succeeded."""

    def db_error(self, error: DbError) -> None:
        """A database call failed (``error.transient``: it will be tried again)."""

    def claimed(self, claims: Sequence[Claimed], seconds: float) -> None:
        """A claim statement returned ``claims`` after ``seconds`` (back-off included)."""

    def finished(self, completions: Sequence[Completion], fenced: Sequence[int]) -> None:
        """Outcomes were written; ``fenced`` ids were refused because their lease was lost."""

    def recovered(self, counts: dict[str, int]) -> None:
        """Expired leases were settled: rows per new status."""


class HealthState(Observer):
    """Liveness and readiness from the hooks; read by the HTTP thread."""

    def __init__(self, stall_after: float = 60.0) -> None:
        self.stall_after = stall_after
        self.last_loop = time.monotonic()
        self.last_db_ok: float | None = None
        self.last_db_error: float | None = None
        self.last_db_error_kind: str | None = None
        self.schema_ok = False
        self.schema_problem = "schema not checked yet"
        self._lock = threading.Lock()

    def loop(self, inflight: int) -> None:
        self.last_loop = time.monotonic()

    def db_ok(self) -> None:
        self.last_db_ok = time.monotonic()

    def db_error(self, error: DbError) -> None:
        self.last_db_error = time.monotonic()
        self.last_db_error_kind = str(error)

    @property
    def database_reachable(self) -> bool:
        if self.last_db_error is None:
            return True
        return self.last_db_ok is not None and self.last_db_ok >= self.last_db_error

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) for ``/healthz``."""
        loop_age = time.monotonic() - self.last_loop
        stalled = loop_age > self.stall_after
        reachable = self.database_reachable
        details: dict[str, Any] = {
            "database": "reachable" if reachable else
            f"unreachable ({self.last_db_error_kind})",
            "loop_age_seconds": round(loop_age, 3),
            "loop": f"stalled (no loop for over {self.stall_after:g} s)" if stalled else "ok",
        }
        healthy = reachable and not stalled
        details["status"] = "ok" if healthy else "unhealthy"
        return healthy, details

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.schema_ok, {"status": "ready" if self.schema_ok else "not ready",
                                "schema": "verified" if self.schema_ok else self.schema_problem}

    def check_schema(self, engine: Engine) -> bool:
        """Look for every table; remember the answer for ``/readyz``."""
        try:
            missing = missing_tables(engine)
        except Exception as exc:  # noqa: BLE001 - reported through /readyz, tried again later
            self.schema_ok, self.schema_problem = False, f"database: {type(exc).__name__}"
            return False
        if missing:
            self.schema_ok = False
            self.schema_problem = f"missing tables: {', '.join(missing)} (run sqlbridge install)"
        else:
            self.schema_ok, self.schema_problem = True, "verified"
        return self.schema_ok


def missing_tables(engine: Engine) -> list[str]:
    """sqlbridge tables the database lacks (empty when ``sqlbridge install`` has run)."""
    schema = SCHEMA if engine.dialect.name != "sqlite" else None
    present = set(inspect(engine).get_table_names(schema=schema))
    return sorted(t.name for t in metadata.sorted_tables if t.name not in present)


def clock_skew(engine: Engine) -> float:
    """Seconds the database's UTC clock is ahead of this host's (negative: behind).

    Read as the midpoint of one round trip, so the network delay mostly cancels out. sqlbridge
    keeps every lease, retry and schedule on the database's clock, so skew does no harm to the
    queue; it does mislead a person comparing log times with table times.
    """
    with engine.connect() as conn:
        before = time.time()
        value = conn.execute(select(utcnow())).scalar()
        after = time.time()
    db = datetime.fromisoformat(value) if isinstance(value, str) else value
    db_epoch = db.replace(tzinfo=UTC).timestamp()
    return db_epoch - (before + after) / 2

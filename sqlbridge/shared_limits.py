"""An account's ``rate_limit`` held across every worker process and host.

The database keeps, per (account, provider), the next free send slot (``rate_limit_slot``,
seconds since 1970 by the database's clock). A worker that needs a slot reserves a block of
``rate × BLOCK_SECONDS`` consecutive slots in one short transaction (an ``UPDATE`` that moves
``next_at`` past the block, then a read of where the block starts), and spends them locally,
one call per slot time, shared by its threads. So:

- slots are disjoint across workers: however many workers there are, no two calls use the same
  slot, and calls are never earlier than their slot: the account's rate holds overall;
- a worker talks to the database at most once per BLOCK_SECONDS per busy (account, provider):
  a few round trips a second, none while idle;
- a worker that dies simply does not use the rest of its block: the account sends a little
  less for a moment, never more; nothing needs cleaning up;
- a slot whose time has passed unused is dropped, not used late, so a paused thread cannot
  later fire a burst. That holds for a block that arrives late too: the reservation is stamped
  with the database's clock when the ``UPDATE`` runs, and a slow answer (a loaded server, or
  the first statements of a new connection: over 100 ms on Babelfish) can bring a block whose
  first slots have already gone by; those are dropped, never fired together on arrival.

Used by the worker in place of the per-process ``providers.ratelimit.RateLimiter`` (same
``acquire`` interface).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, case, insert, select, update
from sqlalchemy.dialects import mssql
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .errors import TransientError
from .schema import rate_limit_slot
from .sqlfuncs import epoch_now

# Seconds of slots reserved per round trip.
BLOCK_SECONDS = 0.25
# A slot this much (in slot intervals) in the past is dropped rather than used late.
STALE_SLOTS = 0.5
# Reservations in a row whose every slot had gone by on arrival before acquire gives up (the
# database answers slower than a block lasts).
RESERVE_TRIES = 3

_t = rate_limit_slot


def _reserve_statement() -> Any:
    # Not before now + b_lead: the worker's last round trip, so that a block starting "now"
    # is not already behind by the time its answer arrives (those slots would be dropped).
    earliest = epoch_now() + bindparam("b_lead")
    start = case((_t.c.next_at > earliest, _t.c.next_at), else_=earliest)
    return (update(_t)
            .where(_t.c.account == bindparam("b_account"), _t.c.provider == bindparam("b_provider"))
            .values(next_at=start + bindparam("b_span")))


def _read_statement() -> Any:
    return (select(_t.c.next_at, epoch_now())
            .where(_t.c.account == bindparam("b_account"),
                   _t.c.provider == bindparam("b_provider")))


def mssql_statements() -> dict[str, str]:
    """The statements as SQL Server sees them, for the T-SQL parse test."""
    dialect = mssql.dialect()
    return {"rate_reserve": str(_reserve_statement().compile(dialect=dialect)),
            "rate_read": str(_read_statement().compile(dialect=dialect))}


@dataclass
class _Block:
    rate: float
    next_local: float = 0.0  # monotonic time of the next unused slot
    left: int = 0


def _drop_stale(block: _Block, now: float, interval: float) -> None:
    """Skip the slots that went by unused, so the next one is at most STALE_SLOTS intervals
    late: using them late would put calls closer together than the rate allows (a burst)."""
    late = now - block.next_local
    if block.left and late > STALE_SLOTS * interval:
        skipped = min(block.left, math.ceil((late - STALE_SLOTS * interval) / interval))
        block.left -= skipped
        block.next_local += skipped * interval


class SharedRateLimiter:
    """``acquire((account, provider), per_second)``: wait for this worker's next slot."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._blocks: dict[tuple[str, str], _Block] = {}
        self.reservations = 0  # round trips, for tests and the benchmark
        self._lead = 0.0  # seconds the last reservation took, at most BLOCK_SECONDS

    def acquire(self, key: tuple[str, str], per_second: float | None) -> None:
        if not per_second:
            return
        interval = 1.0 / per_second
        with self._lock:
            block = self._blocks.get(key)
            if block is None or block.rate != per_second:
                block = self._blocks[key] = _Block(per_second)
            _drop_stale(block, time.monotonic(), interval)
            tries = 0
            while not block.left:
                if tries == RESERVE_TRIES:
                    raise TransientError(
                        f"no send slot for account {key[0]!r} ({key[1]}): {RESERVE_TRIES} "
                        f"blocks of slots in a row had gone by before the database's answer "
                        f"arrived (round trips over {BLOCK_SECONDS} s)",
                        code="RATE_LIMIT_UNAVAILABLE", delivered=False)
                tries += 1
                try:
                    block.next_local, block.left = self._reserve(key, per_second)
                except SQLAlchemyError as exc:
                    # Runs on a call thread: never let a database error escape as one. The
                    # call has not been made, so the queue may simply try it again later.
                    raise TransientError(
                        f"no send slot for account {key[0]!r} ({key[1]}): the rate-limit "
                        f"table could not be reached ({type(exc).__name__})",
                        code="RATE_LIMIT_UNAVAILABLE", delivered=False) from None
                # A slow answer brings slots that went by while it travelled.
                _drop_stale(block, time.monotonic(), interval)
            slot = block.next_local
            block.next_local += interval
            block.left -= 1
        pause = slot - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def _reserve(self, key: tuple[str, str], per_second: float) -> tuple[float, int]:
        """Reserve a block: (monotonic time of its first slot, number of slots)."""
        count = max(1, round(per_second * BLOCK_SECONDS))
        params = {"b_account": key[0], "b_provider": key[1], "b_span": count / per_second,
                  "b_lead": self._lead}
        for _ in range(2):
            started = time.monotonic()
            with self.engine.begin() as conn:
                if conn.execute(_reserve_statement(), params).rowcount:
                    next_at, db_now = conn.execute(_read_statement(), params).one()
                    local_now = time.monotonic()
                    self.reservations += 1
                    self._lead = min(local_now - started, BLOCK_SECONDS)
                    first = float(next_at) - count / per_second
                    return local_now + (first - float(db_now)), count
            try:  # first use of this key anywhere: create its row, then reserve again
                with self.engine.begin() as conn:
                    conn.execute(insert(_t).values(account=key[0], provider=key[1],
                                                   next_at=0.0))
            except IntegrityError:
                pass  # another worker created it first
        raise RuntimeError(f"rate_limit_slot row for {key} could not be created")

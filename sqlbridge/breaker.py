"""The circuit breaker per (account, provider): stop spending every row's attempts on an API
that is down, for every worker at once.

What one attempt says about the API (``signal``, decided where the attempt is settled):

- ``UP``: the API answered, with a success or a refusal (HTTP 4xx, the vendor's error
  answer): it is there, and a refusal is the row's problem, not the API's.
- ``DOWN``: a failure the worker retries (the delivery rule's RETRY): never sent (connection
  refused, DNS, connect timeout), "not done" (HTTP 429, 503), or a read that got no usable
  answer (timeout, other 5xx, a garbled body). The last attempt of a row counts as well.
- nothing: the attempt taught nothing about the API, so it neither counts nor resets: an
  ``uncertain`` send (no answer, not retried: one unanswered send must not pause an account,
  and a send is never repeated to find out), a row refused before any call (bad parameters,
  unknown account), a failure on our side (the rate-limit table unreachable), an internal error.

States, in ``circuit_breaker`` (one row per key, made on its first failure):

- ``closed``: claims run. ``breaker_failures`` DOWNs in a row (across all workers) open it.
- ``open``: no worker claims the key's rows (``gates.breaker_clear``) until ``open_until``,
  ``breaker_cooldown`` seconds after it opened. The rows keep their attempts.
- after ``open_until`` (half-open), one worker wins the probe (``take_probe``, an ``UPDATE``
  only one transaction can match) and claims one row: ``probing``, for at most one lease.
  UP closes the breaker; DOWN opens it again for twice the last pause, up to
  ``breaker_cooldown_max``; a probe that taught nothing (an ``uncertain`` send, a worker that
  died) lets another worker probe once its lease has passed.
- UP from any call closes it (a call that was already running when it opened counts too).

Each worker writes what its finished attempts said in the same transaction as their results
(``record``, one ``UPDATE`` per key that changed), and reads the table at most once a second
(``refresh``): to find probes that are due, and to know whether a success must reset a count
(a success for a key nobody has seen fail writes nothing). "In a row" is therefore exact per
worker and, across workers, as of a read at most a second old.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.exc import IntegrityError

from .config import BREAKER_FAILURES_MAX, Settings
from .delivery import Reach, Verdict
from .gates import Key, section
from .schema import circuit_breaker
from .sqlfuncs import utcnow

if TYPE_CHECKING:
    from .queue import Completion

UP, DOWN = "up", "down"
# Failures raised on our side of the wire: they say nothing about the API.
LOCAL_CODES = frozenset({"RATE_LIMIT_UNAVAILABLE"})
# Seconds between two reads of the table by one worker.
REFRESH = 1.0

_b = circuit_breaker


def signal(reach: Reach | None, verdict: Verdict | None, code: str | None) -> str | None:
    """What an attempt says about the API (see the module docstring); ``reach`` None is a
    success."""
    if reach is None:
        return UP
    if code in LOCAL_CODES:
        return None
    if reach is Reach.REFUSED:
        return UP
    return DOWN if verdict is Verdict.RETRY else None


@dataclass(frozen=True)
class Rule:
    failures: int
    cooldown: float
    cooldown_max: float


def rule_of(settings: Settings, key: Key) -> Rule | None:
    """The breaker settings of a key; None when its breaker is off or the key unknown."""
    s = section(settings, key)
    if s is None or not s.breaker_failures:
        return None
    return Rule(s.breaker_failures, s.breaker_cooldown, s.breaker_cooldown_max)


def _record_statement() -> Any:
    """One key's signals from one batch: ``b_up`` (any UP), ``b_tail`` (DOWNs after the last
    UP, or all of them). Every SET reads the row as it was before the statement."""
    up, tail = bindparam("b_up"), bindparam("b_tail")
    c0, cmax = bindparam("b_cooldown"), bindparam("b_cooldown_max")
    failures = case((up == 1, tail), else_=_b.c.failures + tail)
    trip = and_(tail > 0, failures >= bindparam("b_threshold"),
                or_(up == 1, _b.c.state == "closed"))
    reopen = and_(tail > 0, up == 0, _b.c.state == "probing")
    doubled = _b.c.cooldown * 2
    longer = case((doubled > cmax, cmax), (doubled < c0, c0), else_=doubled)
    opens = or_(trip, reopen)
    return (update(_b)
            .where(_b.c.account == bindparam("b_account"),
                   _b.c.provider == bindparam("b_provider"))
            .values(
                failures=failures,
                state=case((opens, "open"), (up == 1, "closed"), else_=_b.c.state),
                cooldown=case((trip, c0), (reopen, longer), (up == 1, 0.0),
                              else_=_b.c.cooldown),
                open_until=case((trip, utcnow(c0)), (reopen, utcnow(longer)),
                                (up == 1, null()), else_=_b.c.open_until),
                trips=_b.c.trips + case((opens, 1), else_=0),
                last_error=case((tail > 0, bindparam("b_error")), else_=_b.c.last_error),
                changed_at=case((or_(opens, and_(up == 1, _b.c.state != "closed")), utcnow()),
                                else_=_b.c.changed_at),
            ))


def _probe_statement() -> Any:
    """Win the probe of a key whose pause is over: only one transaction can match the row."""
    return (update(_b)
            .where(_b.c.account == bindparam("probe_account"),
                   _b.c.provider == bindparam("probe_provider"),
                   _b.c.state.in_(("open", "probing")),
                   # NULL: an open row without an end (edited by hand) is probed, not stuck.
                   or_(_b.c.open_until.is_(None), _b.c.open_until <= utcnow()))
            .values(state="probing", open_until=utcnow(bindparam("b_lease")),
                    changed_at=utcnow()))


_COLUMNS = (_b.c.account, _b.c.provider, _b.c.state, _b.c.failures, _b.c.open_until,
            _b.c.cooldown, _b.c.trips, _b.c.last_error, _b.c.changed_at)


def _refresh_statement() -> Any:
    return select(*_COLUMNS, utcnow().label("now")).where(
        or_(_b.c.state != "closed", _b.c.failures > 0))


def _as_datetime(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


class Breakers:
    """One process's view of the breakers, and the writes its finished attempts make."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._seen: dict[Key, Any] = {}  # rows not closed or counting, as last read
        self._now: datetime | None = None  # the database's clock at that read
        self._read_at = -math.inf
        self._counting: set[Key] = set()  # keys this process counted failures for since
        self._rows: set[Key] = set()  # keys whose row is known to exist
        self._tried: set[Key] = set()  # probes tried since the last read (one per read)
        self.writes = 0  # statements that changed a breaker, for tests and the benchmark

    # -- reading -------------------------------------------------------------------------------

    def refresh(self, conn: Connection | None = None, *, force: bool = False) -> None:
        """Read the breakers that are not closed or are counting, at most once per REFRESH."""
        if not force and time.monotonic() - self._read_at < REFRESH:
            return
        if conn is None:
            with self.engine.connect() as own:
                rows = own.execute(_refresh_statement()).all()
        else:
            rows = conn.execute(_refresh_statement()).all()
        self._read_at = time.monotonic()
        self._tried.clear()
        self._seen = {(r.account, r.provider): r for r in rows}
        self._rows.update(self._seen)
        self._counting -= set(self._seen)  # the table says it now
        self._now = _as_datetime(rows[0].now) if rows else None

    def due_probes(self) -> list[Key]:
        """Keys whose pause is over (or whose probe's lease ran out), as of the last read
        (refreshed when older than REFRESH)."""
        self.refresh()
        return [key for key, r in self._seen.items()
                if key not in self._tried and r.state in ("open", "probing")
                and self._now is not None
                and (r.open_until is None or _as_datetime(r.open_until) <= self._now)]

    def take_probe(self, conn: Connection, key: Key, lease: float) -> bool:
        """In the claim's transaction: become the key's one probe, if nobody else is. Tried
        once per key per read of the table, won or not: a key with nothing due to probe
        costs one rolled-back transaction a second, not one per loop."""
        self._tried.add(key)
        return conn.execute(_probe_statement(), {"probe_account": key[0],
                                                 "probe_provider": key[1],
                                                 "b_lease": float(lease)}).rowcount == 1

    # -- writing -------------------------------------------------------------------------------

    def prepare(self, completions: Iterable[Completion]) -> None:
        """Before the finish transaction: make the rows of keys about to count a failure, each
        in its own short transaction (so a row another worker made first is no error)."""
        for key in {k for k, s in _signals(completions) if s == DOWN} - self._rows:
            if rule_of(self.settings, key) is None:
                continue
            try:
                with self.engine.begin() as conn:
                    found = conn.execute(select(_b.c.state).where(
                        _b.c.account == key[0], _b.c.provider == key[1])).first()
                    if found is None:
                        conn.execute(insert(_b).values(account=key[0], provider=key[1]))
            except IntegrityError:
                pass
            self._rows.add(key)

    def record(self, conn: Connection, completions: Sequence[Completion]) -> None:
        """In the finish transaction: what these attempts said, one statement per key whose
        breaker it changes."""
        by_key: dict[Key, list[str]] = {}
        for key, s in _signals(completions):
            by_key.setdefault(key, []).append(s)
        for key, signals in by_key.items():
            up = UP in signals
            last_up = max((i for i, s in enumerate(signals) if s == UP), default=-1)
            tail = sum(1 for s in signals[last_up + 1:] if s == DOWN)
            rule = rule_of(self.settings, key)
            if rule is None:
                # Off (breaker_failures = 0) or unknown here: count nothing, but a success
                # still closes a breaker that opened while it was on, or its rows would
                # wait for probes forever.
                if not up:
                    continue
                rule, tail = Rule(BREAKER_FAILURES_MAX + 1, 1.0, 1.0), 0
            if not tail:
                self.refresh(conn)
                seen = self._seen.get(key)
                if key not in self._counting and seen is None:
                    continue  # closed and not counting, as far as anyone has written
            last_error = next((c.error_code for c in reversed(completions)
                               if c.api_signal == DOWN and _key(c) == key), None)
            changed = conn.execute(_record_statement(), {
                "b_account": key[0], "b_provider": key[1], "b_up": int(up), "b_tail": tail,
                "b_threshold": rule.failures, "b_cooldown": rule.cooldown,
                "b_cooldown_max": rule.cooldown_max, "b_error": last_error}).rowcount
            self.writes += 1
            if not changed:
                self._rows.discard(key)  # deleted by hand: made again on the next failure
            if tail:
                self._counting.add(key)
            else:
                self._counting.discard(key)
                self._seen.pop(key, None)


def _key(c: Completion) -> Key | None:
    if c.claim is None or c.provider is None:
        return None
    return (c.claim.account, c.provider)


def _signals(completions: Iterable[Completion]) -> list[tuple[Key, str]]:
    out = []
    for c in completions:
        key = _key(c)
        if c.api_signal is not None and key is not None:
            out.append((key, c.api_signal))
    return out


# -- what operators see ------------------------------------------------------------------------

def states(engine: Engine) -> list[dict[str, Any]]:
    """Every breaker, with what it means now: ``shown`` is closed, open or half-open
    (``probe``: "due" once the pause is over, "in flight" while one probe runs), and
    ``seconds_left`` of the pause."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_COLUMNS, utcnow().label("now"))
                            .order_by(_b.c.account, _b.c.provider)).all()
    return [describe(r) for r in rows]


def describe(r: Any) -> dict[str, Any]:
    now, until = _as_datetime(r.now), _as_datetime(r.open_until)
    left = (until - now).total_seconds() if until is not None and now is not None else None
    if r.state == "closed":
        shown, probe = "closed", None
    elif r.state == "probing" and left is not None and left > 0:
        shown, probe = "half-open", "in flight"
    elif left is not None and left > 0:
        shown, probe = "open", None
    else:
        shown, probe = "half-open", "due"
    return {"account": r.account, "provider": r.provider, "state": shown, "probe": probe,
            "failures": int(r.failures), "seconds_left": max(0.0, left) if shown == "open"
            else None, "open_until": until, "cooldown": float(r.cooldown),
            "trips": int(r.trips), "last_error": r.last_error,
            "changed_at": _as_datetime(r.changed_at)}


def mssql_statements() -> dict[str, str]:
    """The breaker's statements as SQL Server sees them, for the T-SQL parse test."""
    dialect = mssql.dialect()
    return {"breaker_record": str(_record_statement().compile(dialect=dialect)),
            "breaker_probe": str(_probe_statement().compile(dialect=dialect)),
            "breaker_refresh": str(_refresh_statement().compile(dialect=dialect))}

"""What a claim may take: the gates each (account, provider) puts in front of the claim, held
across every worker process and host by the database itself.

Two gates, both conditions inside the claim statement (``queue._build_claim``), so every worker
sees the same state at the moment it claims:

- **The circuit breaker** (its state machine: ``sqlbridge.breaker``): a row whose (account,
  provider) has a breaker that is not ``closed`` is not claimed. It keeps its attempts; it is
  simply not taken until the breaker's one probe has answered.
- **max_in_flight**: at most N rows of the (account, provider) are ``processing`` at once. The
  count is the rows themselves, never a counter kept beside them, so it cannot drift or leak:
  a row stops counting when it leaves ``processing`` (its result is written, it is released at
  shutdown, or lease recovery settles it after its worker died). A capped claim first takes the
  key's row lock (``in_flight_lock``; an ``UPDATE``, held to the commit), counts, then claims at
  most the room left, in one transaction: two workers' capped claims for one key run one after
  the other, each counting the other's committed rows, so no race can pass the cap (without
  the lock, two claims could each count the same N-1 and take one more each; READPAST skips
  the other's uncommitted rows, and under read-committed snapshot they are not seen either).
  SQLite needs no lock: ``BEGIN IMMEDIATE`` already runs one claim at a time.

A row's provider is its ``provider`` column, or, for a row ``INSERT``ed without one, the
provider its operation resolves to (``row_provider``, built from the registry as
``registry.resolve`` decides it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.exc import IntegrityError

from . import registry
from .config import Settings
from .schema import circuit_breaker, in_flight_lock, outbox
from .sqlfuncs import IndexedBy, constant

log = logging.getLogger("sqlbridge.gates")

Key = tuple[str, str]  # (account, provider)


def section(settings: Settings, key: Key) -> Any:
    """The provider section of ``key`` in the settings, or None for an unknown account or
    provider (its rows fail when claimed; no gate applies to them)."""
    account = settings.accounts.get(key[0])
    return getattr(account, key[1], None) if account is not None and \
        key[1] in registry.PROVIDERS else None


def row_provider(t: Any) -> Any:
    """The provider of an outbox row: its column, else the one its operation resolves to
    (a declared operation's own, an Afilnet passthrough otherwise). Literal names, so the
    expression reads the same wherever a statement repeats it."""
    whens = [(t.c.operation == constant(name), constant(op.provider))
             for name, op in sorted(registry.OPERATIONS.items())]
    return func.coalesce(t.c.provider, case(*whens, else_=constant("afilnet")))


# -- the circuit breaker's gate --------------------------------------------------------------

def breaker_clear(t: Any, provider: Any) -> Any:
    """True for a row whose (account, provider) has no breaker that is open or probing."""
    b = circuit_breaker
    return not_(exists(select(literal(1)).select_from(b).where(
        b.c.account == t.c.account, b.c.provider == provider,
        b.c.state != constant("closed"))))


def key_is(t: Any, provider: Any, prefix: str) -> Any:
    """The row belongs to the key bound as ``{prefix}_account`` / ``{prefix}_provider``."""
    return and_(t.c.account == bindparam(f"{prefix}_account"),
                provider == bindparam(f"{prefix}_provider"))


# -- max_in_flight -----------------------------------------------------------------------------

def not_full(t: Any, provider: Any, i: int) -> Any:
    """The row is not of capped key ``i``, or that key has room (``cap_room_i`` > 0)."""
    return not_(and_(key_is(t, provider, f"cap{i}"), bindparam(f"cap_room{i}") <= 0))


def within_room(pick: Any, keys: int) -> Any:
    """The ids of ``pick`` (id, account, prov, priority; in claim order) that fit: for each
    capped key, its first ``cap_room_i`` rows by the claim's order; every row of an uncapped
    key. Numbers only the rows ``pick`` returned (at most a batch), never the backlog."""
    p = pick.subquery("p")
    room = case(*[(and_(p.c.account == bindparam(f"cap{i}_account"),
                        p.c.prov == bindparam(f"cap{i}_provider")), bindparam(f"cap_room{i}"))
                  for i in range(keys)], else_=None)
    rank = func.row_number().over(partition_by=(p.c.account, p.c.prov),
                                  order_by=(p.c.priority.desc(), p.c.id))
    r = select(p.c.id, rank.label("rn"), room.label("room")).subquery("r")
    return select(r.c.id).where(or_(r.c.room.is_(None), r.c.rn <= r.c.room))


def caps_of(settings: Settings) -> dict[Key, int]:
    """Every (account, provider) with a ``max_in_flight``, and the cap."""
    return {(name, provider): section_.max_in_flight
            for name, account in settings.accounts.items()
            for provider in registry.PROVIDERS
            if (section_ := getattr(account, provider, None)) is not None
            and section_.max_in_flight is not None}


def _lock_statement(keys: int) -> Any:
    t = in_flight_lock
    return (update(t).where(or_(*[and_(t.c.account == bindparam(f"cap{i}_account"),
                                       t.c.provider == bindparam(f"cap{i}_provider"))
                                  for i in range(keys)]))
            .values(claims=t.c.claims + 1))


def _count_statement() -> Any:
    # Rows in flight are few (at most every worker's concurrency): read through the filtered
    # index on them, then grouped by the derived provider.
    p = IndexedBy.of(outbox, "p", "ix_outbox_lease")
    rows = (select(p.c.account, row_provider(p).label("prov"))
            .where(p.c.status == constant("processing"),
                   p.c.account.in_(bindparam("cap_accounts", expanding=True)))
            .subquery("f"))
    return select(rows.c.account, rows.c.prov, func.count()).group_by(rows.c.account,
                                                                      rows.c.prov)


class Caps:
    """The max_in_flight caps of one worker's settings, and the claim parameters they give."""

    def __init__(self, engine: Engine, caps: Mapping[Key, int]) -> None:
        self.engine = engine
        self.caps = dict(sorted(caps.items()))
        self.keys: tuple[Key, ...] = tuple(self.caps)
        # SQLite runs one write transaction at a time: the claim is serialised already.
        self._locking = engine.dialect.name != "sqlite"
        self._rows_ready = not self._locking

    def __bool__(self) -> bool:
        return bool(self.keys)

    def _key_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for i, (account, provider) in enumerate(self.keys):
            params[f"cap{i}_account"], params[f"cap{i}_provider"] = account, provider
        return params

    def ensure_rows(self) -> None:
        """Create the capped keys' lock rows (once per process; each in its own short
        transaction, so a row another worker created first is no error)."""
        if self._rows_ready:
            return
        for account, provider in self.keys:
            try:
                with self.engine.begin() as conn:
                    exists_ = conn.execute(select(in_flight_lock.c.claims).where(
                        in_flight_lock.c.account == account,
                        in_flight_lock.c.provider == provider)).first()
                    if exists_ is None:
                        conn.execute(insert(in_flight_lock).values(account=account,
                                                                   provider=provider))
            except IntegrityError:
                pass  # another worker created it between our look and our insert
        self._rows_ready = True

    def lock(self, conn: Connection) -> None:
        """Take the capped keys' row locks until ``conn``'s transaction ends (the SQL Server
        family; nothing to do on SQLite, whose write transactions already run one at a
        time)."""
        if not self._locking or not self.keys:
            return
        locked = conn.execute(_lock_statement(len(self.keys)), self._key_params()).rowcount
        if locked != len(self.keys):
            # A lock row was deleted by hand: claim with the others' locks, and make the
            # rows again before the next claim.
            log.warning("in_flight_lock lacks %d of its rows; recreating them",
                        len(self.keys) - locked)
            self._rows_ready = False

    def claim_params(self, conn: Connection) -> dict[str, Any]:
        """In the claim's transaction: lock the capped keys, count their rows in flight, and
        return the claim statement's parameters (each key's room)."""
        params = self._key_params()
        self.lock(conn)
        busy = {(a, p): int(n) for a, p, n in conn.execute(
            _count_statement(), {"cap_accounts": sorted({a for a, _ in self.keys})})}
        for i, key in enumerate(self.keys):
            params[f"cap_room{i}"] = self.caps[key] - busy.get(key, 0)
        return params

    def in_flight(self, conn: Connection) -> dict[Key, int]:
        """Rows in flight now per capped key (for ``status``)."""
        if not self.keys:
            return {}
        return {(a, p): int(n) for a, p, n in conn.execute(
            _count_statement(), {"cap_accounts": sorted({a for a, _ in self.keys})})
            if (a, p) in self.caps}


def mssql_statements() -> dict[str, str]:
    """The gates' own statements as SQL Server sees them, for the T-SQL parse test."""
    dialect = mssql.dialect()
    return {"cap_lock": str(_lock_statement(2).compile(dialect=dialect)),
            "cap_count": str(_count_statement().compile(dialect=dialect))}

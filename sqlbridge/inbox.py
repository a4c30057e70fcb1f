"""Fetched data into tables, upserted on natural keys so a re-sync never duplicates.

Runs in the caller's transaction (the one that finishes the request), so a request and its data
commit together. Each batch first reads which of its keys are stored (that is how inserted and
updated are counted without a round trip per row), then writes:

- SQLite: ``INSERT … ON CONFLICT (key) DO UPDATE``, one executemany for the whole batch (an
  in-process call per row, no network). Every write transaction already holds the database's
  write lock (``BEGIN IMMEDIATE``).
- SQL Server, Azure SQL, Babelfish: no ``MERGE`` (Babelfish has none, and SQL Server's has a
  long bug list). ``UPDATE … WITH (UPDLOCK, HOLDLOCK) … FROM <rows> AS v`` for the stored
  keys, then ``INSERT … SELECT … FROM <rows> AS v WHERE NOT EXISTS (… WITH (UPDLOCK,
  HOLDLOCK)) ORDER BY v.n`` for the new ones, up to a thousand rows per statement
  (``sqlbridge.rowset``: a JSON document and parameters), not one round trip per row. The
  key read takes the same hints, so two workers upserting the same new key serialise on its
  key-range lock instead of one failing on the unique constraint; ``NOT EXISTS`` keeps the
  insert safe even so.

``first_seen`` is set once, at insert; ``last_seen`` and ``request_id`` say when and by which
request a row was last confirmed, and are all a repeated fetch changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    cast,
    exists,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from . import rowset, schema
from .sqlfuncs import utcnow

KEY_CHUNK = 400  # keys per IN (...) list: well under SQL Server's 2,100 parameters
ROW_CHUNK = 2000  # rows per executemany call (SQLite), to bound the driver's buffers
LOCK_HINT = "WITH (UPDLOCK, HOLDLOCK)"


@dataclass(frozen=True)
class Target:
    table: Table
    keys: tuple[str, ...]  # natural key (the table's UniqueConstraint), "account" first
    values: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.keys + self.values + ("request_id",)


TARGETS: dict[str, Target] = {
    "chat_channel": Target(schema.chat_channel, ("account", "platform", "platformid"),
                           ("name",)),
    "chat": Target(schema.chat, ("account", "platform", "platformid", "destination"),
                   ("last_messageid", "last_message", "last_sent", "last_status",
                    "last_datetime")),
    "chat_message": Target(schema.chat_message, ("account", "platform", "platformid",
                                                 "messageid"),
                           ("destination", "message", "sent", "status", "datetime", "unread")),
    "anna_department": Target(schema.anna_department, ("account", "alias"), ("name",)),
    "anna_channel": Target(schema.anna_channel, ("account", "department_alias", "alias"),
                           ("name",)),
    "anna_user_request": Target(schema.anna_user_request, ("account", "user_key", "protocol"),
                                ("department", "channel", "description", "opened", "status",
                                 "pending", "link")),
    "anna_alert_counter": Target(schema.anna_alert_counter, ("account", "user_key", "filters"),
                                 ("alert_counter",)),
    "anna_user_hash": Target(schema.anna_user_hash, ("account", "user_id"),
                             ("hash", "chat_url", "embedded_url", "expires_at")),
}


# -- statements ------------------------------------------------------------------------------


def existing_keys_statement(target: Target, prefix: Sequence[Any], lasts: list[Any]) -> Any:
    """Which of ``lasts`` (the key's last column) are stored under ``prefix`` (the others)."""
    t = target.table
    return (select(*(t.c[c] for c in target.keys))
            .where(*(t.c[c] == v for c, v in zip(target.keys[:-1], prefix, strict=True)),
                   t.c[target.keys[-1]].in_(lasts))
            .with_hint(t, LOCK_HINT, "mssql"))


def sqlite_upsert_statement(target: Target) -> Any:
    """One INSERT … ON CONFLICT DO UPDATE that keeps first_seen and moves last_seen."""
    stmt = sqlite_insert(target.table)
    return stmt.on_conflict_do_update(
        index_elements=[target.table.c[k] for k in target.keys],
        set_={**{c: stmt.excluded[c] for c in target.values},
              "request_id": stmt.excluded.request_id, "last_seen": utcnow()})


def _param(target: Target, column: str, typed: bool) -> ColumnElement[Any]:
    # On SQL Server a parameter in a SELECT list has no type pyodbc can ask the server for;
    # the CAST gives it the column's own. SQLite's CAST would turn text into numbers, so not
    # there.
    p = bindparam(column, type_=target.table.c[column].type)
    return cast(p, target.table.c[column].type) if typed else p


def _rows(target: Target, typed: bool, in_json: bool, as_params: int) -> Any:
    return rowset.derived_table(target.table, target.keys + target.values, typed=typed,
                                in_json=in_json, as_params=as_params)


def update_statement(target: Target, typed: bool = True, in_json: bool = True,
                     as_params: int = 0) -> Any:
    """UPDATE … SET <values> FROM (a batch of rows, rowset) WHERE the keys match, under
    UPDLOCK, HOLDLOCK; first_seen stays, last_seen and request_id move."""
    t = target.table
    v = _rows(target, typed, in_json, as_params)
    return (update(t)
            .where(*(t.c[c] == v.c[c] for c in target.keys))
            .values({**{c: v.c[c] for c in target.values},
                     "last_seen": utcnow(), "request_id": _param(target, "request_id", typed)})
            .with_hint(LOCK_HINT, dialect_name="mssql"))


def insert_statement(target: Target, typed: bool = True, in_json: bool = True,
                     as_params: int = 0) -> Any:
    """INSERT … SELECT (a batch of rows, rowset) WHERE NOT EXISTS (the key, under UPDLOCK,
    HOLDLOCK), in batch order, so ids follow the provider's order (take_messages and the
    dashboard list messages by id)."""
    t = target.table
    v = _rows(target, typed, in_json, as_params)
    current = t.alias("cur")
    taken = (select(current.c.id)
             .where(*(current.c[c] == v.c[c] for c in target.keys))
             .with_hint(current, LOCK_HINT, "mssql"))
    rows = select(*(v.c[c] for c in target.keys + target.values),
                  _param(target, "request_id", typed).label("request_id")
                  ).where(~exists(taken))
    # As a suffix: SQLAlchemy's SQL Server compiler drops an ORDER BY it finds in a nested
    # SELECT, and INSERT … SELECT … ORDER BY is what makes SQL Server number rows in order.
    return insert(t).from_select(list(target.columns), rows.suffix_with("ORDER BY v.n"))


# -- writing ---------------------------------------------------------------------------------


def _existing_keys(conn: Connection, target: Target, rows: list[dict[str, Any]]) -> set[tuple]:
    """The natural keys among ``rows`` that are already stored."""
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[c] for c in target.keys[:-1])].append(r[target.keys[-1]])
    found: set[tuple] = set()
    for prefix, lasts in groups.items():
        for i in range(0, len(lasts), KEY_CHUNK):
            stmt = existing_keys_statement(target, prefix, lasts[i:i + KEY_CHUNK])
            found.update(tuple(row) for row in conn.execute(stmt))
    return found


def _executemany(conn: Connection, stmt: Any, params: list[dict[str, Any]]) -> None:
    for i in range(0, len(params), ROW_CHUNK):
        conn.execute(stmt, params[i:i + ROW_CHUNK])


def _set_based(conn: Connection, target: Target, statement: Any,
               rows: list[dict[str, Any]], request_id: int | None, typed: bool) -> None:
    """``rows`` through ``statement``, one statement per rowset batch."""
    columns = target.keys + target.values
    for batch in rowset.batches(rows, columns):
        stmt = statement(target, typed, bool(batch.in_json), len(batch.as_params))
        conn.execute(stmt, {**rowset.params(batch, columns), "request_id": request_id})


def upsert(conn: Connection, name: str, rows: Iterable[dict[str, Any]],
           request_id: int | None, *, portable: bool | None = None) -> list[int]:
    """Upsert rows (each holding every key column) into TARGETS[name]; [inserted, updated].

    ``portable`` forces the SQL Server form (UPDATE, then INSERT … WHERE NOT EXISTS) on any
    dialect, so it can be exercised on SQLite; by default SQLite uses ON CONFLICT.
    """
    target = TARGETS[name]
    # The last copy of a key in one batch wins, as a later fetch would.
    unique = {tuple(r[c] for c in target.keys): r for r in rows}
    if not unique:
        return [0, 0]
    existing = _existing_keys(conn, target, list(unique.values()))
    rows_out = [{**{c: r.get(c) for c in target.keys + target.values},
                 "request_id": request_id} for r in unique.values()]
    sqlite = conn.dialect.name == "sqlite"
    if portable is None:
        portable = not sqlite
    if not portable:
        _executemany(conn, sqlite_upsert_statement(target), rows_out)
    else:
        old = [v for key, v in zip(unique, rows_out, strict=True) if key in existing]
        new = [v for key, v in zip(unique, rows_out, strict=True) if key not in existing]
        _set_based(conn, target, update_statement, old, request_id, typed=not sqlite)
        _set_based(conn, target, insert_statement, new, request_id, typed=not sqlite)
    inserted = len(unique) - len(existing)
    return [inserted, len(existing)]


def _clear_unread(conn: Connection, account: str, params: dict[str, Any],
                  still_unread: set[str], request_id: int | None) -> int:
    """Messages of the chat the provider no longer reports as unread were read elsewhere.

    The stored unread ids are read first and the difference cleared by id, rather than one
    ``NOT IN (every id still unread)``, which would pass SQL Server's 2,100-parameter limit on
    a busy chat.
    """
    m = schema.chat_message
    chat = and_(m.c.account == account, m.c.platform == str(params["platform"]),
                m.c.platformid == str(params["platformid"]),
                m.c.destination == str(params["destination"]))
    stored = conn.execute(select(m.c.messageid).where(chat, m.c.unread == true())).scalars()
    read = sorted(set(stored) - still_unread)
    cleared = 0
    for i in range(0, len(read), KEY_CHUNK):
        cleared += conn.execute(
            update(m).where(chat, m.c.messageid.in_(read[i:i + KEY_CHUNK]))
            .values(unread=False, last_seen=utcnow(), request_id=request_id)).rowcount
    return cleared


def write(conn: Connection, lands_in: str, account: str, params: dict[str, Any],
          records: list[dict[str, Any]], request_id: int | None) -> dict[str, list[int]]:
    """Store what ``lands_in`` (``Operation.lands_in``) names; {table: [inserted, updated]}.

    - ``chat_message`` (getmessages): upserted with ``unread = False``. The vendor marks a
      chat read when getmessages reads it, so after this call none of the returned messages is
      unread any more there; saying otherwise here would show them as waiting forever.
      Messages of the chat it did not return keep their flag.
    - ``chat_message_unread`` (getunreadmessages): upserted with ``unread = True`` (incoming
      ones; a message the account sent is never unread), then every other message of that chat
      stored as unread is cleared: the vendor no longer reports it, so it was read elsewhere.
      Cleared rows count as updated.
    - ``anna_structure``: departments and their channels, into two tables.
    """
    rows = [{**r, "account": account} for r in records]
    if lands_in == "anna_structure":
        departments = [r for r in rows if r.get("kind") == "department"]
        channels = [r for r in rows if r.get("kind") == "channel"]
        return {"anna_department": upsert(conn, "anna_department", departments, request_id),
                "anna_channel": upsert(conn, "anna_channel", channels, request_id)}
    if lands_in == "chat_message_unread":
        for r in rows:
            r["unread"] = r.get("sent") is not True
        counts = upsert(conn, "chat_message", rows, request_id)
        incoming = {str(r["messageid"]) for r in rows if r["unread"]}
        counts[1] += _clear_unread(conn, account, params, incoming, request_id)
        return {"chat_message": counts}
    if lands_in == "chat_message":
        for r in rows:
            r["unread"] = False
        return {"chat_message": upsert(conn, "chat_message", rows, request_id)}
    if lands_in not in TARGETS:
        known = sorted([*TARGETS, "anna_structure", "chat_message_unread"])
        raise ValueError(f"no inbox writer for '{lands_in}'; known: {', '.join(known)}")
    return {lands_in: upsert(conn, lands_in, rows, request_id)}


def mssql_statements() -> dict[str, str]:
    """Every upsert statement as SQL Server receives it, compiled by the mssql dialect (the
    T-SQL gate in the tests parses them)."""
    dialect = mssql.dialect()
    out: dict[str, str] = {}
    for name, target in TARGETS.items():
        sample = [f"x{i}" for i in range(3)]
        probe = existing_keys_statement(target, ["p"] * (len(target.keys) - 1), sample)
        out[f"{name}_existing"] = str(probe.compile(dialect=dialect))
        # Both parts of a batch: rows in the JSON document, and two as parameters.
        out[f"{name}_update"] = str(update_statement(target, True, True, 2)
                                    .compile(dialect=dialect))
        out[f"{name}_insert"] = str(insert_statement(target, True, True, 2)
                                    .compile(dialect=dialect))
    # The unread-clearing pair of chat_message_unread (a boolean test spelled for T-SQL).
    m = schema.chat_message
    chat = and_(m.c.account == "a", m.c.platform == "p", m.c.platformid == "i",
                m.c.destination == "d")
    out["unread_stored"] = str(select(m.c.messageid).where(chat, m.c.unread == true())
                               .compile(dialect=dialect))
    out["unread_clear"] = str(update(m).where(chat, m.c.messageid.in_(["x", "y"]))
                              .values(unread=False, last_seen=utcnow(), request_id=1)
                              .compile(dialect=dialect))
    return out


statements_for_mssql = mssql_statements

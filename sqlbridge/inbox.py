"""Fetched data into tables, upserted on natural keys so a re-sync never duplicates.

One portable upsert for every dialect, in the caller's transaction (the one that finishes the
request): read which keys of the batch exist, ``UPDATE`` those, ``INSERT`` the rest, each as one
executemany. No ``MERGE`` (Babelfish has none, and SQL Server's has a long bug list). On SQL
Server the key read takes ``UPDLOCK, HOLDLOCK`` so two workers upserting the same new key
serialise instead of one failing on the unique constraint; on SQLite every write transaction
already holds the database's write lock (``BEGIN IMMEDIATE``).

``first_seen`` is set once, at insert; ``last_seen`` and ``request_id`` say when and by which
request a row was last confirmed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, insert, select, tuple_, update
from sqlalchemy.dialects import mssql

from . import schema
from .sqlfuncs import utcnow

_CHUNK = 400  # keys per IN (...) list: well under SQL Server's 2,100 parameters


@dataclass(frozen=True)
class Target:
    table: Table
    keys: tuple[str, ...]  # natural key, "account" first
    values: tuple[str, ...]


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


def _existing_keys(conn: Connection, target: Target, rows: list[dict[str, Any]]) -> set[tuple]:
    """The natural keys among ``rows`` that are already stored."""
    t = target.table
    prefix_cols, last = target.keys[:-1], target.keys[-1]
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[c] for c in prefix_cols)].append(r[last])
    found: set[tuple] = set()
    for prefix, lasts in groups.items():
        for i in range(0, len(lasts), _CHUNK):
            stmt = (select(*(t.c[c] for c in target.keys))
                    .where(*(t.c[c] == v for c, v in zip(prefix_cols, prefix, strict=True)),
                           t.c[last].in_(lasts[i:i + _CHUNK]))
                    .with_hint(t, "WITH (UPDLOCK, HOLDLOCK)", "mssql"))
            found.update(tuple(row) for row in conn.execute(stmt))
    return found


def _update_statement(target: Target) -> Any:
    t = target.table
    return (update(t)
            .where(*(t.c[c] == bindparam(f"k_{c}") for c in target.keys))
            .values({**{c: bindparam(f"v_{c}") for c in target.values},
                     "last_seen": utcnow(), "request_id": bindparam("v_request_id")}))


def upsert(conn: Connection, name: str, rows: Iterable[dict[str, Any]],
           request_id: int | None) -> list[int]:
    """Upsert rows (each holding every key and value column) into TARGETS[name].
    Returns [inserted, updated]."""
    target = TARGETS[name]
    # The last copy of a key in one batch wins, as a later fetch would.
    unique = {tuple(r[c] for c in target.keys): r for r in rows}
    batch = list(unique.values())
    if not batch:
        return [0, 0]
    existing = _existing_keys(conn, target, batch)
    new = [r for key, r in unique.items() if key not in existing]
    old = [r for key, r in unique.items() if key in existing]
    if old:
        conn.execute(_update_statement(target), [
            {**{f"k_{c}": r[c] for c in target.keys},
             **{f"v_{c}": r.get(c) for c in target.values}, "v_request_id": request_id}
            for r in old])
    if new:
        conn.execute(insert(target.table), [
            {**{c: r.get(c) for c in target.keys + target.values}, "request_id": request_id}
            for r in new])
    return [len(new), len(old)]


def _clear_unread(conn: Connection, account: str, params: dict[str, Any],
                  still_unread: list[str], request_id: int | None) -> int:
    """Messages of the chat the provider no longer reports as unread were read elsewhere."""
    m = schema.chat_message
    where = and_(m.c.account == account, m.c.platform == params["platform"],
                 m.c.platformid == str(params["platformid"]),
                 m.c.destination == str(params["destination"]), m.c.unread.is_(True))
    if still_unread:
        where = and_(where, m.c.messageid.not_in(still_unread))
    return conn.execute(update(m).where(where).values(unread=False, last_seen=utcnow(),
                                                      request_id=request_id)).rowcount


def write(conn: Connection, lands_in: str, account: str, params: dict[str, Any],
          records: list[dict[str, Any]], request_id: int | None) -> dict[str, list[int]]:
    """Store what ``lands_in`` names; returns {table: [inserted, updated]}."""
    rows = [{"account": account, **r} for r in records]
    if lands_in == "anna_structure":
        return {
            "anna_department": upsert(conn, "anna_department",
                                      [r for r in rows if r.pop("kind") == "department"],
                                      request_id),
            "anna_channel": upsert(conn, "anna_channel",
                                   [r for r in rows if r.get("kind", "channel") == "channel"
                                    and "department_alias" in r], request_id),
        }
    if lands_in == "chat_message_unread":
        for r in rows:
            r["unread"] = not r.get("sent")
        counts = upsert(conn, "chat_message", rows, request_id)
        incoming = [r["messageid"] for r in rows if r["unread"]]
        counts[1] += _clear_unread(conn, account, params, incoming, request_id)
        return {"chat_message": counts}
    if lands_in == "chat_message":
        # getmessages reads the chat, and the vendor marks what it returns as read.
        for r in rows:
            r["unread"] = False
        return {"chat_message": upsert(conn, "chat_message", rows, request_id)}
    return {lands_in: upsert(conn, lands_in, rows, request_id)}


def mssql_statements() -> dict[str, str]:
    """The upsert statements as SQL Server sees them (parsed by the T-SQL gate in the tests)."""
    dialect = mssql.dialect()
    out: dict[str, str] = {}
    for name, target in TARGETS.items():
        t = target.table
        probe = (select(*(t.c[c] for c in target.keys))
                 .where(*(t.c[c] == bindparam(f"p_{c}") for c in target.keys[:-1]),
                        tuple_(t.c[target.keys[-1]]).in_([("x",)]))
                 .with_hint(t, "WITH (UPDLOCK, HOLDLOCK)", "mssql"))
        out[f"{name}_existing"] = str(probe.compile(dialect=dialect))
        out[f"{name}_update"] = str(_update_statement(target).compile(dialect=dialect))
        out[f"{name}_insert"] = str(insert(t).compile(dialect=dialect))
    return out

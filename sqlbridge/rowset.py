"""Many rows as one derived table, so an upsert writes a page of rows in one statement.

Without pyodbc's fast_executemany (Microsoft's driver only; FreeTDS crashes on it) an
executemany is one round trip per row: a 30,000-message chat sync spent over two minutes on
Babelfish writing rows. Here a batch of rows becomes the derived table ``v`` (its columns,
plus ``n``, the row's place in the batch) in a single statement, in two parts:

- one JSON parameter, read by ``OPENJSON … WITH`` on SQL Server and Babelfish (``json_each``
  on SQLite): one parameter however many rows, and ten times faster than parameters on
  Babelfish. Only for rows whose text Babelfish reads back exactly: its OPENJSON returns a
  string as written in the JSON, escapes included (``\\"`` stays ``\\"``, ``\\n`` stays a
  backslash and an n), and cuts one longer than 4,000 characters at 4,000, silently. So a row
  goes in the document only when none of its text needs a JSON escape (a quote, a backslash,
  a control character) and none is longer than JSON_TEXT_LIMIT UTF-16 units;
- the other rows as parameters in a ``VALUES`` list, each cast to a type (SQL Server cannot
  infer one for a parameter there): at most MAX_PARAMS per statement, under SQL Server's
  2,100.

``n`` keeps the batch's order, so an ``INSERT … SELECT … ORDER BY v.n`` numbers new rows in
the order the provider gave them. OPENJSON needs database compatibility level 130 or later
(every database created on SQL Server 2016 or later; the procedures use it too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    Table,
    UnicodeText,
    bindparam,
    column,
    text,
)

JSON_TEXT_LIMIT = 4000  # Babelfish's OPENJSON cuts longer text here
MAX_ROWS = 1000  # rows per statement, to bound the JSON document's size
MAX_PARAMS = 2000  # parameters per statement (SQL Server allows 2,100; two are the JSON
# document and the caller's own)
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')

Row = tuple[int, dict[str, Any]]  # (n, the row)


@dataclass
class Batch:
    in_json: list[Row] = field(default_factory=list)
    as_params: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.in_json) + len(self.as_params)


def _plain(value: Any) -> Any:
    """A value as JSON (and SQLite) carry it: datetimes as ISO text with a space, which SQLite
    stores and DATETIME2 reads the same under any language setting."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


def json_safe(row: dict[str, Any], columns: Sequence[str]) -> bool:
    """True when every text of ``row`` reads back exactly through Babelfish's OPENJSON."""
    for c in columns:
        v = row.get(c)
        if not isinstance(v, str):
            continue
        if _NEEDS_ESCAPE.search(v):
            return False
        try:
            if len(v.encode("utf-16-le", "strict")) > 2 * JSON_TEXT_LIMIT:
                return False
        except UnicodeEncodeError:  # a lone surrogate: let the driver refuse it, as before
            return False
    return True


def batches(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Iterator[Batch]:
    """``rows`` in order, cut into statements: at most MAX_ROWS rows and MAX_PARAMS
    parameters each. ``n`` numbers the rows within their batch."""
    per_row = len(columns) + 1  # the columns and n
    batch = Batch()
    for row in rows:
        safe = json_safe(row, columns)
        if len(batch) == MAX_ROWS or (
                not safe and (len(batch.as_params) + 1) * per_row > MAX_PARAMS):
            yield batch
            batch = Batch()
        (batch.in_json if safe else batch.as_params).append((len(batch), row))
    if len(batch):
        yield batch


def params(batch: Batch, columns: Sequence[str]) -> dict[str, Any]:
    """The parameters of a statement built by ``derived_table`` for ``batch``."""
    out: dict[str, Any] = {}
    if batch.in_json:
        out["rows"] = json.dumps([{"n": n, **{c: _plain(r.get(c)) for c in columns}}
                                  for n, r in batch.in_json], ensure_ascii=False, default=str)
    for i, (n, r) in enumerate(batch.as_params):
        out[f"n_{i}"] = n
        out.update({f"{c}_{i}": r.get(c) for c in columns})
    return out


def _cell_type(sqltype: Any, in_json: bool) -> str:
    """The T-SQL type a cell is read as: numbers and booleans as such; text never narrower
    than 4,000 (NVARCHAR(MAX) for a MAX column given as a parameter), so a value too long for
    its column is refused by the INSERT or UPDATE, never cut by a CAST; dates as text in the
    JSON document (the statement converts them), as DATETIME2 from a parameter."""
    if isinstance(sqltype, Boolean):
        return "BIT"
    if isinstance(sqltype, Integer):
        return "BIGINT"
    if isinstance(sqltype, Float):
        return "FLOAT"
    if isinstance(sqltype, DateTime) and not in_json:
        return "DATETIME2"
    if not in_json and getattr(sqltype, "length", None) is None:
        return "NVARCHAR(MAX)"
    return f"NVARCHAR({JSON_TEXT_LIMIT})"


def derived_table(table: Table, columns: Sequence[str], *, typed: bool, in_json: bool,
                  as_params: int) -> Any:
    """The derived table ``v`` (``columns`` and ``n``) for a batch with rows in the JSON
    document (``in_json``) and ``as_params`` rows as parameters. ``typed``: the SQL Server
    forms (OPENJSON, VALUES with CASTs); else SQLite's (json_each, a UNION ALL of SELECTs)."""
    assert in_json or as_params, "an empty batch"
    types = {c: table.c[c].type for c in columns}
    parts: list[str] = []
    binds = []
    if in_json:
        binds.append(bindparam("rows", type_=UnicodeText()))
        if typed:
            shape = ", ".join(f"[{c}] {_cell_type(types[c], True)} '$.{c}'" for c in columns)
            picked = ", ".join(f"j.[{c}]" for c in columns)
            parts.append(f"SELECT {picked}, j.n FROM OPENJSON(CAST(:rows AS NVARCHAR(MAX))) "
                         f"WITH ({shape}, n INT '$.n') AS j")
        else:
            picked = ", ".join(f"json_extract(j.value, '$.{c}') AS {c}" for c in columns)
            parts.append(f"SELECT {picked}, json_extract(j.value, '$.n') AS n "
                         "FROM json_each(:rows) AS j")
    if as_params:
        cast = {c: _cell_type(types[c], False) for c in columns}
        for i in range(as_params):
            binds.append(bindparam(f"n_{i}", type_=Integer()))
            binds += [bindparam(f"{c}_{i}", type_=types[c]) for c in columns]
        if typed:
            rows = ", ".join(
                "(" + ", ".join([f"CAST(:{c}_{i} AS {cast[c]})" for c in columns]
                                + [f"CAST(:n_{i} AS INT)"]) + ")"
                for i in range(as_params))
            names = ", ".join([f"[{c}]" for c in columns] + ["n"])
            parts.append(f"SELECT {names} FROM (VALUES {rows}) AS p ({names})")
        else:
            parts += ["SELECT " + ", ".join([f":{c}_{i} AS {c}" for c in columns]
                                             + [f":n_{i} AS n"])
                      for i in range(as_params)]
    return (text(" UNION ALL ".join(parts)).bindparams(*binds)
            .columns(*(column(c, types[c]) for c in columns), column("n", Integer()))
            .subquery("v"))

"""Batches of rows for set-based writes (sqlbridge.rowset): which rows may travel in the JSON
document, how batches are cut, and that the statements parse as T-SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.dialects import mssql

from sqlbridge import inbox, rowset
from tests.test_tsql_parse import as_tsql, parse_errors

COLS = ("a", "b")


@pytest.mark.parametrize("text, safe", [
    ("plain text, accents olá, emoji 😀, CJK 日本語, \u200b \u2028 \x7f", True),
    ("'single' quotes and /slashes/", True),
    ('a "double" quote', False),  # JSON escapes it; Babelfish's OPENJSON keeps the escape
    ("a back\\slash", False),
    ("a new\nline", False),
    ("a tab\t", False),
    ("\x00", False),
    ("\x1f", False),
    ("x" * 4000, True),
    ("x" * 4001, False),  # Babelfish's OPENJSON cuts text at 4,000
    ("😀" * 2000, True),  # 4,000 UTF-16 units
    ("😀" * 2000 + "x", False),
    ("\ud800", False),  # a lone surrogate: to the driver as a parameter, as before
])
def test_only_text_babelfish_reads_back_exactly_goes_in_the_json_document(
        text: str, safe: bool) -> None:
    assert rowset.json_safe({"a": text, "b": 1}, COLS) is safe
    assert rowset.json_safe({"a": None, "b": True}, COLS)


def test_batches_keep_the_order_and_stay_under_the_parameter_limit() -> None:
    rows = [{"a": f"r{i}" + ("\n" if i % 3 == 0 else ""), "b": i} for i in range(5000)]
    batches = list(rowset.batches(rows, COLS))
    flat = [r for b in batches for _, r in sorted(b.in_json + b.as_params, key=lambda x: x[0])]
    assert flat == rows  # every row once, in order
    for b in batches:
        assert 0 < len(b) <= rowset.MAX_ROWS
        assert sorted(n for n, _ in b.in_json + b.as_params) == list(range(len(b)))
        assert len(rowset.params(b, COLS)) <= rowset.MAX_PARAMS + 1 < 2100
    assert len(batches) < len(rows) / 100


def test_the_widest_table_s_batch_fits_sql_server_s_parameter_limit() -> None:
    for target in inbox.TARGETS.values():
        columns = target.keys + target.values
        unsafe = [{c: '"' for c in columns} for _ in range(3000)]
        for b in rowset.batches(unsafe, columns):
            assert len(rowset.params(b, columns)) + 1 <= 2100  # + request_id


def test_the_json_document_carries_each_row_with_its_place() -> None:
    from datetime import UTC, datetime

    batch = next(rowset.batches([{"a": "x", "b": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
                                 {"a": "y\n", "b": None}], COLS))
    p = rowset.params(batch, COLS)
    assert json.loads(p["rows"]) == [{"n": 0, "a": "x", "b": "2026-01-02 03:04:05.000000"}]
    assert p["n_0"] == 1 and p["a_0"] == "y\n" and p["b_0"] is None


@pytest.mark.parametrize("in_json, as_params", [(True, 0), (False, 3), (True, 2)])
def test_each_form_parses_as_sql_server_2017(tmp_path: Path, in_json: bool,
                                             as_params: int) -> None:
    target = inbox.TARGETS["chat_message"]
    for build in (inbox.insert_statement, inbox.update_statement):
        sql = str(build(target, True, in_json, as_params).compile(dialect=mssql.dialect()))
        assert parse_errors(as_tsql(sql) + ";", tmp_path) == "", sql[:200]

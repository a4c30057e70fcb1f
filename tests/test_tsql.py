"""The T-SQL surface, checked with no server: Microsoft's own grammar (ScriptDom, through the
``maxdop`` package) parses every script and every statement the worker sends to SQL Server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.dialects import mssql

from sqlbridge import inbox, install, queue, registry, tsql
from sqlbridge.schema import metadata

SQL = tsql.SQL_DIR
FILES = sorted(p for p in SQL.rglob("*.sql"))
# The one place allowed to hold what Babelfish lacks.
ENGINE_SPECIFIC = SQL / "engine" / "sqlserver.sql"
BABELFISH_LACKS = {
    "CREATE OR ALTER": r"\bCREATE\s+OR\s+ALTER\b",
    "MERGE": r"^\s*MERGE\b|;\s*MERGE\b",
    "ALTER VIEW": r"\bALTER\s+VIEW\b",
    "WAITFOR": r"\bWAITFOR\b",
    "OUTPUT deleted.": r"\bOUTPUT\s+deleted\.",
    "updatable CTE": r"\bWITH\s+\w+\s+AS\s*\((?:(?!\)\s*SELECT).)*?\)\s*(UPDATE|DELETE)\b",
}


def maxdop() -> str:
    found = Path(sys.executable).with_name("maxdop")
    path = str(found) if found.exists() else shutil.which("maxdop")
    if path is None:
        pytest.fail("maxdop (the T-SQL parser) is not installed: run scripts/test, which "
                    "installs the test extras")
    return path


def parse_errors(sql: str, tmp_path: Path, name: str = "check.sql") -> str:
    """'' when the text parses as SQL Server 2017 T-SQL, else the parser's message."""
    f = tmp_path / name
    f.write_text(sql, encoding="utf-8")
    done = subprocess.run([maxdop(), "--parser-version", "2017", str(f)],
                          capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()


def test_the_committed_scripts_are_what_the_generator_writes() -> None:
    for rel, text in tsql.scripts().items():
        committed = (SQL / rel).read_text(encoding="utf-8")
        assert committed == text, f"sql/{rel} is stale: run python -m sqlbridge.tsql"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SQL)) for p in FILES])
def test_every_script_parses_as_sql_server_2017(path: Path) -> None:
    done = subprocess.run([maxdop(), "--parser-version", "2017", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("babelfish", [False, True])
def test_the_whole_install_script_for_a_dba_parses(tmp_path: Path, babelfish: bool) -> None:
    assert parse_errors(install.install_script(babelfish=babelfish), tmp_path) == ""


def test_the_parser_really_catches_a_broken_script(tmp_path: Path) -> None:
    broken = tsql.procedures_script().replace("SET XACT_ABORT ON;", "SET XACT_ABORT ON", 1)
    broken = broken.replace("THROW 51001, @msg, 1;", "THROW 51001 @msg, 1;", 1)
    assert "Incorrect syntax" in parse_errors(broken, tmp_path)


def test_nothing_babelfish_lacks_appears_outside_the_engine_script() -> None:
    for path in FILES:
        if path == ENGINE_SPECIFIC:
            continue
        code = "\n".join(line.split("--", 1)[0] for line in
                         path.read_text(encoding="utf-8").splitlines())
        for what, pattern in BABELFISH_LACKS.items():
            assert not re.search(pattern, code, re.IGNORECASE | re.DOTALL), \
                f"{path.name} uses {what}, which Babelfish lacks"
    assert re.search(BABELFISH_LACKS["WAITFOR"], ENGINE_SPECIFIC.read_text())


def _tables_in_script() -> dict[str, list[tuple[str, str, bool]]]:
    text = (SQL / "001_schema.sql").read_text(encoding="utf-8")
    tables = {}
    for name, body in re.findall(r"CREATE TABLE sqlbridge\.(\w+) \((.*?)\n\);", text, re.S):
        cols = []
        for line in body.strip().splitlines():
            m = re.match(r"\s*(\w+) (.+?) (NOT NULL|NULL)\b", line)
            if m and not line.strip().startswith(("PRIMARY", "CONSTRAINT")):
                cols.append((m.group(1), m.group(2).replace(" IDENTITY", ""),
                             m.group(3) == "NULL"))
        tables[name] = cols
    return tables


def test_the_table_scripts_match_the_metadata_column_for_column() -> None:
    dialect = mssql.dialect()
    in_script = _tables_in_script()
    assert set(in_script) == {t.name for t in metadata.sorted_tables}
    for table in metadata.sorted_tables:
        expected = [(c.name, c.type.compile(dialect=dialect), bool(c.nullable))
                    for c in table.columns]
        assert in_script[table.name] == expected, f"sqlbridge.{table.name} differs"
    text = (SQL / "001_schema.sql").read_text(encoding="utf-8")
    for table in metadata.sorted_tables:
        for constraint in table.constraints:
            if constraint.name:
                assert f"CONSTRAINT {constraint.name} " in text
        for index in table.indexes:
            assert f"CREATE {'UNIQUE ' if index.unique else ''}INDEX {index.name} " in text
    assert "WHERE status = N'queued'" in text  # the claim's filtered index


def test_each_documented_endpoint_has_its_procedure_with_the_vendor_parameter_names() -> None:
    text = (SQL / "100_procedures.sql").read_text(encoding="utf-8")
    for op in registry.OPERATIONS.values():
        m = re.search(rf"ALTER PROCEDURE sqlbridge\.{op.procedure}\n(.*?)\nAS\n", text, re.S)
        assert m, f"no procedure for {op.name}"
        declared = re.findall(r"^\s+(@\w+) ", m.group(1), re.M)
        assert declared == [p.sql_name for p in op.params] + [n for n, _ in tsql.COMMON_PARAMS]
    assert "@platformid" in text and "@userDocValue" in text and "@pendentes" in text


def test_procedures_refuse_with_the_registry_s_numbers_and_sentences() -> None:
    text = (SQL / "100_procedures.sql").read_text(encoding="utf-8")
    send = registry.OPERATIONS["chat.sendmessage"]
    missing = registry.message("MISSING_COMPULSORY_PARAM", operation=send.name,
                               param="message").replace("'", "''")
    number = registry.ERROR_NUMBERS["MISSING_COMPULSORY_PARAM"]
    assert f"SET @msg = N'{missing}'; THROW {number}, @msg, 1;" in text
    for code in ("INCORRECT_FILETYPE", "INCORRECT_FILEURL", "INCORRECT_THUMBURL",
                 "INVALID_DATE", "MISSING_USER_IDENTITY", "PARAM_TOO_LONG",
                 "INVALID_PARAM_VALUE", "WAIT_IN_TRANSACTION", "INVALID_STATE",
                 "REQUEST_NOT_FOUND", "UNKNOWN_OPERATION", "INVALID_PARAMS_JSON"):
        assert f"THROW {registry.ERROR_NUMBERS[code]}," in text, code
    assert "IF @@TRANCOUNT > 0" in text  # wait_for refuses inside a transaction
    for forbidden in ("sp_OA", "xp_cmdshell", "sp_configure", "RECONFIGURE"):
        assert forbidden not in "".join(p.read_text() for p in FILES)


def _parsable(sql: str) -> str:
    """SQLAlchemy's bind markers as T-SQL variables, so the parser sees real statements."""
    sql = re.sub(r"__\[POSTCOMPILE_(\w+)\]", r"(@\1)", sql)
    return re.sub(r"(?<![:\w]):(\w+)", r"@\1", sql)


def test_the_statements_the_worker_sends_to_sql_server_parse(tmp_path: Path) -> None:
    statements = {**queue.mssql_statements(), **inbox.mssql_statements()}
    try:
        from sqlbridge import messages
        statements.update(messages.mssql_statements())
    except ImportError:
        pass
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in statements["claim"]
    assert "OUTPUT inserted." in statements["claim"]
    script = ";\nGO\n".join(_parsable(s) for s in statements.values()) + ";\n"
    assert parse_errors(script, tmp_path) == ""


def test_go_splits_batches_like_sqlcmd() -> None:
    script = "SELECT 1;\nGO\n-- only a comment\nGO\nSELECT 2;\n  go  \n"
    assert install.batches(script) == ["SELECT 1;", "SELECT 2;"]


def test_install_on_sqlite_is_safe_to_repeat(tmp_path: Path) -> None:
    from sqlbridge.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    install.install(engine)
    install.install(engine)
    engine.dispose()

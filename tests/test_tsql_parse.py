"""The T-SQL surface, checked with no server: Microsoft's own grammar (ScriptDom, through the
``maxdop`` package) parses every script and every statement the worker sends to SQL Server, and
the scripts are compared with the metadata and the registry they are generated from."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mssql

from sqlbridge import install, registry, tsql
from sqlbridge.errors import ValidationError
from sqlbridge.schema import INBOX_TABLES, metadata

SQL = tsql.SQL_DIR
FILES = sorted(SQL.rglob("*.sql"))
# The one place allowed to hold what Babelfish lacks.
ENGINE_SPECIFIC = SQL / "engine" / "sqlserver.sql"
BABELFISH_LACKS = {
    "CREATE OR ALTER": r"\bCREATE\s+OR\s+ALTER\b",
    "MERGE": r"(?:^|;)\s*MERGE\b",
    "ALTER VIEW": r"\bALTER\s+VIEW\b",
    "WAITFOR": r"\bWAITFOR\b",
    "OUTPUT deleted.": r"\bOUTPUT\s+deleted\.",
    "updatable CTE": r"\bWITH\s+\w+(?:\s*\([^)]*\))?\s+AS\s*\((?:(?!\bGO\b).)*?\)\s*"
                     r"(?:UPDATE|DELETE|INSERT)\b",
}


def maxdop() -> str:
    found = Path(sys.executable).with_name("maxdop")
    path = str(found) if found.exists() else shutil.which("maxdop")
    if path is None:
        pytest.fail("maxdop (the T-SQL parser) is not installed: run scripts/test, which "
                    "installs the test extras into .venv")
    return path


def parse_errors(sql: str, tmp_path: Path, name: str = "check.sql") -> str:
    """'' when the text parses as SQL Server 2017 T-SQL, else the parser's line:col message."""
    f = tmp_path / name
    f.write_text(sql, encoding="utf-8")
    done = subprocess.run([maxdop(), "--parser-version", "2017", str(f)],
                          capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip() or "failed"


def code_only(text: str) -> str:
    """The script without -- comments (the lint and the forbidden-words check read code)."""
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def babelfish_problems(text: str) -> list[str]:
    code = code_only(text)
    return [what for what, pattern in BABELFISH_LACKS.items()
            if re.search(pattern, code, re.IGNORECASE | re.DOTALL | re.MULTILINE)]


def procedure_body(name: str) -> str:
    text = (SQL / "110_procedures.sql").read_text(encoding="utf-8")
    m = re.search(rf"^(?:ALTER|CREATE) PROCEDURE sqlbridge\.{name}\n(.*?)\nEND;\nGO$", text,
                  re.S | re.M)
    assert m, f"sqlbridge.{name} is not in 110_procedures.sql"
    return m.group(1)


# -- generated, and parsed ----------------------------------------------------------------------

def test_the_committed_scripts_are_what_the_generator_writes() -> None:
    generated = tsql.scripts()
    for rel, text in generated.items():
        path = SQL / rel
        assert path.is_file(), f"sql/{rel} is missing: run python -m sqlbridge.tsql to regenerate"
        assert path.read_text(encoding="utf-8") == text, \
            f"sql/{rel} differs from a fresh generation: run python -m sqlbridge.tsql to regenerate"
    extra = {p.relative_to(SQL).as_posix() for p in FILES} - set(generated)
    assert not extra, f"sql/ holds files the generator does not write: {sorted(extra)}"


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(SQL).as_posix() for p in FILES])
def test_every_script_parses_as_sql_server_2017(path: Path) -> None:
    done = subprocess.run([maxdop(), "--parser-version", "2017", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{path.name}: {done.stderr or done.stdout}"


@pytest.mark.parametrize("babelfish", [False, True], ids=["sqlserver", "babelfish"])
def test_the_whole_install_script_for_a_dba_parses(tmp_path: Path, babelfish: bool) -> None:
    assert parse_errors(install.install_script(babelfish=babelfish), tmp_path) == ""


def test_the_parser_really_catches_a_broken_script(tmp_path: Path) -> None:
    broken = tsql.procedures_script().replace("THROW 51001, @msg, 1;", "THROW 51001 @msg, 1;", 1)
    assert broken != tsql.procedures_script()
    error = parse_errors(broken, tmp_path)
    assert re.search(r"\d+:\d+", error) and "Incorrect syntax" in error


def test_worker_statements_sent_to_sql_server_parse(tmp_path: Path) -> None:
    try:
        from sqlbridge.queue import mssql_statements as queue_statements
    except ImportError:
        pytest.skip("queue.mssql_statements not available yet")
    try:
        from sqlbridge.inbox import mssql_statements as inbox_statements
    except ImportError:
        pytest.skip("inbox.mssql_statements not available yet")
    statements = {**queue_statements(), **inbox_statements()}
    for module in ("messages", "sync", "wakeup", "shared_limits", "gates", "breaker"):
        # Optional: queue and inbox are the modules that must be there.
        with contextlib.suppress(ImportError, AttributeError):
            statements.update(__import__(f"sqlbridge.{module}",
                                         fromlist=["mssql_statements"]).mssql_statements())
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in statements["claim"]
    # The gated claims keep the claim's locking hints (sqlbridge.gates).
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in statements["claim_capped"]
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in statements["claim_probe"]
    assert {"cap_lock", "cap_count", "breaker_record", "breaker_probe"} <= set(statements)
    assert "WAITFOR DELAY" in statements["wakeup_waitfor"]
    assert "OUTPUT inserted." in statements["claim"]
    assert not any(re.search(r"OUTPUT\s+deleted\.", s, re.I) for s in statements.values())
    script = "".join(f"-- {name}\n{as_tsql(s)};\nGO\n" for name, s in statements.items())
    assert parse_errors(script, tmp_path) == ""


def as_tsql(sql: str) -> str:
    """SQLAlchemy's bind markers as T-SQL variables (maxdop rejects pyodbc's bare ``?``)."""
    sql = re.sub(r"__\[POSTCOMPILE_(\w+)\]", r"(@\1)", sql)
    counter = iter(range(1, 10_000))
    sql = re.sub(r"(?<![\w'])\?", lambda _: f"@p{next(counter)}", sql)
    return re.sub(r"(?<![:\w]):(\w+)", r"@\1", sql)


def test_bind_markers_become_variables() -> None:
    assert as_tsql("UPDATE t SET a = ? WHERE b = :b_id AND c IN (__[POSTCOMPILE_ids])") == \
        "UPDATE t SET a = @p1 WHERE b = @b_id AND c IN ((@ids))"


# -- Babelfish and safety ---------------------------------------------------------------------

def test_nothing_babelfish_lacks_appears_outside_the_engine_script() -> None:
    for path in FILES:
        if path != ENGINE_SPECIFIC:
            assert babelfish_problems(path.read_text(encoding="utf-8")) == [], path.name
    # The engine script holds the one thing, and nothing else Babelfish lacks.
    assert babelfish_problems(ENGINE_SPECIFIC.read_text(encoding="utf-8")) == ["WAITFOR"]


@pytest.mark.parametrize("sample, what", [
    ("CREATE OR ALTER PROCEDURE sqlbridge.x AS RETURN 0;", "CREATE OR ALTER"),
    ("MERGE sqlbridge.t AS t USING s ON 1 = 1 WHEN MATCHED THEN DELETE;", "MERGE"),
    ("ALTER VIEW sqlbridge.v AS SELECT 1 AS a;", "ALTER VIEW"),
    ("WAITFOR DELAY '00:00:01';", "WAITFOR"),
    ("DELETE FROM sqlbridge.t OUTPUT deleted.id WHERE 1 = 0;", "OUTPUT deleted."),
    ("WITH c AS (SELECT TOP (1) * FROM sqlbridge.t)\nUPDATE c SET a = 1;", "updatable CTE"),
])
def test_the_babelfish_lint_catches_each_construct(sample: str, what: str) -> None:
    assert babelfish_problems(sample) == [what]
    assert babelfish_problems("-- " + sample) == []  # comments are not code


def test_no_ole_automation_shell_or_server_level_anything() -> None:
    code = "\n".join(code_only(p.read_text(encoding="utf-8")) for p in FILES)
    for forbidden in ("sp_OA", "xp_cmdshell", "sp_configure", "RECONFIGURE", "CREATE LOGIN",
                      "ALTER LOGIN", "ON SERVER", "CONTROL SERVER", "sysadmin",
                      "ALTER ANY LOGIN", "EXTERNAL ACCESS", "UNSAFE"):
        assert forbidden.lower() not in code.lower(), forbidden


def test_every_procedure_sets_xact_abort_and_nocount_and_is_stub_then_alter() -> None:
    """Stub then ALTER (grants survive), except where a parameter has a schema-qualified type:
    Babelfish's ALTER PROCEDURE cannot resolve one, so that procedure is dropped and created."""
    recreated_somewhere = False
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        altered = re.findall(r"^ALTER PROCEDURE sqlbridge\.(\w+)", text, re.M)
        stubs = re.findall(r"EXEC \(N'CREATE PROCEDURE sqlbridge\.(\w+) AS RETURN 0'\)", text)
        assert altered == stubs, path.name
        created = re.findall(r"^CREATE PROCEDURE sqlbridge\.(\w+)", text, re.M)
        dropped = re.findall(r"^IF OBJECT_ID\(N'sqlbridge\.(\w+)', N'P'\) IS NOT NULL\n"
                             r"    DROP PROCEDURE sqlbridge\.\1;\nGO\nCREATE PROCEDURE", text, re.M)
        assert created == dropped, path.name
        recreated_somewhere |= bool(created)
        for name in altered + created:
            header, body = re.split(rf"^(?:ALTER|CREATE) PROCEDURE sqlbridge\.{name}\n", text,
                                    flags=re.M)[1].split("\nGO\n", 1)[0].split("\nAS\n", 1)
            qualified = [line for line in header.splitlines()
                         if tsql.has_qualified_type(line.split(None, 1)[1])]
            assert bool(qualified) == (name in created), (name, qualified)
            assert "SET NOCOUNT ON;" in body and "SET XACT_ABORT ON;" in body, name
    assert recreated_somewhere  # invoke_external_rest_endpoint's @response


def test_views_are_dropped_created_and_granted_again() -> None:
    text = (SQL / "120_views.sql").read_text(encoding="utf-8")
    for view in tsql.VIEWS:
        assert (f"IF OBJECT_ID(N'sqlbridge.{view}', N'V') IS NOT NULL DROP VIEW "
                f"sqlbridge.{view};\nGO\nCREATE VIEW sqlbridge.{view} AS") in text
        assert f"GRANT SELECT ON sqlbridge.{view} TO sqlbridge_caller;" in text


# -- parity with the metadata -----------------------------------------------------------------

def tables_in_script(text: str) -> dict[str, dict[str, Any]]:
    """Each CREATE TABLE of the schema script, read back: columns, keys, constraints."""
    tables: dict[str, dict[str, Any]] = {}
    for name, body in re.findall(r"CREATE TABLE sqlbridge\.(\w+) \(\n(.*?)\n\);", text, re.S):
        info: dict[str, Any] = {"columns": [], "pk": None, "unique": set(), "checks": set()}
        for line in re.split(r",\n(?=    \S)", body):
            line = " ".join(line.split())
            if m := re.fullmatch(r"PRIMARY KEY \((.*)\)", line):
                info["pk"] = tuple(c.strip() for c in m.group(1).split(","))
            elif m := re.fullmatch(r"CONSTRAINT (\w+) UNIQUE \((.*)\)", line):
                info["unique"].add((m.group(1), tuple(c.strip() for c in m.group(2).split(","))))
            elif m := re.fullmatch(r"CONSTRAINT (\w+) CHECK .*", line):
                info["checks"].add(m.group(1))
            elif m := re.fullmatch(r"(\w+) (.+?) (NOT NULL|NULL)( IDENTITY)?( DEFAULT .+)?", line):
                info["columns"].append((m.group(1), m.group(2), m.group(3) == "NULL",
                                        bool(m.group(4)), bool(m.group(5))))
            else:
                raise AssertionError(f"unreadable line in sqlbridge.{name}: {line}")
        tables[name] = info
    return tables


def indexes_in_script(text: str) -> set[tuple[str, str, bool, tuple[str, ...], str]]:
    found = re.findall(r"CREATE (UNIQUE )?INDEX (\w+) ON sqlbridge\.(\w+) \(([^)]*)\)"
                       r"(?: WHERE (.*?))?;", text)
    return {(name, table, bool(unique),
             tuple(c.strip().removesuffix(" DESC") for c in cols.split(",")), where)
            for unique, name, table, cols, where in found}


def table_scripts_text() -> str:
    """001_schema.sql and every later versioned table script, as one text."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(SQL.glob("0*.sql")))


def test_the_table_script_matches_the_metadata_column_for_column() -> None:
    dialect = mssql.dialect()
    text = table_scripts_text()
    in_script = tables_in_script(text)
    assert set(in_script) == {t.name for t in metadata.sorted_tables}
    for table in metadata.sorted_tables:
        got = in_script[table.name]
        # A column changed after the release keeps its released form in the table script
        # (a later script changes it): NOT NULL with a DEFAULT.
        expected = [(c.name, c.type.compile(dialect=dialect),
                     bool(c.nullable) and not tsql.released_column_ddl(c),
                     c is table.autoincrement_column,
                     c.server_default is not None or bool(tsql.released_column_ddl(c)))
                    for c in table.columns]
        assert got["columns"] == expected, f"sqlbridge.{table.name} columns differ"
        assert got["pk"] == tuple(c.name for c in table.primary_key.columns), table.name
        uniques = {(c.name, tuple(col.name for col in c.columns)) for c in table.constraints
                   if c.__class__.__name__ == "UniqueConstraint"}
        assert got["unique"] == uniques, table.name
        checks = {c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint"}
        assert got["checks"] == checks, table.name
        for index in table.indexes:
            where = index.dialect_options["mssql"]["where"]
            assert ((str(index.name), table.name, bool(index.unique),
                    tuple(c.name for c in index.columns),
                    _unqualified(where, dialect) if where is not None else "")
                    in indexes_in_script(text)), index.name
    assert len(indexes_in_script(text)) == sum(len(t.indexes) for t in metadata.sorted_tables)
    assert "WHERE status = N'queued'" in text  # the claim's filtered index


def _unqualified(clause: Any, dialect: Any) -> str:
    """An index's WHERE as CREATE INDEX renders it: literal values, bare column names."""
    text = str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return re.sub(r"\bsqlbridge\.\w+\.", "", text)


def test_a_hand_edit_of_the_table_script_is_caught() -> None:
    text = (SQL / "001_schema.sql").read_text(encoding="utf-8")
    edited = text.replace("request_key NVARCHAR(200) NULL", "request_key NVARCHAR(100) NULL")
    assert edited != text
    outbox = metadata.tables["sqlbridge.outbox"]
    expected = [c.name for c in outbox.columns]
    got = tables_in_script(edited)["outbox"]["columns"]
    assert [c[0] for c in got] == expected
    assert ("request_key", "NVARCHAR(200)", True, False, False) not in got


def test_every_table_and_index_is_guarded_so_the_script_can_run_again() -> None:
    text = table_scripts_text()
    for table in metadata.sorted_tables:
        assert (f"IF OBJECT_ID(N'sqlbridge.{table.name}', N'U') IS NULL\nBEGIN\n"
                f"CREATE TABLE sqlbridge.{table.name} (") in text
        for index in table.indexes:
            assert f"WHERE name = N'{index.name}' AND object_id = OBJECT_ID(" in text
    assert "IF SCHEMA_ID(N'sqlbridge') IS NULL EXEC (N'CREATE SCHEMA sqlbridge');" in text


# -- parity with the registry ------------------------------------------------------------------

def declared_params(proc: str) -> list[tuple[str, str]]:
    header = procedure_body(proc).split("\nAS\nBEGIN", 1)[0]
    return re.findall(r"^    (@\w+) ([A-Za-z0-9_.()]+)", header, re.M)


@pytest.mark.parametrize("op", registry.OPERATIONS.values(), ids=list(registry.OPERATIONS))
def test_each_endpoint_has_its_procedure_with_the_registry_s_parameters(
        op: registry.Operation) -> None:
    declared = declared_params(op.procedure)
    # invoke_external_rest_endpoint also takes the native procedure's @response and @wait_ms.
    extra = tsql.INVOKE_EXTRA_PARAMS if op.provider == "http" else ()
    assert [n for n, _ in declared] == ([p.sql_name for p in op.params]
                                        + [n for n, _ in tsql.COMMON_PARAMS]
                                        + [n for n, _ in extra])
    for p in op.params:
        sql_type = dict(declared)[p.sql_name]
        # What the parameter must be, said here independently of the generator: whole numbers
        # are INT, a length-limited text is NVARCHAR(4000) (the limit itself is checked by the
        # procedure), and JSON or free text is NVARCHAR(MAX) so nothing is ever cut.
        if p.type == "int":
            expected = "INT"
        elif p.max_length and p.type != "json":
            expected = "NVARCHAR(4000)"
        else:
            expected = "NVARCHAR(MAX)"
        assert sql_type == expected, p.name
    body = procedure_body(op.procedure)
    assert f"EXEC sqlbridge.enqueue @operation = N'{op.name}'," in body
    assert f"GRANT EXECUTE ON sqlbridge.{op.procedure} TO sqlbridge_caller;" in \
        (SQL / "110_procedures.sql").read_text(encoding="utf-8")


def test_the_documented_endpoints_and_seed_parameter_names_are_all_there() -> None:
    procs = {op.procedure for op in registry.OPERATIONS.values()}
    assert len([p for p in procs if p.startswith("afilnet_chat_")]) == 6
    assert len([p for p in procs if p.startswith("anna_")]) == 7
    assert "invoke_external_rest_endpoint" in procs
    names = {n for op in registry.OPERATIONS.values() for n, _ in declared_params(op.procedure)}
    for seed in ("@platform", "@platformid", "@destination", "@message", "@type", "@fileurl",
                 "@thumburl", "@userId", "@userName", "@startService", "@userDocType",
                 "@userDocValue", "@departmentAlias", "@channelAlias", "@dataIni", "@dataFim",
                 "@status", "@pendentes", "@url", "@method", "@headers", "@payload", "@timeout",
                 "@account", "@priority", "@request_key", "@correlation", "@not_before",
                 "@request_id"):
        assert seed in names, seed


_VALID: dict[str, Any] = {"platform": "whatsapp", "type": "imagem", "fileurl": "https://x.io/a",
                          "thumburl": "https://x.io/t", "url": "https://api.example.com/x",
                          "method": "get", "dataIni": "31/12/2024", "dataFim": "01/01/2025",
                          "status": "A", "pendentes": "S", "timeout": 5, "headers": {}}


def bad_inputs(op: registry.Operation) -> list[tuple[str, dict[str, Any], str | None]]:
    """(what, params, the bad value as the message shows it) for every rule of ``op``."""
    base = {p.name: _VALID.get(p.name, "v") for p in op.params if p.required}
    if op.needs_user_identity:
        base["userId"] = "1001"
    cases: list[tuple[str, dict[str, Any], str | None]] = []
    for p in op.params:
        if p.required:
            cases.append((f"{p.name} missing", {k: v for k, v in base.items() if k != p.name},
                          None))
        if p.allowed:
            cases.append((f"{p.name} not allowed", {**base, p.name: "zz'z"}, "zz'z"))
        if p.max_length and not p.allowed:
            long = ("https://x.io/" if p.type == "url" else "") + "y" * (p.max_length + 1)
            cases.append((f"{p.name} too long", {**base, p.name: long}, None))
        if p.type == "url":
            cases.append((f"{p.name} not a URL", {**base, p.name: "ftp://x.io/a"}, "ftp://x.io/a"))
            cases.append((f"{p.name} no host", {**base, p.name: "https:///a"}, "https:///a"))
        if p.type == "date":
            cases.append((f"{p.name} ISO date", {**base, p.name: "2024-12-31"}, "2024-12-31"))
            cases.append((f"{p.name} no such day", {**base, p.name: "31/02/2024"}, "31/02/2024"))
        if p.type == "int" and p.max_value is not None:
            cases.append((f"{p.name} out of range", {**base, p.name: p.max_value + 1}, None))
    if op.needs_user_identity:
        cases.append(("no user identity", {k: v for k, v in base.items() if k != "userId"},
                      None))
        cases.append(("half a document", {"userDocType": "cpf"}, None))
    return cases


def throws(body: str) -> list[tuple[int, str]]:
    return [(int(n), expr) for expr, n in
            re.findall(r"SET @msg = (.*?); THROW (\d+), @msg, 1;", body)]


def expected_tsql_pieces(message: str, got: str | None) -> list[str]:
    """The N'…' literals a procedure must CONCAT to build ``message`` around ``got``."""
    if got is None:
        return [tsql.lit(message)]
    before, after = message.split(got, 1)
    return [tsql.lit(piece) for piece in (before, after) if piece]


CASES = [(op, *case) for op in registry.OPERATIONS.values() for case in bad_inputs(op)]


@pytest.mark.parametrize("op, what, params, got", CASES,
                         ids=[f"{c[0].name}:{c[1]}" for c in CASES])
def test_procedures_refuse_with_the_registry_s_number_and_sentence(
        op: registry.Operation, what: str, params: dict[str, Any], got: str | None) -> None:
    with pytest.raises(ValidationError) as refused:
        registry.validate(op, params)
    code = refused.value.code
    # http.request's url uses the code URL, which has no number of its own: the procedure
    # throws INVALID_PARAM_VALUE's number with the same sentence.
    number = registry.ERROR_NUMBERS.get(code, registry.ERROR_NUMBERS["INVALID_PARAM_VALUE"])
    pieces = expected_tsql_pieces(str(refused.value), got)
    candidates = [expr for n, expr in throws(procedure_body(op.procedure)) if n == number]
    assert any(all(p in expr for p in pieces) for expr in candidates), \
        f"{op.procedure} has no THROW {number} building: {refused.value}"


def test_the_valid_sample_passes_the_registry_so_the_bad_cases_mean_something() -> None:
    for op in registry.OPERATIONS.values():
        base = {p.name: _VALID.get(p.name, "v") for p in op.params if p.required}
        if op.needs_user_identity:
            base["userId"] = "1001"
        registry.validate(op, base)


def test_generic_procedures_refuse_like_the_registry() -> None:
    enqueue = procedure_body("enqueue")
    with pytest.raises(ValidationError) as unknown:
        registry.resolve("no-such-thing")
    pieces = expected_tsql_pieces(str(unknown.value), "no-such-thing")
    assert any(n == registry.ERROR_NUMBERS["UNKNOWN_OPERATION"] and all(p in e for p in pieces)
               for n, e in throws(enqueue))
    assert "THROW 51011" in enqueue and "ISJSON(@params) = 0" in enqueue
    call = procedure_body("afilnet_call")
    for key in ("password", "user", "class", "method", "bad-name"):
        with pytest.raises(ValidationError) as refused:
            registry.validate("sms.sendsms", {key: "x"})
        assert refused.value.code == "UNKNOWN_PARAM"
        tail = str(refused.value).split(f"'{key}", 1)[1]
        assert any(n == registry.ERROR_NUMBERS["UNKNOWN_PARAM"] and tsql.lit(tail) in e
                   for n, e in throws(call)), key
    with pytest.raises(ValidationError) as nested:
        registry.validate("sms.sendsms", {"to": ["a"]})
    assert nested.value.code == "INVALID_PARAM_TYPE" and "THROW 51006" in call
    wait = procedure_body("wait_for")
    assert re.search(r"IF @@TRANCOUNT > 0\s+THROW 51022,", wait)
    for proc in ("wait_for", "cancel", "retry"):
        assert "THROW 51020" in procedure_body(proc), proc
    for proc in ("cancel", "retry"):
        assert "THROW 51021" in procedure_body(proc), proc


def test_enqueue_derives_the_provider_from_the_registry() -> None:
    enqueue = procedure_body("enqueue")
    for op in registry.OPERATIONS.values():
        assert f"WHEN N'{op.name}' THEN N'{op.provider}'" in enqueue
    assert "ELSE N'afilnet' END" in enqueue
    assert "WITH (UPDLOCK, HOLDLOCK)" in enqueue and "SET @request_id = NULL;" in enqueue


def test_take_messages_marks_and_returns_in_one_statement() -> None:
    body = procedure_body("take_messages")
    assert re.search(r"UPDATE sqlbridge\.chat_message\s+SET taken_at = SYSUTCDATETIME\(\), "
                     r"taken_by = @consumer\s+OUTPUT inserted\.id", body)
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in body and "sent = 0" in body


# -- roles -------------------------------------------------------------------------------------

def grants(babelfish: bool = False) -> dict[str, set[tuple[str, str]]]:
    """What each role is granted by the scripts install applies on one engine. Column lists
    stay on their permission: ('UPDATE (a, b)', 'outbox')."""
    out: dict[str, set[tuple[str, str]]] = {}
    for name in install.ordered_scripts(babelfish):
        text = (SQL / name).read_text(encoding="utf-8")
        for perms, obj, role in re.findall(
                r"^GRANT ((?:[A-Z]+(?: \([a-z_, ]+\))?(?:, )?)+) ON sqlbridge\.(\w+) TO (\w+);",
                text, re.M):
            for perm in re.findall(r"[A-Z]+(?: \([a-z_, ]+\))?", perms):
                out.setdefault(role, set()).add((perm, obj))
    return out


def test_roles_grant_exactly_what_the_contract_says() -> None:
    g = grants()
    assert set(g) == {tsql.CALLER, tsql.OPERATOR, tsql.WORKER}
    endpoints = {op.procedure for op in registry.OPERATIONS.values()}
    caller_procs = endpoints | {"enqueue", "afilnet_call", "wait_for", "cancel", "take_messages",
                                "same_params"}
    readable = set(tsql.VIEWS) | {t.name for t in INBOX_TABLES}
    assert g[tsql.CALLER] == ({("EXECUTE", p) for p in caller_procs}
                              | {("SELECT", o) for o in readable})
    assert g[tsql.OPERATOR] == g[tsql.CALLER] | {("EXECUTE", p) for p in
                                                 ("retry", "schedule_sync", "unschedule_sync",
                                                  "retry_requests", "cancel_requests")} | {
        ("SELECT", "operator_action")}
    worker = g[tsql.WORKER]
    assert {perm for perm, _ in worker} <= {"SELECT", "INSERT", "UPDATE", "DELETE"}
    # Tables, plus reading the queue depth (an autoscaler may log in as the workers do).
    assert {obj for _, obj in worker} <= {t.name for t in metadata.sorted_tables} | {
        tsql.QUEUED_DEPTH_VIEW}
    assert [perm for perm, obj in worker if obj == tsql.QUEUED_DEPTH_VIEW] == ["SELECT"]
    assert ("UPDATE", "outbox") in worker and ("INSERT", "chat_message") in worker
    assert ("UPDATE", "outbox") not in g[tsql.CALLER]
    assert not any(obj == "sleep_ms" for role in g.values() for _, obj in role)
    # Babelfish: the same, plus exactly the table rights its missing ownership chaining needs.
    extra = {role: {(perm, obj) for perms, obj in rights
                    for perm in re.findall(r"[A-Z]+(?: \([a-z_, ]+\))?", perms)}
             for role, rights in tsql.BABELFISH_GRANTS.items()}
    bf = grants(babelfish=True)
    assert bf[tsql.CALLER] == g[tsql.CALLER] | extra[tsql.CALLER]
    assert bf[tsql.OPERATOR] == g[tsql.OPERATOR] | extra[tsql.OPERATOR]
    assert bf[tsql.WORKER] == g[tsql.WORKER]
    # Never DELETE on the outbox, never a whole-row UPDATE of it, for callers on any engine.
    for perm, obj in bf[tsql.CALLER] | bf[tsql.OPERATOR]:
        assert not (obj == "outbox" and perm in ("DELETE", "UPDATE")), (perm, obj)
    roles = (SQL / "100_roles.sql").read_text(encoding="utf-8")
    for role in g:
        assert (f"IF DATABASE_PRINCIPAL_ID(N'{role}') IS NULL EXEC (N'CREATE ROLE {role}');"
                in roles)


def test_the_sql_server_doc_lists_every_error_number_and_seed_replacement() -> None:
    doc = (SQL.parent.parent / "docs" / "sqlserver.md").read_text(encoding="utf-8")
    rows = dict((code, int(number)) for number, code in
                re.findall(r"^\| (\d{5}) \| ([A-Z_]+) \|", doc, re.M))
    assert rows == registry.ERROR_NUMBERS
    for op in registry.operations_for("afilnet"):
        assert f"EXEC sqlbridge.{op.procedure} " in doc, op.name


# -- rules the procedures share with Python, evaluated without a server ---------------------------

def as_sqlite(tsql_condition: str, variable: str) -> str:
    """A T-SQL condition from the generator as SQLite can evaluate it: GLOB for LIKE with
    character classes (case-sensitive, like the binary collation), CAST for TRY_CAST (the
    patterns already admit digits only), length for LEN, :v for the variable."""
    out = tsql_condition.replace(" COLLATE Latin1_General_BIN2", "")
    out = re.sub(r"NOT LIKE N'([^']*)'", lambda m: "NOT GLOB '" + m.group(1).replace("%", "*")
                 + "'", out)
    out = re.sub(r"LIKE N'([^']*)'", lambda m: "GLOB '" + m.group(1).replace("%", "*") + "'",
                 out)
    out = out.replace("TRY_CAST(", "CAST(").replace("LEN(", "length(")
    return out.replace(variable, ":v")


@pytest.fixture(scope="module")
def sqlite_eval() -> Any:
    import sqlite3
    db = sqlite3.connect(":memory:")

    def run(condition: str, value: str | None) -> bool:
        return bool(db.execute(f"SELECT CASE WHEN {condition} THEN 1 ELSE 0 END",
                               {"v": value}).fetchone()[0])
    yield run
    db.close()


def registry_accepts_date(value: str) -> bool:
    try:
        registry.validate("messenger.requests", {"userId": "1", "dataIni": value})
    except ValidationError:
        return False
    return True


def test_dates_are_checked_by_arithmetic_exactly_as_python_does(sqlite_eval: Any) -> None:
    """Every day of 1899-2101 and every impossible one around it: the procedures' dd/MM/yyyy
    check (no conversion style, which Babelfish ignores) agrees with registry.validate."""
    from datetime import date, timedelta
    valid = tsql.date_is_valid("@d")
    assert "TRY_CONVERT" not in valid and "103" not in valid
    cond = as_sqlite(valid, "@d")
    day = date(1899, 1, 1)
    while day.year < 2102:
        text = day.strftime("%d/%m/%Y")
        assert sqlite_eval(cond, text), text
        day += timedelta(days=1)
    for text in ("29/02/1900", "29/02/2100", "31/04/2024", "00/01/2024", "01/00/2024",
                 "01/13/2024", "32/01/2024", "01/01/0000", "1/01/2024", "01/01/24",
                 "01-01-2024", "01/01/2024x", "aa/bb/cccc", "01/01/-024"):
        assert sqlite_eval(cond, text) == registry_accepts_date(text) is False, text
    assert sqlite_eval(cond, "29/02/2000") and sqlite_eval(cond, "29/02/2024")


@given(st.from_regex(r"\A[0-9]{2}/[0-9]{2}/[0-9]{4}\Z") | st.text(max_size=12))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_date_text_is_judged_alike(sqlite_eval: Any, text: str) -> None:
    if "\x00" in text:
        return
    # The registry strips blanks first and the procedure trims them first: compare the same.
    text = text.strip()
    if not text:
        return
    assert sqlite_eval(as_sqlite(tsql.date_is_valid("@d"), "@d"), text) == \
        registry_accepts_date(text), text


def test_an_omitted_optional_date_is_not_refused() -> None:
    """@dataIni / @dataFim left NULL are "not given": the check only runs on a value."""
    for op in registry.OPERATIONS.values():
        for p in op.params:
            if p.type != "date":
                continue
            checks = [line for line in procedure_body(op.procedure).splitlines()
                      if f"THROW {registry.ERROR_NUMBERS['INVALID_DATE']}" in line]
            assert any(line.strip().startswith(f"IF {p.sql_name} IS NOT NULL AND CASE WHEN")
                       for line in checks), (op.name, p.name)
            assert not p.required  # so a NULL really reaches the procedure


def test_operation_names_follow_one_rule_in_python_and_t_sql(sqlite_eval: Any) -> None:
    cond = as_sqlite(tsql.bad_operation_name("@operation"), "@operation")
    for name in ("chat.getchats", "sms.sendsms", "sync.chats", "a_1.b2"):
        assert not sqlite_eval(cond, name), name
    for name in ("Chat.GetChats", "chat.getchats ", " chat.getchats", "chat", "chat.",
                 ".x", "a.b.c", "1a.b", "a.1b", "chát.x", "a-b.c", "", None):
        assert sqlite_eval(cond, name), name
    # Nothing is lower-cased or trimmed on the way in any more (the bulk procedures' filters
    # may match loosely, like Python's operator_actions filter: they store nothing).
    for proc in ("enqueue", "afilnet_call", "schedule_sync"):
        code = code_only(procedure_body(proc))
        assert not re.search(r"LOWER\((LTRIM\(|RTRIM\(|CONCAT\()*@(operation|class|method)\b",
                             code), proc
        assert not re.search(r"@operation( NVARCHAR\(100\))? = (LOWER|LTRIM|RTRIM|CONCAT\(LTRIM)",
                             code), proc
    for proc in ("enqueue", "schedule_sync"):
        assert tsql.bad_operation_name("@operation") in procedure_body(proc), proc


@given(st.text(alphabet=st.sampled_from("abcXYZé_.-1 "), max_size=8))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_operation_name_is_judged_alike(sqlite_eval: Any, name: str) -> None:
    python_refuses = registry._PASSTHROUGH_NAME.match(name) is None
    assert sqlite_eval(as_sqlite(tsql.bad_operation_name("@operation"), "@operation"),
                       name) == python_refuses, name


def test_params_json_is_built_without_string_escape() -> None:
    """Babelfish's STRING_ESCAPE mangles non-ASCII; the procedures use FOR JSON instead."""
    for path in FILES:
        assert "STRING_ESCAPE" not in code_only(path.read_text(encoding="utf-8")).upper(), path
    body = procedure_body("afilnet_chat_sendmessage")
    assert "(SELECT @message AS [message] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER)" in body


def test_no_procedure_has_an_output_parameter_declared_max() -> None:
    """Babelfish cannot bind a (N)VARCHAR(MAX) OUTPUT parameter, whatever the caller declares
    ("... is an output parameter but corresponding argument is not writable"), so a DBA's
    ``DECLARE @r NVARCHAR(MAX); EXEC ..., @response = @r OUTPUT`` failed there. An alias type
    of NVARCHAR(MAX) binds: @response uses one, created before the procedure."""
    headers = re.findall(r"^(?:ALTER|CREATE) PROCEDURE (\S+)\n(.*?)^AS$",
                         (SQL / "110_procedures.sql").read_text(encoding="utf-8"), re.S | re.M)
    assert len(headers) > 20
    for name, params in headers:
        for line in params.splitlines():
            if re.search(r"\bOUTPUT\b", line, re.I):
                assert not re.search(r"VARCHAR\s*\(\s*MAX\s*\)", line, re.I), (name, line)
    text = (SQL / "110_procedures.sql").read_text(encoding="utf-8")
    assert f"@response {tsql.RESPONSE_TYPE} = NULL OUTPUT" in \
        procedure_body("invoke_external_rest_endpoint")
    created = text.index(f"CREATE TYPE {tsql.RESPONSE_TYPE} FROM NVARCHAR(MAX);")
    assert created < text.index("CREATE PROCEDURE sqlbridge.invoke_external_rest_endpoint")


def test_max_attempts_is_0_unless_given_on_every_entry_point() -> None:
    """0 means "the worker's setting": the column's default, what the procedures store for
    NULL, and what Python leaves to the default."""
    from sqlbridge.schema import outbox
    column = outbox.c.max_attempts
    assert not column.nullable and column.server_default.arg.text == "0"
    enqueue = procedure_body("enqueue")
    assert "COALESCE(@max_attempts, 0)" in enqueue and "COALESCE(@max_attempts, 5)" not in enqueue
    # 001 keeps its released DDL; 005 changes the default on every engine.
    assert "max_attempts INTEGER NOT NULL DEFAULT 5," in \
        (SQL / "001_schema.sql").read_text(encoding="utf-8")
    later = (SQL / tsql.MAX_ATTEMPTS_SCRIPT).read_text(encoding="utf-8")
    assert "DEFAULT 0 FOR max_attempts" in later and install.is_versioned(tsql.MAX_ATTEMPTS_SCRIPT)


def test_install_leaves_no_session_setting_behind() -> None:
    """Outside procedure bodies (where SET lasts only for the call), no batch install runs
    changes the session: a pooled connection must not come back with NOCOUNT ON."""
    for babelfish in (False, True):
        for name in install.ordered_scripts(babelfish):
            for batch in install.batches(install.read(name)):
                # 001 was released with a SET NOCOUNT ON batch: it cannot change, and install
                # discards the connection it ran on (install.install).
                if re.match(r"(?:ALTER|CREATE) PROCEDURE", batch) or (
                        name == "001_schema.sql" and code_only(batch).strip() == "SET NOCOUNT ON;"):
                    continue
                assert not re.search(r"^\s*SET\s+(?!@)", code_only(batch), re.M | re.I), \
                    (name, batch[:80])


def test_time_offsets_of_years_compile_to_seconds(tmp_path: Path) -> None:
    """DATEADD(millisecond, INT) overflows past 24.8 days (purge --older-than 30d)."""
    from sqlalchemy import select

    from sqlbridge.sqlfuncs import utcnow
    for seconds in (0.25, -30 * 86400.0, 5 * 365 * 86400.0, -0.5):
        sql = str(select(utcnow(seconds)).compile(dialect=mssql.dialect(),
                                                  compile_kwargs={"literal_binds": True}))
        assert "DATEADD(second, CAST(FLOOR(" in sql and "* 1000 AS INT), SYSUTCDATETIME())" \
            not in sql
        assert parse_errors(sql + ";", tmp_path) == ""


def test_the_readme_and_the_doc_list_every_babelfish_difference() -> None:
    root = SQL.parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("**Babelfish for PostgreSQL.**", 1)[1].split("**Checked here", 1)[0]
    doc = (root / "docs" / "sqlserver.md").read_text(encoding="utf-8")
    doc = doc.split("## Babelfish for PostgreSQL", 1)[1].split("\n## ", 1)[0]
    for difference in ("CREATE OR ALTER", "WAITFOR", "READPAST", "STRING_ESCAPE", "103",
                       "ownership chaining", "WITHOUT LOGIN", "U+0000", "ORDER BY", "3903",
                       "NVARCHAR(MAX) OUTPUT", "ALTER PROCEDURE", "OPENJSON",
                       "UPDLOCK` on a `SELECT"):
        assert difference in section, difference
        assert difference in doc, difference

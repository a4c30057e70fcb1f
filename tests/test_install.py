"""The installer without a server: script order, GO splitting, checksums, the versioned /
repeatable rule, the DBA's script, and the SQLite path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from sqlbridge import install, tsql
from sqlbridge.cli import main
from sqlbridge.db import make_engine
from sqlbridge.errors import ConfigError
from sqlbridge.schema import schema_version


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(tsql.SQL_DIR, target)
    return target


def applied_all(directory: Path, babelfish: bool = False) -> dict[str, str]:
    return {name: install.checksum(install.read(name, directory))
            for name in install.ordered_scripts(babelfish, directory)}


def test_go_splits_batches_like_sqlcmd() -> None:
    script = ("SELECT 1;\nGO\n-- only a comment\nGO\nSELECT N'GO';\n  go  \n"
              "SELECT 3; -- GO in a comment\nGO;\n")
    assert install.batches(script) == ["SELECT 1;", "SELECT N'GO';",
                                       "SELECT 3; -- GO in a comment"]


def test_scripts_run_versioned_then_engine_then_repeatable() -> None:
    assert install.ordered_scripts() == ["001_schema.sql", "002_operator_action.sql",
                                         "003_backlog_indexes.sql", "004_shared_limits.sql",
                                         "005_max_attempts_default.sql",
                                         "006_claim_gates.sql",
                                         "engine/sqlserver.sql", "100_roles.sql",
                                         "110_procedures.sql", "120_views.sql"]
    assert install.ordered_scripts(babelfish=True)[6] == "engine/babelfish.sql"
    assert install.is_versioned("001_schema.sql") and install.is_versioned("099_x.sql")
    assert not install.is_versioned("110_procedures.sql")
    assert not install.is_versioned("engine/sqlserver.sql")


def test_a_new_numbered_script_is_picked_up_in_number_order(sql_copy: Path) -> None:
    (sql_copy / "099_more.sql").write_text("SELECT 1;\n", encoding="utf-8")
    ordered = install.ordered_scripts(directory=sql_copy)
    assert ordered[0] == "001_schema.sql"
    assert ordered[ordered.index("engine/sqlserver.sql") - 1] == "099_more.sql"


def test_a_fresh_database_gets_every_script(sql_copy: Path) -> None:
    assert [n for n, _ in install.plan({}, directory=sql_copy)] == \
        install.ordered_scripts(directory=sql_copy)


def test_an_up_to_date_database_gets_nothing(sql_copy: Path) -> None:
    assert install.plan(applied_all(sql_copy), directory=sql_copy) == []


def test_a_changed_repeatable_script_is_applied_again(sql_copy: Path) -> None:
    applied = applied_all(sql_copy)
    views = sql_copy / "120_views.sql"
    views.write_text(views.read_text(encoding="utf-8") + "\n-- changed\n", encoding="utf-8")
    assert [n for n, _ in install.plan(applied, directory=sql_copy)] == ["120_views.sql"]


def test_switching_engine_applies_the_other_engine_script(sql_copy: Path) -> None:
    applied = applied_all(sql_copy, babelfish=False)
    assert [n for n, _ in install.plan(applied, babelfish=True, directory=sql_copy)] == \
        ["engine/babelfish.sql"]


def test_a_changed_versioned_script_is_refused_by_name_before_anything_runs(
        sql_copy: Path) -> None:
    applied = applied_all(sql_copy)
    schema = sql_copy / "001_schema.sql"
    schema.write_text(schema.read_text(encoding="utf-8").replace("NVARCHAR(200)",
                                                                 "NVARCHAR(300)"),
                      encoding="utf-8")
    views = sql_copy / "120_views.sql"
    views.write_text(views.read_text(encoding="utf-8") + "\n-- changed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"001_schema\.sql was applied with checksum"):
        install.plan(applied, directory=sql_copy)


def test_checksums_ignore_line_endings() -> None:
    assert install.checksum("SELECT 1;\r\nGO\r\n") == install.checksum("SELECT 1;\nGO\n")
    assert install.checksum("SELECT 1;") != install.checksum("SELECT 2;")


def test_a_missing_script_directory_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        install.ordered_scripts(directory=tmp_path / "nowhere")


@pytest.mark.parametrize("babelfish", [False, True])
def test_the_dba_script_holds_every_script_in_order_and_records_it(babelfish: bool) -> None:
    script = install.install_script(babelfish=babelfish)
    positions = [script.index(f"-- ==== {name} ====")
                 for name in install.ordered_scripts(babelfish)]
    assert positions == sorted(positions)
    other = "engine/sqlserver.sql" if babelfish else "engine/babelfish.sql"
    assert f"-- ==== {other} ====" not in script
    for name in install.ordered_scripts(babelfish):
        digest = install.checksum(install.read(name))
        assert f"SELECT N'{name}', N'{digest}' WHERE NOT EXISTS" in script
    # A versioned script's recorded checksum is never overwritten by the DBA's script.
    assert "SET checksum = N'" not in script.split("-- ==== 001_schema.sql ====")[1].split(
        "-- ==== ")[0]


def test_install_print_shows_the_script() -> None:
    result = CliRunner().invoke(main, ["install", "--print"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.strip() == install.install_script().strip()
    babelfish = CliRunner().invoke(main, ["install", "--print", "--babelfish"])
    assert "engine/babelfish.sql" in babelfish.stdout


def test_sqlite_install_creates_the_tables_and_records_one_version_row(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert install.install(engine) == [install.SQLITE_VERSION]
        assert install.install(engine) == []
        with engine.connect() as conn:
            rows = conn.execute(select(schema_version.c.version)).scalars().all()
        assert rows == [install.SQLITE_VERSION]
    finally:
        engine.dispose()


def test_other_databases_are_refused_clearly() -> None:
    engine = make_engine_or_skip("postgresql://u:p@127.0.0.1:1/db")
    with pytest.raises(ConfigError, match="SQLite and SQL Server"):
        install.install(engine)


def make_engine_or_skip(url: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    try:
        return create_engine(url)
    except ImportError:  # no PostgreSQL driver here: build the engine without one
        from sqlalchemy.engine import create_mock_engine

        return create_mock_engine(url, lambda *a, **k: None)


def test_a_rollback_the_server_already_ended_does_not_hide_the_real_error() -> None:
    """Babelfish ends the transaction when a procedure THROWs; the driver's ROLLBACK then fails
    with 3903, which SQLAlchemy would raise instead of the refusal. Only that one is ignored."""
    pyodbc = pytest.importorskip("pyodbc", reason="pyodbc needs unixODBC (apt-get install "
                                 "unixodbc): scripts/test installs it")
    from sqlbridge.db import make_engine

    class Connection:
        def __init__(self, error: str) -> None:
            self.error = error

        def rollback(self) -> None:
            raise pyodbc.ProgrammingError(self.error)

    # No connection is made: the engine only needs its dialect.
    engine = make_engine("mssql+pyodbc://u:p@127.0.0.1:1/db?driver=FreeTDS")
    engine.dialect.do_rollback(Connection(
        "[25000] ROLLBACK can only be used in transaction blocks (3903) (SQLEndTran)"))
    with pytest.raises(pyodbc.ProgrammingError, match="08S01"):
        engine.dialect.do_rollback(Connection("[08S01] communication link failure"))

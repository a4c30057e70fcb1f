"""Shared fixtures: a fresh SQLite database file per test, with the schema installed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete

from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.providers import Providers, build_providers
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import metadata

MSSQL_URL = os.environ.get("SQLBRIDGE_TEST_MSSQL_URL")
NO_MSSQL = "SQLBRIDGE_TEST_MSSQL_URL not set: no SQL Server to test against"
# The queue, worker and CLI suites run on every backend there is: SQLite always, SQL Server
# when SQLBRIDGE_TEST_MSSQL_URL names one (scripts/test-mssql starts one in Docker).
BACKENDS = ["sqlite"] + (["mssql"] if MSSQL_URL else [])

# What an engine cannot do, declared once: tests ask for these names instead of failing
# at random where an engine differs (README, "Babelfish for PostgreSQL").
ENGINE_LIMITS: dict[str, frozenset[str]] = {
    "sqlserver": frozenset(),
    "babelfish": frozenset({
        "babelfish",
        "nul",  # PostgreSQL text cannot hold U+0000
        "readpast",  # READPAST is ignored: claims and take_messages serialise
        "execute_as",  # no EXECUTE AS statement, no CREATE USER ... WITHOUT LOGIN
    }),
}
_KINDS: dict[str, str] = {}


def engine_limits(engine: Engine) -> frozenset[str]:
    """The limits of the SQL Server-family engine behind ``engine`` (asked once per URL)."""
    if engine.dialect.name != "mssql":
        return frozenset()
    key = engine.url.render_as_string(hide_password=False)
    if key not in _KINDS:
        with engine.connect() as conn:
            version = conn.exec_driver_sql(
                "SELECT CAST(SERVERPROPERTY('BabelfishVersion') AS NVARCHAR(100))").scalar()
        _KINDS[key] = "babelfish" if version else "sqlserver"
    return ENGINE_LIMITS[_KINDS[key]]


@pytest.fixture
def mssql_limits() -> frozenset[str]:
    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    try:
        return engine_limits(engine)
    finally:
        engine.dispose()


# Retries in tests wait milliseconds, not the production seconds.
FAST_WORKER = WorkerSettings(concurrency=4, batch=20, poll_interval=0.05, lease_seconds=5,
                             max_attempts=3, backoff_base=0.05, backoff_max=0.2)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sqlbridge.db'}"
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("this test checks SQLite-specific behaviour")
    assert MSSQL_URL
    eng = make_engine(MSSQL_URL)
    install(eng)
    with eng.begin() as conn:  # every test starts from empty tables
        for table in reversed(metadata.sorted_tables):
            if table.name != "schema_version":
                conn.execute(delete(table))
    eng.dispose()
    return MSSQL_URL


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    install(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, worker=FAST_WORKER)


@pytest.fixture
def queue(engine: Engine, settings: Settings) -> Queue:
    return Queue(engine, settings)


def with_accounts(settings: Settings, *accounts: object) -> Settings:
    """Settings whose accounts are the given ones (e.g. a sandbox's)."""
    return dataclasses.replace(settings, accounts={a.name: a for a in accounts})  # type: ignore[attr-defined]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Both fake APIs on 127.0.0.1, fresh state each test."""
    with Sandbox(seed=3) as sb:
        yield sb


@pytest.fixture
def live(settings: Settings, sandbox: Sandbox) -> Settings:
    """Settings whose default account points at the sandbox."""
    return dataclasses.replace(settings, accounts={"default": sandbox.account("default")})


@pytest.fixture
def providers() -> Iterator[Providers]:
    """The worker's provider clients (one pooled session), closed after the test."""
    p = build_providers(pool_size=8)
    yield p
    p.close()


# CI runs the property tests derandomized: the same examples every run, so a red CI is a
# regression, never a new random draw. Locally hypothesis keeps exploring.
if os.environ.get("CI"):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile("ci")

"""Shared fixtures: a fresh SQLite database file per test, with the schema installed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sqlbridge.config import Settings, WorkerSettings
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue

# Retries in tests wait milliseconds, not the production seconds.
FAST_WORKER = WorkerSettings(concurrency=4, batch=20, poll_interval=0.05, lease_seconds=5,
                             max_attempts=3, backoff_base=0.05, backoff_max=0.2)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sqlbridge.db'}"


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

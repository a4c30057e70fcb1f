"""Create or upgrade the schema (``sqlbridge install``).

SQLite: created from the SQLAlchemy metadata. SQL Server: the versioned scripts in ``sql/``
(filled in by the T-SQL work).
"""

from __future__ import annotations

from sqlalchemy import Engine

from .schema import metadata


def install(engine: Engine) -> list[str]:
    """Create whatever is missing; safe to run any number of times. Returns what was applied."""
    if engine.dialect.name == "sqlite":
        metadata.create_all(engine)
        return ["metadata"]
    raise NotImplementedError("SQL Server install comes with the T-SQL scripts")

"""What every command shares: exit codes, the settings/engine context, the ``common`` options
and error handling, and plain-text / JSON output. Its own module so that command modules
(``commands``, ``schedule_cli``) and ``cli`` can all import it without an import cycle."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from . import config as config_mod
from .db import make_engine
from .errors import (
    ConfigError,
    InvalidState,
    RequestNotFound,
    SqlbridgeError,
    ValidationError,
)
from .queue import Queue

EXIT_OK = 0
EXIT_NOT_SUCCEEDED = 1  # --wait: the request finished failed, uncertain or cancelled
EXIT_USAGE = 2  # click's own code for bad options
EXIT_CONFIG = 3
EXIT_INVALID = 4  # parameters refused
EXIT_NOT_FOUND = 5  # no such request, or a transition its status does not allow
EXIT_TIMEOUT = 6  # --wait gave up before the request finished
EXIT_DATABASE = 7  # the database could not be reached
EXIT_CODES = {
    "ok": EXIT_OK, "not succeeded": EXIT_NOT_SUCCEEDED, "usage": EXIT_USAGE,
    "configuration": EXIT_CONFIG, "invalid parameters": EXIT_INVALID,
    "not found / wrong state": EXIT_NOT_FOUND, "wait timed out": EXIT_TIMEOUT,
    "database unreachable": EXIT_DATABASE,
}


class Context:
    """Settings, engine and queue, built on first use so ``--help`` needs no database."""

    def __init__(self, database_url: str | None, config_path: str | None) -> None:
        self.settings = config_mod.load(config_path).with_database_url(database_url)
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(make_engine(self.settings.database_url), self.settings)
        return self._queue

    @property
    def engine(self) -> Any:
        return self.queue.engine


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --database-url/--config and turn sqlbridge errors into one line + exit code."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="TOML settings file (default: ./sqlbridge.toml when present).")
    @click.option("--database-url", envvar="SQLBRIDGE_DATABASE_URL",
                  help="SQLAlchemy URL (default: sqlite:///sqlbridge.db).")
    @functools.wraps(fn)
    def wrapper(*args: Any, database_url: str | None, config_path: str | None,
                **kwargs: Any) -> Any:
        try:
            ctx = Context(database_url, config_path)
            return fn(ctx, *args, **kwargs)
        except ConfigError as exc:
            _fail(exc, EXIT_CONFIG)
        except ValidationError as exc:
            _fail(exc, EXIT_INVALID)
        except (RequestNotFound, InvalidState) as exc:
            _fail(exc, EXIT_NOT_FOUND)
        except SqlbridgeError as exc:
            _fail(exc, EXIT_NOT_SUCCEEDED)
        except OperationalError as exc:
            click.echo(f"error: cannot use the database: {str(exc.orig).splitlines()[0]}",
                       err=True)
            sys.exit(EXIT_DATABASE)

    return wrapper


def _fail(exc: SqlbridgeError, code: int) -> None:
    click.echo(f"error: {exc.code}: {exc}", err=True)
    sys.exit(code)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), ensure_ascii=False, indent=2))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c)))[:60] for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _parse_param(values: tuple[str, ...], json_text: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if json_text:
        try:
            loaded = json.loads(json_text)
        except ValueError as exc:
            raise ValidationError(f"--json is not valid JSON: {exc}",
                                  code="INVALID_PARAMS_JSON") from None
        if not isinstance(loaded, dict):
            raise ValidationError("--json must be a JSON object", code="INVALID_PARAMS_JSON")
        params.update(loaded)
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValidationError(f"--param {item!r} must look like name=value",
                                  code="INVALID_ARGUMENT")
        params[name] = value
    return params

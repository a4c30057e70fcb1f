"""The ``sqlbridge`` command line: thin shells over library calls.

Every command takes ``--database-url`` and ``--config``. Errors become one line on stderr and an
exit code scripts can rely on (``EXIT_CODES``), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
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


@click.group()
@click.version_option(package_name="sqlbridge")
def main() -> None:
    """sqlbridge: SQL Server calls HTTP APIs through an outbox table and a worker."""


@main.command()
@click.option("--print", "print_only", is_flag=True,
              help="Print the SQL Server script for a DBA instead of running anything.")
@click.option("--babelfish", is_flag=True, help="With --print: the Babelfish variant.")
@common
def install(ctx: Context, print_only: bool, babelfish: bool) -> None:
    """Create or upgrade the schema; safe to run again."""
    from . import install as installer

    if print_only:
        click.echo(installer.install_script(babelfish=babelfish))
        return
    applied = installer.install(ctx.engine)
    click.echo("schema up to date" + (f"; applied: {', '.join(applied)}" if applied else ""))


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


@main.command()
@click.argument("operation")
@click.option("--param", "-p", "param", multiple=True, metavar="NAME=VALUE",
              help="A parameter, vendor name (repeat).")
@click.option("--json", "json_text", help="All parameters as one JSON object.")
@click.option("--account", default="default", show_default=True)
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first.")
@click.option("--request-key", help="Idempotency key: the same key returns the same request.")
@click.option("--correlation", help="Free text stored with the request.")
@click.option("--max-attempts", type=click.IntRange(1, 100))
@click.option("--wait", is_flag=True, help="Wait for the request to finish; print it.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds --wait waits.")
@click.option("--as-json", "as_json", is_flag=True, help="With --wait: print JSON.")
@common
def enqueue(ctx: Context, operation: str, param: tuple[str, ...], json_text: str | None,
            account: str, priority: int, request_key: str | None, correlation: str | None,
            max_attempts: int | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Queue OPERATION (e.g. chat.sendmessage); print the request id.

    Exit 0 when queued (or, with --wait, when it succeeded); see README for other codes.
    """
    result = ctx.queue.enqueue(operation, _parse_param(param, json_text), account=account,
                               priority=priority, request_key=request_key,
                               correlation=correlation, max_attempts=max_attempts)
    if not wait:
        click.echo(result.id)
        return
    row = ctx.queue.wait(result.id, timeout)
    _show_row(row, as_json)
    if row["status"] == "succeeded":
        return
    sys.exit(EXIT_TIMEOUT if row["status"] in ("queued", "processing") else EXIT_NOT_SUCCEEDED)


def _show_row(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(row)
        return
    for key, value in row.items():
        if key == "attempt_rows":
            continue
        click.echo(f"{key:>14}: {'' if value is None else value}")
    attempts = row.get("attempt_rows")
    if attempts:
        click.echo("")
        click.echo(_table(attempts, ["attempt", "started_at", "duration_ms", "http_status",
                                     "outcome", "error_code", "worker"]))


@main.command()
@click.argument("request_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@common
def show(ctx: Context, request_id: int, as_json: bool) -> None:
    """One request with its attempts."""
    _show_row(ctx.queue.get(request_id, with_attempts=True), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@common
def status(ctx: Context, as_json: bool) -> None:
    """Counts by status and operation, oldest queued age, recent failures."""
    s = ctx.queue.summary()
    if as_json:
        _print_json(s)
        return
    if not s["by_operation"]:
        click.echo("the outbox is empty")
        return
    click.echo(_table(s["by_operation"], ["operation", "status", "count"]))
    totals = ", ".join(f"{k} {v}" for k, v in sorted(s["by_status"].items()))
    click.echo(f"\ntotal: {totals}")
    age = s["oldest_queued_seconds"]
    click.echo("oldest queued: " + ("none" if age is None else f"{age:.1f}s ago"))
    if s["recent_failures"]:
        click.echo("\nrecent failures:")
        click.echo(_table(s["recent_failures"], ["id", "operation", "status", "error_code",
                                                 "error_message"]))


@main.command()
@click.argument("request_id", type=int)
@common
def retry(ctx: Context, request_id: int) -> None:
    """Queue a failed, uncertain or cancelled request again."""
    ctx.queue.retry(request_id)
    click.echo(f"request {request_id} queued again")


@main.command()
@click.argument("request_id", type=int)
@common
def cancel(ctx: Context, request_id: int) -> None:
    """Cancel a queued request."""
    ctx.queue.cancel(request_id)
    click.echo(f"request {request_id} cancelled")


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds."""
    text = text.strip().lower()
    try:
        if text and text[-1] in _AGE_UNITS:
            return float(text[:-1]) * _AGE_UNITS[text[-1]]
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an age such as 30d, 12h, 90m or 45s") from None


@main.command()
@click.option("--older-than", required=True, help="Age such as 30d, 12h, 90m.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["succeeded", "failed", "cancelled", "uncertain"]),
              help="Statuses to purge (default: succeeded, failed, cancelled).")
@common
def purge(ctx: Context, older_than: str, statuses: tuple[str, ...]) -> None:
    """Delete finished requests older than an age, with their attempt rows."""
    from .queue import PURGEABLE

    n = ctx.queue.purge(parse_age(older_than), statuses or PURGEABLE)
    click.echo(f"purged {n} requests")


@main.command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty.")
@click.option("--concurrency", type=click.IntRange(1, 256))
@click.option("--batch", type=click.IntRange(1, 1000))
@click.option("--poll-interval", type=float, help="Longest sleep when idle, seconds.")
@click.option("--lease", type=float, help="Lease length, seconds.")
@click.option("--no-schedules", is_flag=True, help="Do not run due schedules.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@common
def worker(ctx: Context, once: bool, concurrency: int | None, batch: int | None,
           poll_interval: float | None, lease: float | None, no_schedules: bool,
           log_level: str) -> None:
    """Send queued requests until stopped (SIGTERM/SIGINT stop it cleanly)."""
    from .worker import Worker

    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    w = Worker(ctx.settings, ctx.engine, concurrency=concurrency, batch=batch,
               poll_interval=poll_interval, lease_seconds=lease, schedules=not no_schedules)

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("sqlbridge.worker").info("signal %d: finishing in-flight calls",
                                                   signum)
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stats = w.run(once=once)
    click.echo(f"processed: {stats.succeeded} succeeded, {stats.failed} failed, "
               f"{stats.retried} to retry, {stats.uncertain} uncertain")


# Commands kept in their own modules; they use ``common`` from this one, hence the late import.
from .commands import demo, doctor, sandbox  # noqa: E402
from .schedule_cli import schedule, sync, take  # noqa: E402

for _command in (sandbox, demo, doctor, schedule, sync, take):
    main.add_command(_command)

"""The ``sqlbridge`` command line: thin shells over library calls.

Every command takes ``--database-url`` and ``--config``. Errors become one line on stderr and an
exit code scripts can rely on (``EXIT_CODES``), never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import click

from .cli_support import (  # noqa: F401 - EXIT_* and parse helpers are part of the CLI's API
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Context,
    _parse_param,
    _print_json,
    _table,
    common,
)
from .commands import demo, doctor, sandbox
from .schedule_cli import schedule, sync, take


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
@click.option("--grace", type=click.FloatRange(0, 86400), default=30.0, show_default=True,
              help="Seconds calls in flight get to finish after SIGTERM/SIGINT; then the "
                   "worker exits and leaves their rows to lease recovery.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@common
def worker(ctx: Context, once: bool, concurrency: int | None, batch: int | None,
           poll_interval: float | None, lease: float | None, no_schedules: bool,
           grace: float, log_level: str) -> None:
    """Send queued requests until stopped (SIGTERM/SIGINT stop it cleanly; a second one
    exits at once)."""
    from .worker import Worker

    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    w = Worker(ctx.settings, ctx.engine, concurrency=concurrency, batch=batch,
               poll_interval=poll_interval, lease_seconds=lease, schedules=not no_schedules,
               grace=grace)
    log = logging.getLogger("sqlbridge.worker")

    def _stop(signum: int, _frame: Any) -> None:
        if w.stopping:
            # The second signal: exit now. Rows in flight keep their leases, which expire
            # and are settled by lease recovery.
            log.warning("signal %d again: exiting now", signum)
            os._exit(128 + signum)
        log.info("signal %d: finishing in-flight calls (up to %gs)", signum, grace)
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stats = w.run(once=once)
    click.echo(f"processed: {stats.succeeded} succeeded, {stats.failed} failed, "
               f"{stats.retried} to retry, {stats.uncertain} uncertain"
               + (f", {stats.abandoned} left to lease recovery" if stats.abandoned else ""))
    if stats.abandoned:
        # Abandoned calls still hold pool threads that the interpreter would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


# Commands kept in their own modules (they share cli_support with this one).
for _command in (sandbox, demo, doctor, schedule, sync, take):
    main.add_command(_command)

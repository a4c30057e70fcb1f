"""The ``sqlbridge`` command line: thin shells over library calls.

Every command takes ``--database-url`` and ``--config``. Errors become one line on stderr and an
exit code scripts can rely on (``EXIT_CODES``), never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from . import durations
from .cli_support import (  # noqa: F401 - EXIT_* and parse helpers are part of the CLI's API
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PRIORITY,
    REQUEST_ID,
    Context,
    FiniteFloat,
    OneLineErrors,
    UsageError,
    Whole,
    _parse_param,
    _print_json,
    _table,
    check_account,
    common,
    is_terminal,
)
from .commands import demo, doctor, sandbox
from .dashboard.command import dashboard
from .operator_cli import (
    actions,
    cancel,
    list_command,
    metrics_options,
    retry,
    start_metrics,
    status,
)
from .queue import PURGE_BATCH, PURGE_BATCH_MAX, PURGEABLE
from .schedule_cli import schedule, sync, take


@click.group(cls=OneLineErrors)
@click.version_option(package_name="sqlbridge")
def main() -> None:
    """sqlbridge: SQL Server calls HTTP APIs through an outbox table and a worker."""


@main.command()
@click.option("--print", "print_only", is_flag=True,
              help="Print the SQL Server script for a DBA instead of running anything.")
@click.option("--babelfish", is_flag=True, help="With --print: the Babelfish variant.")
@common(need_schema=False)
def install(ctx: Context, print_only: bool, babelfish: bool) -> None:
    """Create or upgrade the schema; safe to run again."""
    from . import install as installer

    if print_only:
        click.echo(installer.install_script(babelfish=babelfish))
        return
    applied = installer.install(ctx.engine)
    click.echo("schema up to date" + (f"; applied: {', '.join(applied)}" if applied else ""))


@main.command()
@click.argument("operation", required=False)
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Queue every request of a JSON Lines file (one object per line: operation, "
                   "params, and optionally account, priority, request_key, correlation, "
                   "not_before, max_attempts). All lines are checked first; one bad line "
                   "queues nothing.")
@click.option("--param", "-p", "param", multiple=True, metavar="NAME=VALUE",
              help="A parameter, vendor name (repeat).")
@click.option("--json", "json_text", metavar="JSON|@FILE|-",
              help="All parameters as one JSON object; @FILE reads it from a file, - from "
                   "standard input (for long messages: argv holds at most 128 KiB).")
@click.option("--account", default="default", show_default=True)
@click.option("--priority", type=PRIORITY, default=0, show_default=True,
              help="Higher runs first.")
@click.option("--request-key", help="Idempotency key: the same key returns the same request.")
@click.option("--correlation", help="Free text stored with the request.")
@click.option("--max-attempts", type=Whole(1, 100))
@click.option("--wait", is_flag=True, help="Wait for the request to finish; print it.")
@click.option("--timeout", type=FiniteFloat(0, 86400), default=60.0, show_default=True,
              help="Seconds --wait waits.")
@click.option("--as-json", "as_json", is_flag=True, help="With --wait: print JSON.")
@common
def enqueue(ctx: Context, operation: str | None, file: Path | None, param: tuple[str, ...],
            json_text: str | None, account: str, priority: int, request_key: str | None,
            correlation: str | None, max_attempts: int | None, wait: bool, timeout: float,
            as_json: bool) -> None:
    """Queue OPERATION (e.g. chat.sendmessage); print the request id. Or --file FILE.

    Exit 0 when queued (or, with --wait, when it succeeded); see README for other codes.
    """
    if file is not None or operation is None:
        _enqueue_file(ctx, operation, file, bool(param or json_text or wait or request_key
                                                  or correlation or max_attempts))
        return
    params = _parse_param(param, json_text)
    check_account(ctx, account, operation, params)
    result = ctx.queue.enqueue(operation, params, account=account,
                               priority=priority, request_key=request_key,
                               correlation=correlation, max_attempts=max_attempts)
    if not wait:
        click.echo(result.id)
        return
    # The id first, so an interrupted or timed-out wait still says what was queued.
    try:
        click.echo(f"request {result.id} queued; waiting up to {timeout:g}s", err=True)
        row = ctx.queue.wait(result.id, timeout)
    except KeyboardInterrupt:
        click.echo(f"interrupted: request {result.id} stays {_status(ctx, result.id)} "
                   f"(sqlbridge show {result.id})", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _show_row(row, as_json)
    if row["status"] == "succeeded":
        return
    if row["status"] in ("queued", "processing"):
        hint = ": is a worker running?" if row["status"] == "queued" else ""
        click.echo(f"request {result.id} still {row['status']} after {timeout:g}s{hint}",
                   err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(EXIT_NOT_SUCCEEDED)


def _status(ctx: Context, request_id: int) -> str:
    try:
        return str(ctx.queue.get(request_id)["status"])
    except Exception:  # noqa: BLE001 - only a courtesy on the way out
        return "queued"


def _enqueue_file(ctx: Context, operation: str | None, file: Path | None,
                  per_request_options: bool) -> None:
    from .bulk import enqueue_file

    if file is None:
        raise click.UsageError("give an OPERATION to queue, or --file FILE")
    if operation is not None or per_request_options:
        raise click.UsageError("--file takes every request from the file: give no OPERATION, "
                               "--param, --json, --request-key, --correlation, --max-attempts "
                               "or --wait with it")
    r = enqueue_file(ctx.queue, file, check=lambda req: check_account(
        ctx, req.get("account") or "default", req.get("operation"),
        req.get("params") if isinstance(req.get("params"), dict) else None))
    ids = f" (ids {r.first_id} to {r.last_id})" if r.created else ""
    click.echo(f"{r.lines} requests read: {r.created} queued{ids}, {r.existing} already "
               "queued under the same request_key")


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
@click.argument("request_id", type=REQUEST_ID)
@click.option("--json", "as_json", is_flag=True)
@common(lenient_text=True)
def show(ctx: Context, request_id: int, as_json: bool) -> None:
    """One request with its attempts."""
    _show_row(ctx.queue.get(request_id, with_attempts=True), as_json)




def parse_age(text: str) -> float:
    """'30d', '12h', '90m' or '45s' (a unit is required; see sqlbridge.durations)."""
    try:
        return durations.parse_age(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--older-than", required=True, help="Age with a unit: 30d, 12h, 90m, 45s.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["succeeded", "failed", "cancelled", "uncertain"]),
              help="Statuses to purge (default: succeeded, failed, cancelled).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, by status.")
@click.option("--yes", "-y", "yes", is_flag=True,
              help="Do not ask (needed when not on a terminal).")
@click.option("--batch", type=Whole(1, PURGE_BATCH_MAX), default=PURGE_BATCH,
              show_default=True,
              help="Requests deleted per transaction.")
@common
def purge(ctx: Context, older_than: str, statuses: tuple[str, ...], dry_run: bool, yes: bool,
          batch: int) -> None:
    """Delete finished requests older than an age, with their attempt rows."""
    age = parse_age(older_than)
    wanted = statuses or PURGEABLE
    counts = ctx.queue.purge_counts(age, wanted)
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
    if dry_run:
        click.echo(f"would purge {total} requests older than {older_than}: {detail}")
        return
    if total and not yes:
        if not is_terminal(sys.stdin):
            raise UsageError(f"purge would delete {total} requests ({detail}); not on a "
                             "terminal, so add --yes to confirm (or --dry-run to count)")
        if not click.confirm(f"delete {total} requests older than {older_than} ({detail})?",
                             err=True):
            click.echo("nothing deleted")
            return
    n = ctx.queue.purge(age, wanted, batch=batch)
    click.echo(f"purged {n} requests")


@main.command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty.")
@click.option("--concurrency", type=Whole(1, 256))
@click.option("--batch", type=Whole(1, 1000))
@click.option("--poll-interval", type=FiniteFloat(0, 3600, low_open=True),
              help="Longest sleep when idle, seconds.")
@click.option("--lease", type=FiniteFloat(0, 86400, low_open=True),
              help="Lease length, seconds.")
@click.option("--no-schedules", is_flag=True, help="Do not run due schedules.")
@click.option("--grace", type=FiniteFloat(0, 86400), default=30.0, show_default=True,
              help="Seconds calls in flight get to finish after SIGTERM/SIGINT; then the "
                   "worker exits and leaves their rows to lease recovery.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"], case_sensitive=False),
              help="json: one JSON object per line, same fields.")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Run this many worker processes under one supervisor (one per core).")
@metrics_options
@common
def worker(ctx: Context, once: bool, concurrency: int | None, batch: int | None,
           poll_interval: float | None, lease: float | None, no_schedules: bool,
           grace: float, log_level: str, log_format: str, processes: int,
           **metrics_opts: Any) -> None:
    """Send queued requests until stopped (SIGTERM/SIGINT stop it cleanly; a second one
    exits at once)."""
    from . import logs
    from .db import make_engine
    from .dbcheck import DatabaseUnavailable
    from .worker import Worker

    logs.configure(log_level.upper(), log_format.lower(), secrets=ctx.settings.secrets())
    log = logging.getLogger("sqlbridge.worker")
    try:
        engine = ctx.engine  # the first contact: a configuration mistake stops here, exit 3
    except DatabaseUnavailable as exc:
        # An outage is not a mistake: the worker rides it out, as it does mid-run.
        log.warning("%s; retrying until it answers", exc)
        engine = make_engine(ctx.settings.database_url)
    if processes > 1:
        from .supervisor import Supervisor, child_args

        if metrics_opts.get("metrics_port") is not None:
            raise click.UsageError("--metrics-port cannot be combined with --processes: every "
                                   "process would need a port of its own; run the workers "
                                   "one per process, each with its own --metrics-port")

        engine.dispose()  # the children open their own
        sys.exit(Supervisor(processes, child_args(click.get_current_context()),
                            once=once).run())
    w = Worker(ctx.settings, engine, concurrency=concurrency, batch=batch,
               poll_interval=poll_interval, lease_seconds=lease, schedules=not no_schedules,
               grace=grace)
    start_metrics(w, **metrics_opts)  # --metrics-port: /metrics, /healthz, /readyz

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


@main.command("migrate")
@click.argument("file", type=click.Path())
@click.option("--write", is_flag=True, help="Rewrite FILE in place, keeping FILE.bak.")
def migrate_command(file: str, write: bool) -> None:
    """Rewrite FILE's sp_OACreate HTTP calls as sqlbridge procedure calls; print the diff.

    Exit 0 when every call was rewritten (or there was none), 1 when some were left as is
    (each with a '-- sqlbridge migrate:' comment saying why); see README for other codes.
    """
    from .migrate import run

    sys.exit(run(file, write, click.echo))


# Commands kept in their own modules (they share cli_support with this one).
for _command in (sandbox, demo, doctor, schedule, sync, take, status, list_command, retry,
                 cancel, actions, dashboard):
    main.add_command(_command)

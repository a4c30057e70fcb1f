"""Commands for the people who run the queue: ``status`` (``--json``, ``--watch``), ``list``,
``retry`` and ``cancel`` (one request, or every request a filter matches), and the worker's
``--metrics-port`` options. Thin shells over ``operator_actions``, ``monitoring`` and
``metrics``."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from . import operator_actions as oa
from .cli_support import (
    EXIT_USAGE,
    REQUEST_ID,
    Context,
    FiniteFloat,
    Whole,
    _jsonable,
    _print_json,
    _table,
    common,
    is_terminal,
)
from .errors import ConfigError
from .schema import STATUSES

# -- worker --metrics-port ------------------------------------------------------------------------


def metrics_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--metrics-port/--metrics-bind/--metrics-queue-interval for ``sqlbridge worker``."""
    fn = click.option("--metrics-queue-interval", type=FiniteFloat(1, 3600), default=30.0,
                      show_default=True,
                      help="Seconds between reads of the queue figures from the database.")(fn)
    fn = click.option("--metrics-bind", default="127.0.0.1", show_default=True,
                      help="Address the metrics endpoint listens on.")(fn)
    return click.option("--metrics-port", type=Whole(0, 65535),
                        help="Serve /metrics (Prometheus), /healthz and /readyz on this port "
                             "(0: any free port, logged).")(fn)


def start_metrics(worker: Any, *, metrics_port: int | None, metrics_bind: str,
                  metrics_queue_interval: float) -> Any:
    """Start the endpoint for ``worker`` (closed when the command ends); None without a port."""
    if metrics_port is None:
        return None
    from .metrics import WorkerMetrics, serve

    # Longer than anything the loop may legitimately block on: an idle sleep, a lease's worth
    # of renewals, and the shutdown grace (during which the loop no longer turns).
    stall_after = max(60.0, 2 * worker.lease, 5 * worker.poll_interval,
                      getattr(worker, "grace", 0.0) + 10)
    observer = WorkerMetrics(worker.settings.accounts, stall_after=stall_after)
    try:
        server = serve(observer, worker.engine, metrics_port, metrics_bind,
                       metrics_queue_interval)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {metrics_port}: cannot listen on {metrics_bind}: "
                          f"{exc.strerror or exc}") from None
    worker.observer = observer
    click.get_current_context().call_on_close(server.close)
    logging.getLogger("sqlbridge.metrics").info("metrics on %s/metrics (health: /healthz, "
                                                "/readyz)", server.url)
    return server


# -- filters shared by list, retry and cancel ------------------------------------------------------

_FILTERS = ("statuses", "operations", "accounts", "correlation", "error_codes", "created_after",
            "created_before", "finished_after", "finished_before")


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
                     help="Status (repeat for several)."),
        click.option("--operation", "operations", multiple=True, help="Operation, e.g. "
                     "chat.sendmessage (repeat)."),
        click.option("--account", "accounts", multiple=True, help="Account (repeat)."),
        click.option("--correlation", help="Exact correlation text."),
        click.option("--error-code", "error_codes", multiple=True, help="Error code (repeat)."),
        click.option("--since", "--created-after", "created_after", metavar="AGE|TIME",
                     help="Created at or after: an age (45s, 30m, 2h, 7d) or a UTC time."),
        click.option("--created-before", metavar="AGE|TIME", help="Created before."),
        click.option("--finished-after", metavar="AGE|TIME", help="Finished at or after."),
        click.option("--finished-before", metavar="AGE|TIME", help="Finished before."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _selection(request_id: int | None, opts: dict[str, Any]) -> oa.Selection:
    values: dict[str, Any] = {}
    for name in _FILTERS:
        value = opts.pop(name)
        if value in (None, ()):
            continue
        if name.endswith(("_after", "_before")):
            what = "--since" if name == "created_after" else "--" + name.replace("_", "-")
            value = oa.parse_moment(value, what)
        values[name] = tuple(value) if isinstance(value, tuple) else value
    if request_id is not None:
        values["ids"] = (request_id,)
    return oa.Selection(**values)


# -- status -----------------------------------------------------------------------------------


def _status_snapshot(ctx: Context) -> dict[str, Any]:
    from . import breaker, monitoring

    s = ctx.queue.summary()
    rows = monitoring.queue_health(ctx.engine)
    s["queue_health"] = rows
    s["queue_totals"] = monitoring.totals(rows)
    s["circuit_breakers"] = breaker.states(ctx.engine)
    caps = ctx.queue.caps
    with ctx.engine.connect() as conn:
        busy = caps.in_flight(conn)
    s["max_in_flight"] = [{"account": a, "provider": p, "max_in_flight": cap,
                           "in_flight": busy.get((a, p), 0)} for (a, p), cap in caps.caps.items()]
    return s


def _breakers_text(s: dict[str, Any]) -> list[str]:
    """The breakers that are not closed or are counting failures; one line when none is."""
    shown = [dict(b, state=b["state"] + (f" (probe {b['probe']})" if b["probe"] else ""),
                  open_for=f"{b['seconds_left']:.0f}s" if b["seconds_left"] is not None else "")
             for b in s["circuit_breakers"] if b["state"] != "closed" or b["failures"]]
    if not shown:
        return ["\ncircuit breakers: all closed"]
    return ["\ncircuit breakers (claims of an open one pause; see docs/reliability.md):",
            _table(shown, ["account", "provider", "state", "open_for", "failures", "trips",
                           "last_error"])]


def _status_text(s: dict[str, Any]) -> str:
    if not s["by_operation"]:
        return "the outbox is empty"
    lines = [_table(s["by_operation"], ["operation", "status", "count"])]
    totals = ", ".join(f"{k} {v}" for k, v in sorted(s["by_status"].items()))
    lines.append(f"\ntotal: {totals}")
    age = s["oldest_queued_seconds"]
    lines.append("oldest queued: " + ("none" if age is None else f"{age:.1f}s ago"))
    if s["queue_health"]:
        lines.append("\nqueue health (sqlbridge.queue_health):")
        lines.append(_table(s["queue_health"], ["operation", "queued", "due", "processing",
                                                "stuck", "uncertain",
                                                "oldest_queued_age_seconds"]))
    lines += _breakers_text(s)
    if s["max_in_flight"]:
        lines.append("\nmax_in_flight (calls in flight across all workers):")
        lines.append(_table(s["max_in_flight"], ["account", "provider", "in_flight",
                                                 "max_in_flight"]))
    if s["recent_failures"]:
        lines.append("\nrecent failures:")
        lines.append(_table(s["recent_failures"], ["id", "operation", "status", "error_code",
                                                   "error_message"]))
    return "\n".join(lines)


# Cursor home, then clear to the end of the screen: the frame is redrawn in place, no flicker.
REDRAW = "\x1b[H\x1b[J"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --watch: one object "
              "per line).")
@click.option("--watch", is_flag=True, help="Refresh until interrupted (Ctrl-C).")
@click.option("--interval", type=FiniteFloat(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--count", type=Whole(1), help="With --watch: stop after this many "
              "refreshes.")
@common(lenient_text=True)
def status(ctx: Context, as_json: bool, watch: bool, interval: float,
           count: int | None) -> None:
    """Counts by status and operation, queue health, oldest queued age, recent failures."""
    if not watch:
        s = _status_snapshot(ctx)
        _print_json(s) if as_json else click.echo(_status_text(s))
        return
    in_place = is_terminal(sys.stdout) and not as_json
    shown = 0
    try:
        while True:
            s = _status_snapshot(ctx)
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if as_json:
                click.echo(json.dumps(_jsonable({"at": stamp, **s}), ensure_ascii=False))
            else:
                frame = (f"sqlbridge status, every {interval:g}s ({stamp}); Ctrl-C to stop\n\n"
                         + _status_text(s))
                click.echo((REDRAW if in_place else ("\n" if shown else "")) + frame)
            shown += 1
            if count is not None and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# -- list -------------------------------------------------------------------------------------


@click.command("list")
@filter_options
@click.option("--limit", type=Whole(1, oa.MAX_LIMIT), default=50, show_default=True)
@click.option("--offset", type=Whole(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@common(lenient_text=True)
def list_command(ctx: Context, limit: int, offset: int, as_json: bool, **opts: Any) -> None:
    """Requests matching filters, newest first, a page at a time."""
    page = oa.list_requests(ctx.engine, _selection(None, opts), limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    if not page["requests"]:
        click.echo(f"no requests match (total {page['total']})")
        return
    click.echo(_table(page["requests"], list(oa.LIST_COLUMNS)))
    last = offset + len(page["requests"])
    more = f"; next page: --offset {last}" if last < page["total"] else ""
    click.echo(f"\n{offset + 1}-{last} of {page['total']}{more}")


# -- retry / cancel ---------------------------------------------------------------------------


def _act(ctx: Context, action: str, request_id: int | None, dry_run: bool, yes: bool,
         all_: bool, actor: str | None, opts: dict[str, Any]) -> None:
    sel = _selection(None, opts)
    if request_id is not None and not sel.empty:
        raise click.UsageError("give a request id or filters, not both")
    if request_id is not None and not dry_run:
        oa.apply_one(ctx.engine, action, request_id, actor=actor)
        click.echo(f"request {request_id} " + ("queued again" if action == "retry"
                                               else "cancelled"))
        return
    if request_id is not None:
        sel = _selection(request_id, {})
    oa._check(action, sel, all_)
    n = oa.count(ctx.engine, action, sel)
    criteria = json.dumps(sel.describe(), ensure_ascii=False) if not sel.empty else "all"
    if dry_run:
        click.echo(f"would {action} {n} requests matching {criteria} (dry run: nothing "
                   "changed)")
        return
    if n == 0:
        click.echo(f"no requests to {action} match {criteria}")
        return
    if not yes:
        if not (is_terminal(sys.stdin) and is_terminal(sys.stdout)):
            click.echo(f"error: {action} of {n} requests needs confirmation: not a terminal, "
                       "so pass --yes (or --dry-run to only count)", err=True)
            sys.exit(EXIT_USAGE)
        click.confirm(f"{action} {n} requests matching {criteria}?", abort=True)
    done = oa.apply(ctx.engine, action, sel, actor=actor, allow_all=all_)
    verb = "queued again" if action == "retry" else "cancelled"
    click.echo(f"{done} requests {verb} (recorded in operator_action)")


def _action_command(action: str, doc: str) -> click.Command:
    @click.command(action, help=doc)
    @click.argument("request_id", type=REQUEST_ID, required=False)
    @filter_options
    @click.option("--dry-run", is_flag=True, help="Only count what would change.")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--all", "all_", is_flag=True, help="Act with no filter at all.")
    @click.option("--actor", help="Who is acting, for the audit row (default: user@host).")
    @common
    def command(ctx: Context, request_id: int | None, dry_run: bool, yes: bool, all_: bool,
                actor: str | None, **opts: Any) -> None:
        _act(ctx, action, request_id, dry_run, yes, all_, actor, opts)

    return command


retry = _action_command(
    "retry", "Queue a failed, uncertain or cancelled request again: one by REQUEST_ID, or every "
    "one the filters match (--status uncertain --operation chat.sendmessage --since 2h), after "
    "a confirmation on a terminal (--yes skips it; --dry-run only counts). Bulk actions are "
    "recorded in operator_action.")
cancel = _action_command(
    "cancel", "Cancel a queued request: one by REQUEST_ID, or every queued one the filters "
    "match, after a confirmation on a terminal (--yes skips it; --dry-run only counts). Bulk "
    "actions are recorded in operator_action.")


@click.command()
@click.option("--limit", type=Whole(1, oa.MAX_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@common(lenient_text=True)
def actions(ctx: Context, limit: int, as_json: bool) -> None:
    """The latest bulk and single retry/cancel actions: who, when, what filter, how many."""
    rows = oa.history(ctx.engine, limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no operator actions recorded")
        return
    click.echo(_table(rows, ["id", "action", "actor", "via", "requested_at", "finished_at",
                             "matched", "criteria"]))

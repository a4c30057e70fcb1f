"""Commands for scheduled sync: ``schedule add|list|remove|run-now``, ``sync`` and ``take``."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import messages
from . import sync as sync_mod
from .cli_support import (
    EXIT_NOT_SUCCEEDED,
    EXIT_TIMEOUT,
    Context,
    FiniteFloat,
    Whole,
    _parse_param,
    _print_json,
    _table,
    check_account,
    common,
    is_terminal,
)


@click.group()
def schedule() -> None:
    """Schedules that make the worker sync on a timer."""


@schedule.command("add")
@click.argument("name")
@click.argument("operation")
@click.option("--param", "-p", "param", multiple=True, metavar="NAME=VALUE")
@click.option("--json", "json_text", help="Parameters (or sync options) as a JSON object.")
@click.option("--interval", default="5m", show_default=True, help="30s, 5m, 1h, 1d or seconds.")
@click.option("--account", default="default", show_default=True)
@click.option("--disabled", is_flag=True, help="Create it switched off.")
@click.option("--max-children", type=Whole(0, 1_000_000), default=1000,
              show_default=True, help="Most requests one run may fan out into.")
@common
def add(ctx: Context, name: str, operation: str, param: tuple[str, ...], json_text: str | None,
        interval: str, account: str, disabled: bool, max_children: int) -> None:
    """Create or update schedule NAME running OPERATION (or sync.chats)."""
    params: dict[str, Any] = _parse_param(param, json_text)
    check_account(ctx, account, operation, params)
    sid = sync_mod.add_schedule(ctx.engine, name, operation, params, interval, account=account,
                                enabled=not disabled, max_children=max_children)
    click.echo(f"schedule {name} (id {sid}) saved")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
@common
def list_(ctx: Context, as_json: bool) -> None:
    """Every schedule with its next run and how its last run stands."""
    rows = sync_mod.list_schedules(ctx.engine)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no schedules")
        return
    for r in rows:
        r["every"] = _span(r["interval_seconds"]) + ("" if r["enabled"] else " off")
        r["requests"] = " ".join(f"{k[:4]}:{v}" for k, v in sorted(r["last_run"].items()))
        r["next_run"] = _minute(r["next_run_at"])
        r["last_run"] = _minute(r["last_run_at"])
        r["error"] = _clip(r.get("last_error"), 24)
    # Narrow enough for a 120-column terminal; --json has every field in full.
    click.echo(_table(rows, ["name", "operation", "account", "every", "next_run",
                             "last_run", "last_status", "requests", "error"], width=20))


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _minute(value: Any) -> str:
    return "" if value is None else f"{value:%m-%d %H:%M}Z"


def _clip(text: str | None, width: int) -> str | None:
    return text if text is None or len(text) <= width else text[: width - 1] + "…"


@schedule.command("remove")
@click.argument("name")
@common
def remove(ctx: Context, name: str) -> None:
    """Delete schedule NAME (requests it already queued stay)."""
    sync_mod.remove_schedule(ctx.engine, name)
    click.echo(f"schedule {name} removed")


@schedule.command("run-now")
@click.argument("name")
@common
def run_now(ctx: Context, name: str) -> None:
    """Make schedule NAME due now (enabling it); a running worker starts it within a second."""
    sync_mod.run_now(ctx.engine, name)
    click.echo(f"schedule {name} is due now")


class _Progress:
    """A bar on a terminal, plain lines otherwise (logs, CI): the total grows while the sync
    fans out, which click.progressbar's fixed length cannot show. Written to stderr, so the
    summary on stdout stays clean for scripts."""

    WIDTH = 30

    def __init__(self) -> None:
        self.tty = is_terminal(sys.stderr)
        self.last = (-1, -1)

    def __call__(self, done: int, total: int) -> None:
        if (done, total) == self.last or total == 0:
            return
        self.last = (done, total)
        if self.tty:
            filled = self.WIDTH * done // total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            click.echo(f"\rsync [{bar}] {done}/{total} requests", nl=False, err=True)
        else:
            click.echo(f"sync: {done}/{total} requests finished", err=True)

    def close(self) -> None:
        if self.tty and self.last != (-1, -1):
            click.echo("", err=True)


@click.command()
@click.option("--account", default="default", show_default=True)
@click.option("--unread-only", is_flag=True, help="Fetch unread messages only.")
@click.option("--timeout", type=FiniteFloat(0, 7 * 86400, low_open=True),
              help="Give up waiting after this many seconds (exit 6).")
@common
def sync(ctx: Context, account: str, unread_only: bool, timeout: float | None) -> None:
    """Run one full chat sync now (channels, chats, messages) and summarise the tables.

    Runs only this sync's own requests (nothing else queued is sent) and waits until all of
    them are finished, whoever runs them. Exit 0 when every request succeeded, 1 when any
    failed (the summary lists them), 6 when --timeout passed first."""
    check_account(ctx, account)
    progress = _Progress()
    try:
        summary = sync_mod.sync_now(ctx.settings, ctx.engine, account=account,
                                    unread_only=unread_only, progress=progress,
                                    timeout=timeout)
    finally:
        progress.close()
    pending = sum(summary.requests.get(s, 0) for s in sync_mod.IN_FLIGHT)
    verb = "finished" if not pending else f"stopped waiting ({pending} still in flight)"
    click.echo(f"sync {verb} in {summary.seconds:.1f}s, run {summary.root_id}, requests: "
               + ", ".join(f"{k} {v}" for k, v in sorted(summary.requests.items())))
    rows = [{"table": t, **c} for t, c in summary.tables.items()]
    click.echo(_table(rows, ["table", "inserted", "updated"]))
    if summary.failures:
        click.echo("failed requests:")
        click.echo(_table(summary.failures,
                                 ["id", "operation", "status", "error_code", "error_message"]))
        sys.exit(EXIT_NOT_SUCCEEDED)
    if pending:
        sys.exit(EXIT_TIMEOUT)


@click.command()
@click.option("--consumer", required=True, help="Who takes them (stored as taken_by).")
@click.option("--max", "limit", type=Whole(1, 10000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@common
def take(ctx: Context, consumer: str, limit: int, as_json: bool) -> None:
    """Take incoming messages nobody has taken yet (each goes to one consumer, once)."""
    rows = messages.take_messages(ctx.engine, consumer, limit)
    if as_json:
        _print_json(rows)
    elif rows:
        click.echo(_table(rows, ["id", "platform", "platformid", "destination",
                                        "message"]))
    else:
        click.echo("no new messages")

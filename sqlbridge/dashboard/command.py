"""The ``sqlbridge dashboard`` command (registered in ``sqlbridge.cli``)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..cli_support import EXIT_CONFIG, EXIT_USAGE, Context, common

PASSWORD_ENV = "SQLBRIDGE_DASHBOARD_PASSWORD"


def _password(password: str | None, password_file: str | None) -> str | None:
    if password_file is not None:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            click.echo(f"error: cannot read --password-file {password_file}: "
                       f"{getattr(exc, 'strerror', None) or exc}", err=True)
            sys.exit(EXIT_USAGE)
        return text.rstrip("\r\n")
    return password


@click.command()
@click.option("--bind", "host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs a password.")
@click.option("--port", type=click.IntRange(0, 65535), default=8790, show_default=True)
@click.option("--password", envvar=PASSWORD_ENV, show_envvar=True,
              help="Password for the login page (prefer the environment variable or a file: "
                   "a command line is visible to other users).")
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="Read the password (or token) from this file.")
@click.option("--read-only", is_flag=True,
              help="Show everything, change nothing: action buttons hidden, POSTs refused.")
@common
def dashboard(ctx: Context, host: str, port: int, password: str | None,
              password_file: str | None, read_only: bool) -> None:
    """Serve the operators' dashboard (http://127.0.0.1:8790/ by default)."""
    from .rules import bind_problem

    secret = _password(password, password_file)
    problem = bind_problem(host, secret)
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        from .server import Dashboard
    except ImportError as exc:
        click.echo(f"error: the dashboard needs {exc.name}: pip install 'sqlbridge[dashboard]'",
                   err=True)
        sys.exit(EXIT_CONFIG)
    try:
        board = Dashboard(ctx.settings, ctx.engine, host=host, port=port, password=secret,
                          read_only=read_only)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"dashboard at {board.url}" + (" (read-only)" if read_only else "")
               + (" (login required)" if secret else "") + "; Ctrl+C stops it", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: a clean stop, no traceback
        board.serve_forever()

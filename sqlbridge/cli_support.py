"""What every command shares: exit codes, the settings/engine context, the ``common`` options
and error handling, and plain-text / JSON output. Its own module so that command modules
(``commands``, ``schedule_cli``) and ``cli`` can all import it without an import cycle."""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

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
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after saying what was already done
EXIT_CODES = {
    "ok": EXIT_OK, "not succeeded": EXIT_NOT_SUCCEEDED, "usage": EXIT_USAGE,
    "configuration": EXIT_CONFIG, "invalid parameters": EXIT_INVALID,
    "not found / wrong state": EXIT_NOT_FOUND, "wait timed out": EXIT_TIMEOUT,
    "database unreachable": EXIT_DATABASE, "interrupted": EXIT_INTERRUPTED,
}


class Context:
    """Settings, engine and queue, built on first use so ``--help`` needs no database.

    The first use of the database goes through ``dbcheck.first_contact``: a missing driver, a
    refused login or a schema never installed is one sentence, and no SQLite file is created
    by a command that only reads or queues."""

    def __init__(self, database_url: str | None, config_path: str | None, *,
                 need_schema: bool = True, lenient_text: bool = False) -> None:
        self.settings = config_mod.load(config_path).with_database_url(database_url)
        self.need_schema = need_schema
        self.lenient_text = lenient_text
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            from .dbcheck import first_contact

            engine = make_engine(self.settings.database_url, lenient_text=self.lenient_text)
            first_contact(engine, need_schema=self.need_schema)
            self._queue = Queue(engine, self.settings)
        return self._queue

    @property
    def engine(self) -> Any:
        return self.queue.engine


def common(fn: Callable[..., Any] | None = None, *,
           need_schema: bool = True, lenient_text: bool = False) -> Callable[..., Any]:
    """Add --database-url/--config and turn sqlbridge errors into one line + exit code.

    ``need_schema=False`` for the commands that run before ``install`` (install, doctor).
    ``lenient_text=True`` for the commands that only show or move rows by id (status, list,
    show, retry, cancel, actions): a row holding text that is not UTF-8 must not hide every
    other row from the operator (see ``db.make_engine``)."""
    if fn is None:
        return functools.partial(common, need_schema=need_schema, lenient_text=lenient_text)

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="TOML settings file (default: ./sqlbridge.toml when present).")
    @click.option("--database-url", envvar="SQLBRIDGE_DATABASE_URL",
                  help="SQLAlchemy URL (default: sqlite:///sqlbridge.db).")
    @functools.wraps(fn)
    def wrapper(*args: Any, database_url: str | None, config_path: str | None,
                **kwargs: Any) -> Any:
        from .dbcheck import DatabaseUnavailable, classify

        ctx: Context | None = None
        try:
            ctx = Context(database_url, config_path, need_schema=need_schema,
                          lenient_text=lenient_text)
            return fn(ctx, *args, **kwargs)
        except ConfigError as exc:
            _fail(exc, EXIT_CONFIG)
        except ValidationError as exc:
            _fail(exc, EXIT_INVALID)
        except (RequestNotFound, InvalidState) as exc:
            _fail(exc, EXIT_NOT_FOUND)
        except DatabaseUnavailable as exc:
            _fail(exc, EXIT_DATABASE)
        except SqlbridgeError as exc:
            _fail(exc, EXIT_NOT_SUCCEEDED)
        except (TypeError, ValueError) as exc:
            if not _stored_value_unreadable(exc):
                raise
            click.echo(printable(f"error: UNREADABLE_ROW: a stored value cannot be read "
                                 f"({type(exc).__name__}: {str(exc)[:120]}); a row was "
                                 "written by hand with a value of the wrong type: fix or "
                                 "delete it"), err=True)
            sys.exit(EXIT_NOT_SUCCEEDED)
        except DBAPIError as exc:
            url = ctx.settings.database_url if ctx else database_url
            found = classify(exc, url)
            if isinstance(found, ConfigError):
                _fail(found, EXIT_CONFIG)
            click.echo(printable(f"error: cannot use the database: {_one_line(exc)}"
                                 f"{_missing_table_hint(exc)}"), err=True)
            sys.exit(EXIT_DATABASE)

    return wrapper


def _stored_value_unreadable(exc: BaseException) -> bool:
    """True when SQLAlchemy failed converting a value it read (bytes in a SQLite timestamp
    column): the row's fault, not a bug, so one line instead of a traceback."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "sqlalchemy/engine/" in name and ("processors" in name or "result" in name):
            return True
        tb = tb.tb_next
    return False


# A table the statement needs is not there (SQLite, SQL Server, Babelfish's PostgreSQL).
_MISSING_TABLE = re.compile(r"no such table|invalid object name|relation \S+ does not exist",
                            re.IGNORECASE)


def _missing_table_hint(exc: BaseException) -> str:
    """For a missing table, what to do: usually a database installed by an older sqlbridge
    (a later release added the table in a new versioned script)."""
    if not _MISSING_TABLE.search(str(getattr(exc, "orig", None) or exc)):
        return ""
    return (" (a table is missing: the database may be older than this sqlbridge; "
            "sqlbridge doctor says which scripts are pending, sqlbridge install applies them)")


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:300]


def check_account(ctx: Context, account: str, operation: str | None = None,
                  params: dict[str, Any] | None = None) -> None:
    """With a configuration file, refuse at enqueue what the worker would refuse later and
    this process can already see: an account the file does not define (``UNKNOWN_ACCOUNT``),
    and an ``http.request`` URL the account's allowlist does not allow (``HOST_NOT_ALLOWED``;
    the worker still checks the resolved address). Without a file the CLI cannot know the
    worker's settings, so it does not judge."""
    if ctx.settings.config_path is None:
        return
    if account not in ctx.settings.accounts:
        known = ", ".join(sorted(ctx.settings.accounts))
        raise ValidationError(f"account '{account[:100]}' is not configured in "
                              f"{ctx.settings.config_path}; configured accounts: {known}",
                              code="UNKNOWN_ACCOUNT", param="account")
    if operation == "http.request" and isinstance((params or {}).get("url"), str):
        from .errors import ProviderError
        from .providers.http import allowlisted

        try:
            allowlisted(str((params or {})["url"]), ctx.settings.accounts[account])
        except ProviderError as exc:  # the worker's own words, before anything is queued
            raise ValidationError(str(exc), code=exc.code, param="url") from None


def printable(text: str) -> str:
    """One line whatever the input held: control characters (newlines, U+001E, ...) and
    lone surrogates are shown escaped, as Python writes them."""
    return "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF
                   else ascii(ch)[1:-1] for ch in text)


def _fail(exc: SqlbridgeError, code: int) -> None:
    click.echo(printable(f"error: {exc.code}: {exc}"), err=True)
    sys.exit(code)


def iso_utc(value: datetime) -> str:
    """A stored time (naive UTC) as ISO 8601 with ``Z``, always to the millisecond."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# Columns that hold JSON text; printed as JSON values, not as strings holding JSON.
JSON_COLUMNS = ("params", "response")


def _jsonable(value: Any, key: str | None = None) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if key in JSON_COLUMNS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # a non-JSON answer (HTML, plain text) stays text
    if isinstance(value, dict):
        return {k: _jsonable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), ensure_ascii=False, indent=2))


def _table(rows: list[dict[str, Any]], columns: list[str], width: int = 60) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c)))[:width] for c in columns]
             for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


class UsageError(click.UsageError):
    """Bad command-line input: one line, exit 2 (see ``OneLineErrors``)."""


def _undecodable(text: str) -> bool:
    # Lone surrogates: argv bytes that were not UTF-8 (Python maps them to U+DC80..U+DCFF) or a
    # JSON escape such as "\ud800". No database column can store them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str) and _undecodable(value):
        raise UsageError(f"{where} is not valid Unicode text (invalid UTF-8 or a lone "
                         "surrogate such as \\ud800); only valid UTF-8 text can be queued")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where)
            _check_text(v, where)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, where)


# The most ``--json @FILE`` / ``--json -`` reads: far above any message a vendor accepts, and
# a bound on the memory of ``--json @/dev/zero`` or an endless pipe (which once grew to GBs).
MAX_JSON_BYTES = 16 * 1024 * 1024


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal. A command started with a standard stream closed
    (``0<&-`` from cron or a service manager) has ``None`` there, which is no terminal."""
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def _read_json_source(json_text: str) -> str:
    """``--json TEXT``, ``--json @FILE`` or ``--json -`` (stdin): argv holds at most 128 KiB
    per argument, so long messages come from a file or a pipe; at most MAX_JSON_BYTES."""
    if json_text == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise UsageError("--json -: there is no standard input to read (it is closed); "
                             "give the JSON as text, or --json @FILE")
        try:
            data = stdin.read(MAX_JSON_BYTES + 1)
        except (ValueError, OSError) as exc:
            raise UsageError(f"--json -: cannot read standard input ({exc})") from None
        where = "--json - (standard input)"
    elif json_text.startswith("@"):
        path = json_text[1:]
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JSON_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"--json {json_text}: cannot read the file ({exc.strerror})") \
                from None
        where = f"--json {json_text}"
    else:
        return json_text
    if len(data) > MAX_JSON_BYTES:
        raise UsageError(f"{where[:80]} is larger than {MAX_JSON_BYTES // (1024 * 1024)} MiB; "
                         "parameters that large are refused")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not UTF-8 text") from None


def _parse_param(values: tuple[str, ...], json_text: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if json_text:
        _check_text(json_text, "--json")
        source = _read_json_source(json_text)
        try:
            loaded = json.loads(source)
            _check_text(loaded, "--json")
        except RecursionError:
            raise UsageError("--json is nested too deeply") from None
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--json must be a JSON object, e.g. '{\"userId\": \"1001\"}'")
        params.update(loaded)
    for item in values:
        _check_text(item, "--param")
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {item[:60]!r} must look like name=value")
        params[name] = value
    return params


class FiniteFloat(click.ParamType):
    """A float within [low, high] (``low_open``: strictly above low), never nan or inf."""

    name = "seconds"

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, str) and not _ASCII_NUMBER.match(value):
            self.fail(f"{value!r} is not a number (digits 0-9, a point, an exponent)",
                      param, ctx)
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above = number > self.low if self.low_open else number >= self.low
        if not math.isfinite(number) or not above or number > self.high:
            sign = ">" if self.low_open else ">="
            self.fail(f"{value!r} must be a number {sign} {self.low:g} and <= {self.high:g}",
                      param, ctx)
        return number


# Python's int() and float() read any script's digits ('٣' is 3) and underscores ('1_000'):
# a command-line number is ASCII digits only, so what an operator typed is what is used.
_ASCII_INT = re.compile(r"\A\s*[+-]?[0-9]+\s*\Z", re.ASCII)
_ASCII_NUMBER = re.compile(r"\A\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*\Z"
                           r"|\A\s*[+-]?(?:inf|infinity|nan)\s*\Z", re.ASCII | re.IGNORECASE)
BIGINT_MAX = 2**63 - 1


class Whole(click.IntRange):
    """A whole number in ``[low, high]`` written in ASCII digits; the bounds are always set, so
    a value no database column holds is a usage error, not a driver traceback."""

    def __init__(self, low: int, high: int = BIGINT_MAX) -> None:
        super().__init__(low, high)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and not _ASCII_INT.match(value):
            self.fail(f"{value!r} is not a whole number (digits 0-9)", param, ctx)
        return super().convert(value, param, ctx)


# An id is a BIGINT; a priority an INT: larger numbers are usage errors, not driver tracebacks.
REQUEST_ID = Whole(1, BIGINT_MAX)
PRIORITY = Whole(-(2**31), 2**31 - 1)


class OneLineErrors(click.Group):
    """A group whose usage errors are one line (``error: …``) with exit 2, and whose Ctrl-C
    is a line, not ``Aborted!``. click's own output is three lines and a blank."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        standalone = kwargs.pop("standalone_mode", True)
        argv = kwargs.get("args", args[0] if args else None)
        try:
            for i, arg in enumerate(sys.argv[1:] if argv is None else argv, 1):
                # Bytes that are not UTF-8 arrive as lone surrogates (PEP 383): refuse them
                # here, once for every command, before they reach a database or a vendor.
                if isinstance(arg, str) and _undecodable(arg):
                    raise UsageError(f"argument {i} ({ascii(arg)[:60]}) is not valid UTF-8 "
                                     "text")
            rv = super().main(*args, standalone_mode=False, **kwargs)
            # Without standalone mode click returns the exit code of --help/--version (Exit).
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.UsageError as exc:
            where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
            click.echo(printable(f"error: {exc.format_message()}{where}"), err=True)
            code = EXIT_USAGE
        except click.ClickException as exc:
            click.echo(printable(f"error: {exc.format_message()}"), err=True)
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            code = EXIT_INTERRUPTED
        if not standalone:
            return code
        sys.exit(code)

"""Commands around the request path: ``sandbox``, ``demo`` and ``doctor``."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.engine import make_url

from .cli_support import BIGINT_MAX, EXIT_CONFIG, Context, FiniteFloat, Whole, common
from .config import Account
from .db import make_engine
from .errors import ConfigError, SqlbridgeError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", default=8780, show_default=True, type=Whole(0, 65535))
@click.option("--latency-ms", default=0.0, type=FiniteFloat(0, 60000),
              help="Added to every answer.")
@click.option("--error-rate", default=0.0, type=FiniteFloat(0, 1),
              help="Fraction of answers that are HTTP 503.")
@click.option("--rate-limit-rate", default=0.0, type=FiniteFloat(0, 1),
              help="Fraction of answers that are HTTP 429 with Retry-After.")
@click.option("--timeout-rate", default=0.0, type=FiniteFloat(0, 1),
              help="Fraction of requests held past the client's read timeout.")
@click.option("--drop-rate", default=0.0, type=FiniteFloat(0, 1),
              help="Fraction of connections closed without an answer.")
@click.option("--malformed-rate", default=0.0, type=FiniteFloat(0, 1),
              help="Fraction of answers that are an HTML error page.")
@click.option("--seed", type=Whole(-BIGINT_MAX), help="Make the faults reproducible.")
def sandbox(host: str, port: int, latency_ms: float, error_rate: float, rate_limit_rate: float,
            timeout_rate: float, drop_rate: float, malformed_rate: float,
            seed: int | None) -> None:
    """Serve both APIs (Afilnet chat, AnnA V3) locally, with optional faults."""
    from .sandbox import Faults, serve

    try:
        serve(host=host, port=port, seed=seed,
              faults=Faults(latency_ms=latency_ms, error_rate=error_rate,
                            rate_limit_rate=rate_limit_rate, timeout_rate=timeout_rate,
                            drop_rate=drop_rate, malformed_rate=malformed_rate, seed=seed))
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port} ({exc.strerror or exc}): choose "
                   "another --port (or --port 0 for any free one)", err=True)
        sys.exit(EXIT_CONFIG)


@click.command()
@click.option("--database-url", default="sqlite:///sqlbridge-demo.db", show_default=True,
              help="SQLite file the demo (re)creates.")
@click.option("--keep", is_flag=True, help="Keep the existing database instead of a fresh one.")
def demo(database_url: str, keep: bool) -> None:
    """Run every operation against the built-in sandbox and show the tables."""
    from sqlalchemy.exc import DBAPIError

    from . import demo as demo_mod

    try:
        result = demo_mod.run(database_url, fresh=not keep, echo=click.echo)
    except (OSError, DBAPIError) as exc:
        reason = getattr(exc, "strerror", None) or str(getattr(exc, "orig", exc)).split("\n")[0]
        click.echo(f"error: the demo cannot write its database {database_url} ({reason}): "
                   "pass --database-url sqlite:///SOME/WRITABLE/demo.db", err=True)
        sys.exit(EXIT_CONFIG)
    except SqlbridgeError as exc:
        click.echo(f"error: {exc.code}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    bad = [r for r in result["requests"] if r["status"] not in ("succeeded", "failed")]
    if bad:
        click.echo(f"\n{len(bad)} requests did not settle as expected", err=True)
        sys.exit(1)


# Values copied from an example and never filled in: a check that says "ok" for them lies.
PLACEHOLDERS = ("…", "...", "changeme", "change-me", "change_me", "xxx", "password", "secret",
                "todo", "tbd", "your-password", "me@example.com")


def _placeholder(value: Any) -> bool:
    text = value.reveal() if hasattr(value, "reveal") else ("" if value is None else str(value))
    text = text.strip().lower()
    return not text or text in PLACEHOLDERS or (text.startswith("<") and text.endswith(">"))


def _account_checks(account: Account) -> list[tuple[str, str, str]]:
    out = []
    a = account.afilnet
    bad = [k for k in ("user", "password") if _placeholder(getattr(a, k))]
    if not a.user and not a.password:
        out.append(("warn", f"account {account.name}: afilnet",
                    f"no user/password (accounts.{account.name}.afilnet.user/password or "
                    "SQLBRIDGE_AFILNET_USER/PASSWORD): Afilnet requests will fail"))
    elif bad:
        out.append(("fail", f"account {account.name}: afilnet",
                    f"{'/'.join(bad)} empty or a placeholder (…, changeme): set the real "
                    f"value in accounts.{account.name}.afilnet"))
    else:
        out.append(("ok", f"account {account.name}: afilnet", f"{a.auth} to {a.url}"))
    n = account.anna
    keys = ("url", "company_hash", "user", "password")
    missing = [k for k in keys if not getattr(n, k)]
    fake = [k for k in keys[1:] if getattr(n, k) and _placeholder(getattr(n, k))]
    if fake:
        out.append(("fail", f"account {account.name}: anna",
                    f"{', '.join(fake)} a placeholder (…, changeme): set the real value"))
    else:
        out.append(("warn" if missing else "ok", f"account {account.name}: anna",
                    f"missing {', '.join(missing)}" if missing else f"base URL {n.url}"))
    for name, url in (("afilnet", a.url), ("anna", n.url)):
        if url and url.lower().startswith("http://") and "127.0.0.1" not in url \
                and "localhost" not in url:
            out.append(("warn", f"account {account.name}: {name} TLS",
                        f"{url} is plain http: credentials travel unencrypted"))
    hosts = account.http.allowed_hosts
    out.append(("ok", f"account {account.name}: http",
                f"allowed hosts: {', '.join(map(str, hosts))}" if hosts else "no allowed hosts "
                "(http.request refuses every URL)"))
    fake_headers = [h for h, v in account.http.headers.items()
                    if _placeholder(v) or _placeholder(str(v.reveal()).split(" ")[-1])]
    if fake_headers:
        out.append(("fail", f"account {account.name}: http headers",
                    f"{', '.join(fake_headers)} empty or a placeholder: set the real value"))
    return out


def _driver_checks(url: Any) -> list[tuple[str, str, str]]:
    """SQL Server: the ODBC driver the URL names is installed; TLS is not switched off."""
    from .dbcheck import odbc_drivers

    if url.get_backend_name() != "mssql":
        return []
    out = []
    query = {k.lower(): str(v) for k, v in url.query.items()}
    if url.get_driver_name() == "pyodbc" and "odbc_connect" not in query:
        driver = query.get("driver")
        installed = odbc_drivers()
        if not driver:
            out.append(("fail", "sql server driver", "the URL names no ?driver=… (e.g. "
                        "ODBC+Driver+18+for+SQL+Server or FreeTDS)"))
        elif driver not in installed:
            out.append(("fail", "sql server driver",
                        f"ODBC driver {driver!r} is not installed (installed: "
                        f"{', '.join(installed) or 'none'}): apt-get install unixodbc tdsodbc "
                        "for FreeTDS, or Microsoft's msodbcsql18"))
        else:
            out.append(("ok", "sql server driver", driver))
    if query.get("trustservercertificate", "").lower() in ("yes", "true", "1"):
        out.append(("warn", "sql server TLS", "TrustServerCertificate=yes: the server's "
                    "certificate is not checked (fine for a test server only)"))
    if query.get("encrypt", "").lower() in ("no", "false", "0", "optional"):
        out.append(("warn", "sql server TLS", "Encrypt=no: the connection is not encrypted"))
    return out


def _schema_version_check(engine: Any) -> tuple[str, str, str]:
    from .install import pending

    try:
        todo = pending(engine)
    except ConfigError as exc:  # a versioned script changed since applied: install refuses too
        return ("fail", "schema version", str(exc))
    if todo:
        return ("fail", "schema version", f"{', '.join(todo)} not applied: run sqlbridge "
                "install (upgrades in place)")
    return ("ok", "schema version", "up to date")


# Beyond this, attempt rows (stamped by the worker host) and outbox rows (stamped by the
# database) disagree enough to mislead a person reading them side by side.
CLOCK_SKEW_WARN_SECONDS = 2.0


def _clock_check(engine: Any) -> tuple[str, str, str]:
    from .health import clock_skew

    skew = clock_skew(engine)
    state = "warn" if abs(skew) > CLOCK_SKEW_WARN_SECONDS else "ok"
    note = (" (leases and retries use the database's clock, so the queue is unaffected; "
            "fix NTP so that log and attempt times agree with the tables)" if state == "warn"
            else "")
    return state, "clock", f"database clock is {skew:+.2f} s from this host's{note}"


@click.command()
@common(need_schema=False)
def doctor(ctx: Context) -> None:
    """Check what the worker checks at start (settings, schedules, database, driver, TLS,
    schema and its version, accounts); exit 1 when something is broken."""
    from .dbcheck import first_contact, safe_url
    from .sync import check_config

    checks: list[tuple[str, str, str]] = [
        ("ok", "settings", ctx.settings.config_path or "environment and defaults")]
    try:
        n = len(check_config(ctx.settings.schedules))
        checks.append(("ok", "schedules", f"{n} in the settings file"))
    except SqlbridgeError as exc:
        checks.append(("fail", "schedules", str(exc)))
    try:
        url = make_url(ctx.settings.database_url)
        checks.extend(_driver_checks(url))
        engine = make_engine(ctx.settings.database_url)
        first_contact(engine)
        checks.append(("ok", "database", safe_url(engine.url)))
        checks.append(("ok", "schema", "installed"))
        checks.append(_schema_version_check(engine))
        checks.append(_clock_check(engine))
    except SqlbridgeError as exc:
        checks.append(("fail", "database", str(exc)))
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not crash
        checks.append(("fail", "database", str(exc).splitlines()[0][:200]))
    for account in ctx.settings.accounts.values():
        checks.extend(_account_checks(account))
    for state, what, detail in checks:
        click.echo(f"[{state:^4}] {what}: {detail}")
    if any(state == "fail" for state, _, _ in checks):
        sys.exit(1)

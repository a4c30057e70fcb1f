"""Commands around the request path: ``sandbox``, ``demo`` and ``doctor``."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy import inspect, text

from .cli_support import Context, common
from .config import Account
from .schema import SCHEMA, metadata


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", default=8780, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, type=float, help="Added to every answer.")
@click.option("--error-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of answers that are HTTP 503.")
@click.option("--rate-limit-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of answers that are HTTP 429 with Retry-After.")
@click.option("--timeout-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of requests held past the client's read timeout.")
@click.option("--drop-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of connections closed without an answer.")
@click.option("--malformed-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of answers that are an HTML error page.")
@click.option("--seed", type=int, help="Make the faults reproducible.")
def sandbox(host: str, port: int, latency_ms: float, error_rate: float, rate_limit_rate: float,
            timeout_rate: float, drop_rate: float, malformed_rate: float,
            seed: int | None) -> None:
    """Serve both APIs (Afilnet chat, AnnA V3) locally, with optional faults."""
    from .sandbox import Faults, serve

    serve(host=host, port=port, seed=seed,
          faults=Faults(latency_ms=latency_ms, error_rate=error_rate,
                        rate_limit_rate=rate_limit_rate, timeout_rate=timeout_rate,
                        drop_rate=drop_rate, malformed_rate=malformed_rate, seed=seed))


@click.command()
@click.option("--database-url", default="sqlite:///sqlbridge-demo.db", show_default=True,
              help="SQLite file the demo (re)creates.")
@click.option("--keep", is_flag=True, help="Keep the existing database instead of a fresh one.")
def demo(database_url: str, keep: bool) -> None:
    """Run every operation against the built-in sandbox and show the tables."""
    from . import demo as demo_mod

    result = demo_mod.run(database_url, fresh=not keep, echo=click.echo)
    bad = [r for r in result["requests"] if r["status"] not in ("succeeded", "failed")]
    if bad:
        click.echo(f"\n{len(bad)} requests did not settle as expected", err=True)
        sys.exit(1)


def _account_checks(account: Account) -> list[tuple[str, str, str]]:
    out = []
    a = account.afilnet
    if a.user and a.password:
        out.append(("ok", f"account {account.name}: afilnet",
                    f"{a.auth} to {a.url}"))
    else:
        out.append(("warn", f"account {account.name}: afilnet",
                    f"no user/password (accounts.{account.name}.afilnet.user/password or "
                    "SQLBRIDGE_AFILNET_USER/PASSWORD): Afilnet requests will fail"))
    n = account.anna
    missing = [k for k in ("url", "company_hash", "user", "password") if not getattr(n, k)]
    out.append(("warn" if missing else "ok", f"account {account.name}: anna",
                f"missing {', '.join(missing)}" if missing else f"base URL {n.url}"))
    hosts = account.http.allowed_hosts
    out.append(("ok", f"account {account.name}: http",
                f"allowed hosts: {', '.join(map(str, hosts))}" if hosts else "no allowed hosts "
                "(http.request refuses every URL)"))
    return out


@click.command()
@common
def doctor(ctx: Context) -> None:
    """Check settings, database, schema and accounts; exit 1 when something is broken."""
    checks: list[tuple[str, str, str]] = [
        ("ok", "settings", ctx.settings.config_path or "environment and defaults")]
    try:
        engine: Any = ctx.engine
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks.append(("ok", "database", engine.url.render_as_string(hide_password=True)))
        schema = SCHEMA if engine.dialect.name != "sqlite" else None
        present = set(inspect(engine).get_table_names(schema=schema))
        missing = sorted(t.name for t in metadata.sorted_tables if t.name not in present)
        checks.append(("fail" if missing else "ok", "schema",
                       f"missing tables: {', '.join(missing)} (run sqlbridge install)"
                       if missing else "all tables present"))
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not crash
        checks.append(("fail", "database", str(exc).splitlines()[0][:200]))
    for account in ctx.settings.accounts.values():
        checks.extend(_account_checks(account))
    for state, what, detail in checks:
        click.echo(f"[{state:^4}] {what}: {detail}")
    if any(state == "fail" for state, _, _ in checks):
        sys.exit(1)

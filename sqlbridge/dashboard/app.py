"""The dashboard's pages: a Flask app rendering Jinja2 templates on the server.

Reads use ``Queue``, ``operator_actions``, ``sync``, ``monitoring`` and the selects in ``data``;
every change is a POST (CSRF-checked, refused in read-only mode) that calls the same functions
as the CLI and is recorded in ``operator_action`` with ``via='dashboard'``. Everything a page
shows passes through ``redact.scrub`` with the configured accounts' secrets first.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup, escape
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from .. import breaker, monitoring, redact
from .. import operator_actions as oa
from .. import sync as sync_mod
from ..config import Settings
from ..errors import SqlbridgeError
from ..queue import Queue, _as_datetime
from ..schema import STATUSES
from . import charts, data, security

PAGE_SIZES = (20, 50, 100, 200)
FAILURE_STATUSES = ("failed", "uncertain")
FILTER_FIELDS = ("status", "operation", "account", "correlation", "since", "until")
SCHEDULE_ACTIONS = ("run-now", "enable", "disable")
VIA = "dashboard"
MAX_ID = 2**63 - 1  # BIGINT: a larger id in a URL is a 404, not an overflow in the driver
MAX_SHOWN = 1_000_000  # characters of params or response a page shows
MAX_FLASH = 300  # flashed messages live in the session cookie (browsers keep 4 KB)


def create_app(settings: Settings, engine: Engine, *, password: str | None = None,
               read_only: bool = False, allowed_hosts: frozenset[str] | None = None) -> Flask:
    """The WSGI app. ``allowed_hosts``: the only Host headers answered (None: any)."""
    app = Flask(__name__)
    security.configure(app)
    queue = Queue(engine, settings)
    guard = security.LoginGuard(password)
    secrets_ = settings.secrets()

    def page(template: str, status: int = 200, **ctx: Any) -> Response:
        html = render_template(template, **redact.scrub(ctx, secrets_))
        # A lone surrogate read from the database must not turn the page into a 500.
        return Response(html.encode("utf-8", "replace"), status=status,
                        content_type="text/html; charset=utf-8")

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"csrf_token": security.csrf_token, "read_only": read_only,
                "nonce": g.get("nonce", ""), "login_required": guard.required,
                "messages": get_flashed_messages(with_categories=True), "qs": _qs}

    app.jinja_env.filters["t"] = _time

    @app.before_request
    def _gate() -> Response | None:
        if allowed_hosts is not None and request.host.lower() not in allowed_hosts:
            abort(400, description="unknown Host header; open the dashboard by the address "
                                   "it printed")
        if guard.required and not session.get("auth") and request.endpoint != "login":
            if request.method == "POST":
                abort(401, description="log in first")
            return redirect(url_for("login", next=request.full_path))
        if request.method == "POST":
            security.check_csrf()
            if read_only and request.endpoint not in ("login", "logout"):
                abort(403, description="the dashboard runs read-only (--read-only): no changes")
        return None

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Response:
        first = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
        return page("error.html", status=503, code=503,
                    message=f"cannot use the database: {first}"[:500])

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def _error(exc: Any) -> Response:
        return page("error.html", status=exc.code, code=exc.code,
                    message=getattr(exc, "description", str(exc)))

    # -- login ---------------------------------------------------------------------------------

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response:
        if not guard.required:
            return redirect(url_for("overview"))
        nxt = _local_path(request.values.get("next", "")) or url_for("overview")
        if request.method == "POST":
            if guard.locked():
                return page("login.html", status=429, next=nxt,
                            error="too many wrong passwords; wait a minute")
            if guard.check(request.form.get("password", "")):
                security.log_in()
                return redirect(nxt)
            return page("login.html", status=401, next=nxt, error="wrong password")
        return page("login.html", next=nxt, error=None)

    @app.post("/logout")
    def logout() -> Response:
        session.clear()
        return redirect(url_for("login" if guard.required else "overview"))

    # -- overview ------------------------------------------------------------------------------

    @app.get("/")
    def overview() -> Response:
        summary = queue.summary(failures=10)
        health = monitoring.queue_health(engine)
        per_hour = data.hourly(engine)
        return page("overview.html", summary=summary, health=health,
                    totals=monitoring.totals(health), workers=data.workers(engine),
                    breakers=breaker.states(engine),
                    statuses=STATUSES, now=data.db_now(engine),
                    chart_ok=charts.bars(per_hour["succeeded"], per_hour["starts"],
                                         "requests succeeded per hour", "ok"),
                    chart_bad=charts.bars(per_hour["failed"], per_hour["starts"],
                                          "requests failed or uncertain per hour", "bad"),
                    sum_ok=sum(per_hour["succeeded"]), sum_bad=sum(per_hour["failed"]),
                    hours=data.HOURS)

    # -- requests ------------------------------------------------------------------------------

    def listing(title: str, endpoint: str, allowed: tuple[str, ...]) -> Response:
        args = _filters()
        try:
            sel = _selection(args, allowed)
            size = _int_arg("per", 50, PAGE_SIZES)
            pageno = max(1, min(_int_arg("page", 1), 1_000_000))
            result = oa.list_requests(engine, sel, limit=size, offset=(pageno - 1) * size)
        except SqlbridgeError as exc:
            return page("requests.html", status=400, title=title, endpoint=endpoint,
                        args=args, error=str(exc), result=None, statuses=allowed,
                        pages=0, pageno=1, per=50, page_sizes=PAGE_SIZES)
        pages = max(1, math.ceil(result["total"] / size))
        # The bulk links act on what the list shows: on Failures, failed and uncertain only.
        bulk_status = args["status"] or ([] if allowed == STATUSES else list(allowed))
        return page("requests.html", title=title, endpoint=endpoint, args=args, error=None,
                    result=result, statuses=allowed, pages=pages, pageno=pageno, per=size,
                    page_sizes=PAGE_SIZES, bulk_status=bulk_status)

    @app.get("/requests")
    def requests_page() -> Response:
        return listing("Requests", "requests_page", STATUSES)

    @app.get("/failures")
    def failures() -> Response:
        return listing("Failures and uncertain sends", "failures", FAILURE_STATUSES)

    @app.get(f"/requests/<int(max={MAX_ID}):request_id>")
    def request_page(request_id: int) -> Response:
        try:
            row = queue.get(request_id, with_attempts=True)
        except SqlbridgeError:
            abort(404, description=f"request {request_id} does not exist")
        n_children, kids = data.children(engine, request_id)
        return page("request.html", r=row, n_children=n_children, children=kids,
                    params=_pretty(row["params"], secrets_),
                    response=_pretty(row["response"], secrets_))

    @app.post(f"/requests/<int(max={MAX_ID}):request_id>/<any(retry, cancel):action>")
    def act_one(request_id: int, action: str) -> Response:
        try:
            oa.apply_one(engine, action, request_id, actor=_actor(), via=VIA)
            flash(f"request {request_id}: {action} done", "ok")
        except SqlbridgeError as exc:
            flash(str(exc)[:MAX_FLASH], "error")
        return redirect(url_for("request_page", request_id=request_id))

    @app.get("/bulk/<any(retry, cancel):action>")
    def bulk_preview(action: str) -> Response:
        args = _filters()
        try:
            sel = _selection(args, STATUSES)
            oa._check(action, sel, allow_all=False)
            n = oa.count(engine, action, sel)
        except SqlbridgeError as exc:
            return page("bulk.html", status=400, action=action, args=args, error=str(exc),
                        count=0)
        return page("bulk.html", action=action, args=args, error=None, count=n)

    @app.post("/bulk/<any(retry, cancel):action>")
    def bulk(action: str) -> Response:
        args = {k: request.form.getlist(k) if k == "status" else request.form.get(k, "")
                for k in FILTER_FIELDS}
        try:
            n = oa.apply(engine, action, _selection(args, STATUSES), actor=_actor(), via=VIA)
            flash(f"{action}: {n} request{'s' if n != 1 else ''} changed", "ok")
        except SqlbridgeError as exc:
            flash(str(exc)[:MAX_FLASH], "error")
        return redirect(url_for("requests_page") + "?" + _encode(args))

    # -- schedules -----------------------------------------------------------------------------

    @app.get("/schedules")
    def schedules() -> Response:
        return page("schedules.html", rows=sync_mod.list_schedules(engine))

    @app.post("/schedules/<any('run-now', enable, disable):action>")
    def schedule_action(action: str) -> Response:
        name = request.form.get("name", "")
        try:
            if action == "run-now":
                sync_mod.run_now(engine, name)
            else:
                sync_mod.set_enabled(engine, name, action == "enable")
            oa.record(engine, f"schedule.{action}", {"schedule": name}, actor=_actor(),
                      via=VIA, matched=1)
            flash(f"schedule {name[:100]}: {action} done", "ok")
        except SqlbridgeError as exc:
            flash(str(exc)[:MAX_FLASH], "error")
        return redirect(url_for("schedules"))

    # -- conversations, AnnA, audit ------------------------------------------------------------

    @app.get("/conversations")
    def conversations() -> Response:
        return page("channels.html", rows=data.channels(engine))

    @app.get(f"/conversations/channel/<int(max={MAX_ID}):channel_id>")
    def channel(channel_id: int) -> Response:
        ch = data.channel(engine, channel_id) or abort(404, description="no such channel")
        return page("chats.html", ch=ch, rows=data.chats(engine, ch))

    @app.get(f"/conversations/chat/<int(max={MAX_ID}):chat_id>")
    def chat(chat_id: int) -> Response:
        c = data.chat_row(engine, chat_id) or abort(404, description="no such chat")
        return page("messages.html", c=c, rows=data.chat_messages(engine, c))

    @app.get("/anna")
    def anna() -> Response:
        return page("anna.html", **data.anna(engine))

    @app.get("/actions")
    def actions() -> Response:
        return page("actions.html", rows=data.actions(engine))

    return app


# -- helpers ---------------------------------------------------------------------------------

def _actor() -> str:
    return f"{oa.default_actor()} from {request.remote_addr or '?'}"[:200]


def _local_path(target: str) -> str | None:
    """``target`` when it is a path on this site, else None: no open redirect after login
    (browsers read '//host' and '/\\host' as another site)."""
    if (not target.startswith("/") or target[1:2] in ("/", "\\")
            or any(c in target for c in "\r\n\\")):
        return None
    return target


def _filters() -> dict[str, Any]:
    return {k: request.args.getlist(k) if k == "status" else request.args.get(k, "").strip()
            for k in FILTER_FIELDS}


def _selection(args: dict[str, Any], allowed: tuple[str, ...]) -> oa.Selection:
    """The filter form as an operator_actions.Selection (its own checks give the messages)."""
    statuses = tuple(s for s in args["status"] if s) or allowed
    bad = [s for s in statuses if s not in allowed]
    if bad:
        from ..errors import ValidationError

        raise ValidationError(f"status {bad[0]!r} is not one of {', '.join(allowed)}",
                              code="INVALID_ARGUMENT", param="status")
    if set(statuses) == set(STATUSES):
        statuses = ()  # every status: no condition
    return oa.Selection(
        statuses=statuses,
        operations=(args["operation"],) if args["operation"] else (),
        accounts=(args["account"],) if args["account"] else (),
        correlation=args["correlation"] or None,
        created_after=oa.parse_moment(args["since"], "since") if args["since"] else None,
        created_before=oa.parse_moment(args["until"], "until") if args["until"] else None,
    )


def _int_arg(name: str, default: int, allowed: tuple[int, ...] | None = None) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return value if allowed is None or value in allowed else default


def _encode(args: dict[str, Any]) -> str:
    pairs = []
    for k, v in args.items():
        pairs += [(k, x) for x in v] if isinstance(v, list) else ([(k, v)] if v else [])
    return urlencode(pairs)


def _qs(**changes: Any) -> str:
    """The current query string with some parameters changed (for paging links)."""
    args: dict[str, Any] = {k: request.args.getlist(k) for k in request.args}
    for k, v in changes.items():
        args[k] = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return "?" + urlencode([(k, x) for k, xs in args.items() for x in xs if x != ""])


def _time(value: Any) -> Markup:
    """A UTC time as <time>: the text is UTC, the page's script shows it in the browser's
    zone."""
    if value is None or value == "":
        return Markup("")
    try:
        when = _as_datetime(value)
    except ValueError:
        return Markup(escape(str(value)))
    if not isinstance(when, datetime):
        return Markup(escape(str(value)))
    iso = when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    return Markup('<time datetime="{}">{} UTC</time>').format(
        iso, when.strftime("%Y-%m-%d %H:%M:%S"))


def _pretty(text: Any, secrets: list[str]) -> str:
    """JSON indented for reading (credential keys and secrets masked); any other text as it
    is. Past ``MAX_SHOWN`` characters the rest is left out, and the page says so: masked
    before it is cut, so no part of a secret is left at the cut."""
    if text is None:
        return ""
    try:
        shown = json.dumps(redact.scrub(json.loads(text), secrets), ensure_ascii=False,
                           indent=2)
    except (TypeError, ValueError, RecursionError):  # not JSON, or nested too deep to walk
        shown = redact.scrub(str(text), secrets)
    if len(shown) > MAX_SHOWN:
        shown = (shown[:MAX_SHOWN] + f"\n… {len(shown) - MAX_SHOWN:,} more characters not "
                 "shown (sqlbridge show ID --json prints everything)")
    return shown

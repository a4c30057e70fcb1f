"""The dashboard over real HTTP on 127.0.0.1 (waitress, as ``sqlbridge dashboard`` serves it),
against a database filled by the sandbox demo and a worker run: CSRF, login, read-only, the
Host check, the bind rule, bulk and single actions with their audit rows, secrets and text.
The same pages in a real browser: test_dashboard_browser.py."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select, update

from sqlbridge import demo
from sqlbridge.cli import EXIT_USAGE, main
from sqlbridge.config import Settings
from sqlbridge.dashboard.server import Dashboard
from sqlbridge.db import make_engine
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.sandbox.server import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
)
from sqlbridge.schema import operator_action, outbox, sync_schedule
from sqlbridge.worker import Worker
from tests.conftest import FAST_WORKER

SECRETS = (SANDBOX_AFILNET_PASSWORD, SANDBOX_ANNA_PASSWORD, SANDBOX_ANNA_COMPANY_HASH)
HOSTILE = "<script>alert('x')</script> & \"quotes\" 😀"
PAGED = 45  # queued requests with correlation 'dash-page', for paging and bulk cancel
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclasses.dataclass
class Filled:
    url: str
    settings: Settings  # with the sandbox account, so the dashboard knows its secrets
    uncertain_id: int
    failed_id: int
    leaked_id: int  # a row whose stored error text carries the account password
    sync_root_id: int


def fill(path: Path) -> Filled:
    """The demo's database, plus an uncertain send (a dropped connection), queued requests to
    page through, a hostile correlation and a row with an unscrubbed secret."""
    url = f"sqlite:///{path}"
    demo.run(url, echo=lambda _line: None)
    engine = make_engine(url)
    with Sandbox(seed=11) as sb:
        account = sb.account("default")
        fast = dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet,
                                                                        read_timeout=0.5))
        settings = Settings(database_url=url, accounts={"default": fast}, worker=FAST_WORKER)
        queue = Queue(engine, settings)
        sb.faults.timeout_seconds = 1.5
        sb.fail_next(1, "timeout")
        uncertain = queue.enqueue("chat.sendmessage", {
            "platform": "whatsapp", "platformid": "100", "destination": "34600001000",
            "message": "lost in transit"}, correlation="dash-uncertain").id
        Worker(settings, engine, schedules=False).run(once=True)
    assert queue.get(uncertain)["status"] == "uncertain"
    for i in range(PAGED):
        queue.enqueue("user.getbalance", {}, correlation="dash-page", priority=i)
    leaked = queue.enqueue("user.getbalance", {}, correlation=HOSTILE).id
    with engine.begin() as conn:  # as if an older version had stored it unscrubbed
        conn.execute(update(outbox).where(outbox.c.id == leaked).values(
            status="failed", error_code="HTTP_500",
            error_message=f"server said: bad password {SANDBOX_AFILNET_PASSWORD} for "
                          f"{SANDBOX_AFILNET_USER}",
            response=json.dumps({"password": "p4ss-in-response", "hash": "x"})))
        failed = conn.execute(select(outbox.c.id).where(outbox.c.status == "failed",
                                                        outbox.c.id != leaked)
                              .order_by(outbox.c.id)).scalars().first()
        root = conn.execute(select(sync_schedule.c.last_request_id)).scalar_one()
    engine.dispose()
    return Filled(url, settings, uncertain, failed, leaked, root)


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return fill(tmp_path_factory.mktemp("dash") / "demo.db")


@pytest.fixture
def filled(demo_db: Filled, tmp_path: Path) -> Filled:
    """A private copy of the filled database: tests that change rows do not meet."""
    path = tmp_path / "copy.db"
    shutil.copy(demo_db.url.removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    return dataclasses.replace(demo_db, url=url,
                               settings=dataclasses.replace(demo_db.settings, database_url=url))


@pytest.fixture
def board(filled: Filled, request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    opts: dict[str, Any] = getattr(request, "param", {})
    engine = make_engine(filled.url)
    with Dashboard(filled.settings, engine, port=0, **opts) as d:
        yield d
    engine.dispose()


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def status_of(filled: Filled, rid: int) -> str:
    engine = make_engine(filled.url)
    try:
        return Queue(engine).get(rid)["status"]
    finally:
        engine.dispose()


def audit(filled: Filled) -> list[dict[str, Any]]:
    engine = make_engine(filled.url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(operator_action).order_by(operator_action.c.id))]
    engine.dispose()
    return rows


PAGES = ["", "requests", "failures", "schedules", "conversations", "anna", "actions",
         "conversations/channel/1", "conversations/chat/1"]


# -- actions and CSRF -----------------------------------------------------------------------

def test_retry_with_the_token_changes_the_row_and_is_audited(board: Dashboard,
                                                            filled: Filled) -> None:
    s = requests.Session()
    page = s.get(board.url + f"requests/{filled.uncertain_id}", timeout=30)
    r = s.post(board.url + f"requests/{filled.uncertain_id}/retry",
               data={"csrf": csrf_of(page.text)}, timeout=30)
    assert r.status_code == 200 and "retry done" in r.text
    assert status_of(filled, filled.uncertain_id) == "queued"
    row = audit(filled)[-1]
    assert (row["action"], row["via"], row["matched"]) == ("retry", "dashboard", 1)
    assert json.loads(row["criteria"])["ids"] == [filled.uncertain_id]


def test_a_post_without_the_token_or_with_another_session_s_is_refused(
        board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    s.get(board.url, timeout=30)
    target = board.url + f"requests/{filled.uncertain_id}/retry"
    assert s.post(target, data={}, timeout=30).status_code == 403
    other = requests.Session()
    token = csrf_of(other.get(board.url + "requests", timeout=30).text)
    assert s.post(target, data={"csrf": token}, timeout=30).status_code == 403
    # no session cookie at all (a cross-site form post never has our SameSite=Strict cookie)
    assert requests.post(target, data={"csrf": token}, timeout=30).status_code == 403
    assert status_of(filled, filled.uncertain_id) == "uncertain"
    assert audit(filled) == []


def test_cancel_a_queued_request_and_refuse_cancelling_a_finished_one(
        board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    token = csrf_of(s.get(board.url + "requests", timeout=30).text)
    queued = _ids(s, board, "?correlation=dash-page&status=queued")[0]
    r = s.post(board.url + f"requests/{queued}/cancel", data={"csrf": token}, timeout=30)
    assert "cancel done" in r.text and status_of(filled, queued) == "cancelled"
    r = s.post(board.url + f"requests/{filled.failed_id}/cancel", data={"csrf": token},
               timeout=30)
    assert "only queued requests can be cancelled" in r.text
    assert status_of(filled, filled.failed_id) == "failed"


def _ids(s: requests.Session, board: Dashboard, query: str) -> list[int]:
    html = s.get(board.url + "requests" + query, timeout=30).text
    return [int(x) for x in re.findall(r'<tr data-id="(\d+)"', html)]


def test_bulk_cancel_of_a_filtered_set_shows_the_count_then_changes_only_that_set(
        board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    preview = s.get(board.url + "bulk/cancel?correlation=dash-page", timeout=30)
    assert f"{PAGED} requests can be cancelled" in preview.text
    r = s.post(board.url + "bulk/cancel", data={"csrf": csrf_of(preview.text),
                                                "correlation": "dash-page"}, timeout=30)
    assert f"cancel: {PAGED} requests changed" in r.text
    assert "correlation=dash-page" in r.url  # back on the list, the filter kept
    row = audit(filled)[-1]
    assert (row["action"], row["matched"]) == ("cancel", PAGED)
    assert json.loads(row["criteria"])["correlation"] == "dash-page"
    assert status_of(filled, filled.uncertain_id) == "uncertain"


def test_bulk_without_a_filter_is_refused(board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    assert s.get(board.url + "bulk/retry", timeout=30).status_code == 400
    token = csrf_of(s.get(board.url + "requests", timeout=30).text)
    r = s.post(board.url + "bulk/retry", data={"csrf": token}, timeout=30)
    assert "needs a request id or at least one filter" in r.text
    assert audit(filled) == []


def test_schedule_disable_enable_and_run_now_are_audited(board: Dashboard,
                                                         filled: Filled) -> None:
    s = requests.Session()
    token = csrf_of(s.get(board.url + "schedules", timeout=30).text)
    for action, enabled in (("disable", False), ("enable", True), ("disable", False),
                            ("run-now", True)):
        r = s.post(board.url + f"schedules/{action}",
                   data={"csrf": token, "name": "demo-chat-sync"}, timeout=30)
        assert f"{action} done" in r.text
        engine = make_engine(filled.url)
        with engine.connect() as conn:
            assert conn.execute(select(sync_schedule.c.enabled)).scalar_one() is enabled
        engine.dispose()
    assert [a["action"] for a in audit(filled)] == [
        "schedule.disable", "schedule.enable", "schedule.disable", "schedule.run-now"]
    r = s.post(board.url + "schedules/enable", data={"csrf": token, "name": "nope"},
               timeout=30)
    assert "schedule &#39;nope&#39; does not exist" in r.text


@pytest.mark.parametrize("board", [{"read_only": True}], indirect=True)
def test_read_only_hides_and_refuses_every_action(board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    for path in (f"requests/{filled.uncertain_id}", "requests", "failures", "schedules"):
        html = s.get(board.url + path, timeout=30).text
        assert 'method="post"' not in html, path
    for path, form in ((f"requests/{filled.uncertain_id}/retry", {}),
                       ("bulk/cancel", {"correlation": "dash-page"}),
                       ("schedules/disable", {"name": "demo-chat-sync"})):
        r = s.post(board.url + path, data={"csrf": _session_token(s, board), **form},
                   timeout=30)
        assert r.status_code == 403 and "read-only" in r.text, path
    assert status_of(filled, filled.uncertain_id) == "uncertain"
    assert audit(filled) == []


def _session_token(s: requests.Session, board: Dashboard) -> str:
    """The session's CSRF token (read-only pages have no form, but every page names it)."""
    html_text = s.get(board.url, timeout=30).text
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html_text).group(1)  # type: ignore[union-attr]


# -- login, cookies, hosts, bind -----------------------------------------------------------

@pytest.mark.parametrize("board", [{"password": "correct horse ☃"}], indirect=True)
def test_a_password_needs_the_login_and_the_cookie_is_httponly_and_samesite_strict(
        board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    r = s.get(board.url + "requests?status=failed", timeout=30)
    assert "/login" in r.url and 'type="password"' in r.text
    assert 'href="/failures"' not in r.text  # no navigation before the login
    cookie = r.history[0].headers.get("Set-Cookie", "") if r.history else ""
    cookie = cookie or r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token = csrf_of(r.text)
    bad = s.post(board.url + "login", data={"csrf": token, "password": "wrong"}, timeout=30)
    assert bad.status_code == 401
    assert s.post(board.url + f"requests/{filled.uncertain_id}/retry",
                  data={"csrf": token}, timeout=30).status_code == 401
    ok = s.post(board.url + "login", data={"csrf": token, "password": "correct horse ☃",
                                           "next": "/requests?status=failed"}, timeout=30)
    assert ok.url.endswith("/requests?status=failed") and 'id="requests"' in ok.text
    # the token of before the login is void: a fresh session got a fresh one
    assert s.post(board.url + f"requests/{filled.uncertain_id}/retry",
                  data={"csrf": token}, timeout=30).status_code == 403
    # an absolute 'next' does not send the user to another site
    s2 = requests.Session()
    t2 = csrf_of(s2.get(board.url + "login", timeout=30).text)
    r = s2.post(board.url + "login", data={"csrf": t2, "password": "correct horse ☃",
                                           "next": "//evil.example/"},
                allow_redirects=False, timeout=30)
    assert r.headers["Location"] == "/"


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example/", "https://evil.example/",
                                    "evil.example", "/ok\r\nSet-Cookie: x=1", ""])
def test_after_login_only_a_local_path_is_followed(target: str) -> None:
    from sqlbridge.dashboard.app import _local_path

    assert _local_path(target) is None
    assert _local_path("/requests?status=failed&page=2") == "/requests?status=failed&page=2"


@pytest.mark.parametrize("board", [{"password": "pw-123456"}], indirect=True)
def test_too_many_wrong_passwords_lock_the_login(board: Dashboard) -> None:
    s = requests.Session()
    token = csrf_of(s.get(board.url + "login", timeout=30).text)
    codes = [s.post(board.url + "login", data={"csrf": token, "password": f"guess{i}"},
                    timeout=30).status_code for i in range(11)]
    assert codes == [401] * 10 + [429]
    # locked: even the right password waits
    assert s.post(board.url + "login", data={"csrf": token, "password": "pw-123456"},
                  timeout=30).status_code == 429


def test_without_a_password_only_loopback_host_headers_are_answered(board: Dashboard) -> None:
    assert requests.get(board.url, timeout=30).status_code == 200
    assert requests.get(f"http://localhost:{board.port}/", timeout=30).status_code == 200
    # a page that rebinds its own name to 127.0.0.1 sends its own name as Host
    r = requests.get(board.url, headers={"Host": f"evil.example:{board.port}"}, timeout=30)
    assert r.status_code == 400


def test_responses_carry_a_strict_content_security_policy(board: Dashboard) -> None:
    r = requests.get(board.url, timeout=30)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)  # type: ignore[union-attr]
    assert f'<script nonce="{nonce}">' in r.text
    assert r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.0.2.10", "::", "example.com"])
def test_a_non_loopback_bind_without_a_password_is_refused(bind: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["dashboard", "--bind", bind, "--database-url",
                                  f"sqlite:///{tmp_path / 'x.db'}"], env={
                                      "SQLBRIDGE_DASHBOARD_PASSWORD": None})
    assert r.exit_code == EXIT_USAGE
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve the dashboard on")
    assert "Traceback" not in r.output


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("\n")
    r = CliRunner().invoke(main, ["dashboard", "--bind", "0.0.0.0", "--password-file", str(f),
                                  "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert r.exit_code == EXIT_USAGE and "password is empty" in r.output


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "localhost", "[::1]"])
def test_loopback_binds_need_no_password(host: str) -> None:
    from sqlbridge.dashboard.rules import bind_problem

    assert bind_problem(host, None) is None


# -- what pages show ------------------------------------------------------------------------

def test_no_secret_appears_in_any_page(board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    paths = PAGES + [f"requests/{i}" for i in (filled.leaked_id, filled.uncertain_id,
                                               filled.failed_id, filled.sync_root_id)]
    paths += [f"requests/{i}" for i in range(1, 30)]
    for path in paths:
        r = s.get(board.url + path, timeout=30)
        assert r.status_code == 200, path
        for secret in (*SECRETS, "p4ss-in-response", "sandbox-pass", "demo%40example.com"):
            assert secret not in r.text, (path, secret)
    leaked = s.get(board.url + f"requests/{filled.leaked_id}", timeout=30).text
    assert "bad password *** for" in leaked
    assert '"password": "***"' in html.unescape(leaked)  # a credential key in the response, masked


def test_unicode_long_texts_and_markup_come_back_intact_and_escaped(board: Dashboard,
                                                                   filled: Filled) -> None:
    import html as html_mod

    s = requests.Session()
    page = s.get(board.url + "conversations/chat/1", timeout=30).text
    texts = [html_mod.unescape(t) for t in re.findall(r'<pre class="message">(.*?)</pre>',
                                                      page, re.S)]
    assert demo.UNICODE_TEXT in texts and demo.LONG_TEXT in texts
    listing = s.get(board.url + "requests?correlation=" + requests.utils.quote(HOSTILE),
                    timeout=30).text
    assert "<script>alert" not in listing
    assert HOSTILE in html_mod.unescape(listing)
    assert len(re.findall(r'<tr data-id="', listing)) == 1


def test_filters_and_paging_live_in_the_url(board: Dashboard, filled: Filled) -> None:
    s = requests.Session()
    first = _ids(s, board, "?correlation=dash-page&per=20")
    second = _ids(s, board, "?correlation=dash-page&per=20&page=2")
    third = _ids(s, board, "?correlation=dash-page&per=20&page=3")
    assert (len(first), len(second), len(third)) == (20, 20, PAGED - 40)
    assert len(set(first + second + third)) == PAGED
    assert first == sorted(first, reverse=True) and min(first) > max(second)
    assert _ids(s, board, "?status=uncertain") == [filled.uncertain_id]
    assert _ids(s, board, "?operation=user.getbalance&account=nobody") == []
    assert _ids(s, board, "?since=2000-01-01&until=2000-01-02") == []
    r = s.get(board.url + "requests?since=yesterday", timeout=30)
    assert r.status_code == 400 and "neither an age" in r.text
    assert s.get(board.url + "failures?status=succeeded", timeout=30).status_code == 400


def test_a_sync_run_links_its_children_and_they_their_parent(board: Dashboard,
                                                             filled: Filled) -> None:
    s = requests.Session()
    root = s.get(board.url + f"requests/{filled.sync_root_id}", timeout=30).text
    kids = re.findall(r'<table id="children">.*?</table>', root, re.S)
    assert kids, "the sync run shows no children"
    child = int(re.findall(r'href="/requests/(\d+)"', kids[0])[0])
    page = s.get(board.url + f"requests/{child}", timeout=30).text
    assert f'id="parent" href="/requests/{filled.sync_root_id}"' in page


def test_the_demo_ends_with_the_dashboard_command_and_that_command_serves(
        tmp_path: Path) -> None:
    import shlex
    import subprocess
    import sys

    lines: list[str] = []
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo.run(url, echo=lines.append)
    assert lines[-1] == demo.DASHBOARD_HINT.format(url=url)
    command = shlex.split(lines[-1].split(":", 1)[1].split("(")[0])
    assert command[:2] == ["sqlbridge", "dashboard"]
    proc = subprocess.Popen([sys.executable, "-m", "sqlbridge", *command[1:], "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # type: ignore[union-attr]
        m = re.match(r"dashboard at (http://127\.0\.0\.1:\d+/); Ctrl\+C stops it", first)
        assert m, first
        r = requests.get(m.group(1) + "requests?status=failed", timeout=30)
        assert r.status_code == 200 and "CHANNEL_NOT_FOUND" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bulk_retry_from_failures_acts_on_failed_and_uncertain_only(board: Dashboard,
                                                                     filled: Filled) -> None:
    s = requests.Session()
    listing = html.unescape(s.get(board.url + "failures?account=default", timeout=30).text)
    link = re.search(r'id="bulk-retry" href="([^"]+)"', listing).group(1)  # type: ignore[union-attr]
    assert 'id="bulk-cancel"' not in listing  # nothing failed or uncertain can be cancelled
    preview = s.get(board.url + link.lstrip("/"), timeout=30).text
    assert "4 requests can be retried" in preview
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', preview))
    assert re.findall(r'name="status" value="(\w+)"', preview) == ["failed", "uncertain"]
    data = [(k, v) for k, v in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                                          preview)]
    r = s.post(board.url + "bulk/retry", data=data, timeout=30)
    assert "retry: 4 requests changed" in r.text and form["account"] == "default"
    assert status_of(filled, filled.uncertain_id) == "queued"
    criteria = json.loads(audit(filled)[-1]["criteria"])
    assert criteria["statuses"] == ["failed", "uncertain"]


@hsettings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(
    st.sampled_from(["status", "operation", "account", "correlation", "since", "until", "page",
                     "per"]),
    st.one_of(st.text(max_size=500), st.sampled_from(["NaN", "-1", "1e309", "9" * 40, "0",
                                                      "2h", "queued", "\x00"])),
    max_size=6))
def test_any_filter_text_gives_a_page_or_a_clear_400_never_a_500(
        board: Dashboard, params: dict[str, str]) -> None:
    for path in ("requests", "failures", "bulk/retry", "bulk/cancel"):
        r = requests.get(board.url + path, params=params, timeout=30)
        assert r.status_code in (200, 400), (path, params, r.status_code)
        if r.status_code == 400:
            assert 'role="alert"' in r.text


@pytest.mark.parametrize("path", ["requests/99999999999999999999999", "requests/-1",
                                  "conversations/chat/99999999999999999999",
                                  "conversations/channel/0", "requests/0"])
def test_ids_out_of_range_are_404(board: Dashboard, path: str) -> None:
    assert requests.get(board.url + path, timeout=30).status_code == 404


def test_an_unreachable_database_is_a_one_line_503(filled: Filled, tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "x.db"
    engine = make_engine(f"sqlite:///{missing}")
    with Dashboard(filled.settings, engine, port=0) as d:
        r = requests.get(d.url, timeout=30)
    engine.dispose()
    assert r.status_code == 503 and "cannot use the database: unable to open" in r.text
    assert "Traceback" not in r.text


def test_every_page_reads_on_every_backend(engine: Any, settings: Settings) -> None:
    """The same pages on SQLite and, with SQLBRIDGE_TEST_MSSQL_URL, on SQL Server: the reads
    are Core selects, the hourly chart a SUM(CASE) per hour, paging OFFSET/FETCH."""
    from sqlalchemy import insert

    from sqlbridge import sync
    from sqlbridge.schema import (
        anna_department,
        anna_user_request,
        chat,
        chat_channel,
        chat_message,
    )

    queue = Queue(engine, settings)
    root = queue.enqueue("user.getbalance", {}, correlation="root").id
    for i in range(3):
        queue.enqueue("user.getbalance", {}, correlation=f"child {i} ✓")
    with engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id != root).values(parent_id=root))
        conn.execute(update(outbox).where(outbox.c.id == root).values(
            status="failed", error_code="X", finished_at=outbox.c.created_at))
        conn.execute(insert(chat_channel).values(account="default", platform="whatsapp",
                                                 platformid="100", name="Canal ç"))
        conn.execute(insert(chat).values(account="default", platform="whatsapp",
                                         platformid="100", destination="346", last_message="oi"))
        conn.execute(insert(chat).values(account="default", platform="whatsapp",
                                         platformid="100", destination="999", last_message="z"))
        conn.execute(insert(chat_message), [
            {"account": "default", "platform": "whatsapp", "platformid": "100",
             "messageid": str(i), "destination": "346", "message": f"m{i} 😀",
             "sent": i % 2 == 0, "unread": i == 1} for i in range(3)])
        conn.execute(insert(anna_department).values(account="default", alias="SUP"))
        conn.execute(insert(anna_user_request).values(account="default", user_key="1",
                                                      protocol="P1", pending=True))
    sync.add_schedule(engine, "every-5m", "sync.chats", {}, "5m")
    with engine.connect() as conn:
        channel_id = conn.execute(select(chat_channel.c.id)).scalar_one()
        chat_id = conn.execute(select(chat.c.id).where(chat.c.destination == "346")).scalar_one()
    with Dashboard(settings, engine, port=0) as d:
        s = requests.Session()
        for path in ("", "requests?per=20&page=1", "requests?page=2&per=20",
                     "failures?since=1d", f"requests/{root}", "schedules", "conversations",
                     f"conversations/channel/{channel_id}", f"conversations/chat/{chat_id}",
                     "anna", "actions", "bulk/retry?status=failed"):
            r = s.get(d.url + path, timeout=30)
            assert r.status_code == 200, path
        chats = s.get(d.url + f"conversations/channel/{channel_id}", timeout=30).text
        order = re.findall(r'href="/conversations/chat/\d+">(\d+)</a>', chats)
        assert order == ["346", "999"]  # the chat with an unread message first
        channels = s.get(d.url + "conversations", timeout=30).text
        assert re.search(r'<td class="num">1</td>', channels)  # one unread incoming message
        kids = s.get(d.url + f"requests/{root}", timeout=30).text
        assert "Children (3)" in kids and kids.count('<span class="s-queued">') == 3
        token = csrf_of(s.get(d.url + "requests", timeout=30).text)
        r = s.post(d.url + f"requests/{root}/retry", data={"csrf": token}, timeout=30)
        assert "retry done" in r.text
        r = s.post(d.url + "schedules/disable", data={"csrf": token, "name": "every-5m"},
                   timeout=30)
        assert "disable done" in r.text
    assert queue.get(root)["status"] == "queued"


def test_the_overview_counts_and_charts_match_the_outbox(board: Dashboard, filled: Filled) -> None:
    from sqlalchemy import func

    engine = make_engine(filled.url)
    with engine.connect() as conn:
        counts = dict(conn.execute(select(outbox.c.status, func.count())
                                   .group_by(outbox.c.status)).all())
    engine.dispose()
    page = requests.get(board.url, timeout=30).text
    for status, n in counts.items():
        assert f'<b id="count-{status}">{n}</b>' in page
    bad = counts.get("failed", 0) + counts.get("uncertain", 0)
    assert f"Succeeded, last 24 h ({counts['succeeded']})" in page
    # one failed row was forced to failed without a finish time: it is not in the chart
    assert f"Failed or uncertain, last 24 h ({bad - 1})" in page
    bars = [int(n) for n in re.findall(r"<title>\d\d:00 UTC: (\d+)</title>", page)]
    assert len(bars) == 48 and sum(bars) == counts["succeeded"] + bad - 1


def test_huge_and_deeply_nested_responses_render(board: Dashboard, filled: Filled) -> None:
    from sqlbridge.dashboard.app import MAX_SHOWN

    engine = make_engine(filled.url)
    huge = json.dumps({"text": "ç" * (3 * MAX_SHOWN), "password": "hidden-4242"})
    deep = "[" * 5000 + "]" * 5000
    with engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == 1).values(response=huge))
        conn.execute(update(outbox).where(outbox.c.id == 2).values(response=deep))
        conn.execute(update(outbox).where(outbox.c.id == 3).values(
            response="not json " + SANDBOX_AFILNET_PASSWORD))
    engine.dispose()
    r = requests.get(board.url + "requests/1", timeout=60)
    assert r.status_code == 200 and "more characters not shown" in r.text
    assert len(r.text) < 3 * MAX_SHOWN
    r = requests.get(board.url + "requests/2", timeout=30)
    assert r.status_code == 200 and deep in r.text
    r = requests.get(board.url + "requests/3", timeout=30)
    assert "not json ***" in r.text


@pytest.mark.parametrize("missing", ["flask", "waitress"])
def test_without_the_dashboard_extra_the_command_says_what_to_install(
        missing: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{missing!r}] = None; from sqlbridge.cli import main; "
            "main()")
    r = subprocess.run([sys.executable, "-c", code, "dashboard", "--database-url",
                        f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 3
    assert r.stderr.strip() == (f"error: the dashboard needs {missing}: pip install "
                                "'sqlbridge[dashboard]'")


def test_a_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    import socket

    from sqlbridge.install import install

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    install(engine)
    engine.dispose()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["dashboard", "--port", str(port), "--database-url",
                                      f"sqlite:///{tmp_path / 'x.db'}"])
    assert r.exit_code == 3
    assert r.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_docs_dashboard_md_names_only_options_the_command_has() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "dashboard.md").read_text(encoding="utf-8")
    help_text = CliRunner().invoke(main, ["dashboard", "--help"]).output
    table = "\n".join(line for line in doc.splitlines() if line.startswith("| `"))
    options = set(re.findall(r"`(--[a-z-]+)", table))
    assert options >= {"--bind", "--port", "--password-file", "--password", "--read-only"}
    for option in options:
        assert option in help_text, option
    assert "SQLBRIDGE_DASHBOARD_PASSWORD" in help_text
    for shot in re.findall(r"\]\((dashboard/[\w-]+\.png)\)", doc):
        assert (Path(__file__).parent.parent / "docs" / shot).stat().st_size > 1000, shot


def test_stop_survives_a_wake_up_that_ran_the_close_before_its_own_write(
        engine: Any, settings: Settings) -> None:
    """A response thread wakes the server loop between stop() queueing the close and writing
    its own wake-up byte: the loop closes every socket, the trigger pipe too, and the write
    that follows finds it shut. Here the first write stands for that other wake-up."""
    import time

    board = Dashboard(settings, engine, port=0).start()
    trigger = board.server.trigger
    physical_pull = trigger._physical_pull

    def woken_by_another_thread_first() -> None:
        physical_pull()
        deadline = time.monotonic() + 30
        while not trigger._closed and time.monotonic() < deadline:
            time.sleep(0.01)
        physical_pull()  # the stopping thread's own write, after the pipe closed

    trigger._physical_pull = woken_by_another_thread_first
    board.stop()
    assert trigger._closed and board._thread is not None and not board._thread.is_alive()

"""Operator actions in bulk (list, retry, cancel with filters), their audit rows, the T-SQL
procedures that mirror them, the queue_health figures and ``status --json/--watch``."""

from __future__ import annotations

import json
import os
import pty
import re
import select as select_mod
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from sqlbridge import install as installer
from sqlbridge import monitoring, tsql
from sqlbridge import operator_actions as oa
from sqlbridge import queue as q
from sqlbridge.cli import main
from sqlbridge.errors import ValidationError
from sqlbridge.queue import Queue
from sqlbridge.schema import operator_action, outbox
from sqlbridge.sqlfuncs import utcnow

CHATS = {"platform": "whatsapp", "platformid": "100"}
SEND = {**CHATS, "destination": "34600000001", "message": "hi"}
# 001_schema.sql as released: installs that applied it must accept every later version.
RELEASED_001_SHA256 = "4730b2cbf2041301b16bef846c76fad946e02bf21adb78cd30f6d084efa06dbb"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def set_rows(queue: Queue, ids: list[int], **values: Any) -> None:
    with queue.engine.begin() as c:
        c.execute(update(outbox).where(outbox.c.id.in_(ids)).values(**values))


def statuses(queue: Queue, ids: list[int]) -> list[str]:
    return [queue.get(i)["status"] for i in ids]


@pytest.fixture
def mixed(queue: Queue) -> dict[str, list[int]]:
    """Sends and reads in every state an operator meets."""
    ids: dict[str, list[int]] = {}
    ids["uncertain_sends"] = [queue.enqueue("chat.sendmessage", SEND, correlation="batch-7").id
                              for _ in range(5)]
    ids["failed_reads"] = [queue.enqueue("chat.getchats", CHATS, account="crm").id
                           for _ in range(3)]
    ids["queued_reads"] = [queue.enqueue("chat.getchats", CHATS).id for _ in range(4)]
    ids["processing"] = [queue.enqueue("chat.getchats", CHATS).id]
    ids["old_uncertain"] = [queue.enqueue("chat.sendmessage", SEND).id]
    set_rows(queue, ids["uncertain_sends"], status="uncertain", error_code="READ_TIMEOUT",
             finished_at=utcnow(), attempts=1)
    set_rows(queue, ids["failed_reads"], status="failed", error_code="CHANNEL_NOT_FOUND",
             finished_at=utcnow(), attempts=1)
    set_rows(queue, ids["processing"], status="processing", locked_by="w",
             locked_until=utcnow(60), lease_token="t")
    set_rows(queue, ids["old_uncertain"], status="uncertain", error_code="READ_TIMEOUT",
             created_at=utcnow(-3 * 86400), finished_at=utcnow(-3 * 86400))
    return ids


# -- list --------------------------------------------------------------------------------------

def test_list_filters_by_every_field(queue: Queue, mixed: dict[str, list[int]]) -> None:
    def ids(**kw: Any) -> set[int]:
        return {r["id"] for r in oa.list_requests(queue.engine, oa.Selection(**kw),
                                                  limit=100)["requests"]}

    assert ids(statuses=("uncertain",)) == set(mixed["uncertain_sends"] + mixed["old_uncertain"])
    assert ids(operations=("CHAT.GetChats",)) == set(
        mixed["failed_reads"] + mixed["queued_reads"] + mixed["processing"])
    assert ids(accounts=("crm",)) == set(mixed["failed_reads"])
    assert ids(correlation="batch-7") == set(mixed["uncertain_sends"])
    assert ids(error_codes=("CHANNEL_NOT_FOUND",)) == set(mixed["failed_reads"])
    assert ids(statuses=("uncertain",), created_after=7200.0) == set(mixed["uncertain_sends"])
    assert ids(created_before=86400.0) == set(mixed["old_uncertain"])
    assert ids(finished_after=3600.0) == set(mixed["uncertain_sends"] + mixed["failed_reads"])
    assert ids(finished_before=86400.0) == set(mixed["old_uncertain"])


def test_list_pages_newest_first_as_a_table_or_json(db_url: str, queue: Queue,
                                                    mixed: dict[str, list[int]]) -> None:
    code, out, _ = run("list", "--database-url", db_url, "--limit", "5", "--json")
    page = json.loads(out)
    every = sorted(sum(mixed.values(), []), reverse=True)
    assert code == 0 and page["total"] == len(every)
    assert [r["id"] for r in page["requests"]] == every[:5]
    code, out, _ = run("list", "--database-url", db_url, "--limit", "5", "--offset", "5")
    assert code == 0 and f"6-10 of {len(every)}; next page: --offset 10" in out
    assert str(every[5]) in out.split("\n")[2]
    code, out, _ = run("list", "--database-url", db_url, "--status", "uncertain",
                       "--operation", "chat.sendmessage", "--since", "2h")
    assert code == 0 and "1-5 of 5" in out and "next page" not in out


@pytest.mark.parametrize("args, says", [
    (["--since", "yesterday"], "--since 'yesterday' is neither an age"),
    (["--limit", "0"], "Invalid value for '--limit'"),
    (["--status", "done"], "Invalid value for '--status'"),
])
def test_list_refuses_bad_filters_in_one_line(db_url: str, queue: Queue, args: list[str],
                                              says: str) -> None:
    result = CliRunner().invoke(main, ["list", "--database-url", db_url, *args])
    assert result.exit_code in (2, 4) and says in result.output
    assert "Traceback" not in result.output


# -- bulk retry / cancel ---------------------------------------------------------------------

def test_bulk_retry_of_uncertain_sends_since_2h_is_recorded(db_url: str, queue: Queue,
                                                            mixed: dict[str, list[int]]) -> None:
    args = ["retry", "--database-url", db_url, "--status", "uncertain", "--operation",
            "chat.sendmessage", "--since", "2h"]
    code, out, _ = run(*args, "--dry-run")
    assert code == 0 and "would retry 5 requests" in out
    assert set(statuses(queue, mixed["uncertain_sends"])) == {"uncertain"}  # dry run
    code, out, _ = run(*args, "--yes", "--actor", "ops@example")
    assert code == 0 and "5 requests queued again" in out
    assert set(statuses(queue, mixed["uncertain_sends"])) == {"queued"}
    assert statuses(queue, mixed["old_uncertain"]) == ["uncertain"]  # older than 2h
    assert set(statuses(queue, mixed["failed_reads"])) == {"failed"}
    row = queue.get(mixed["uncertain_sends"][0])
    assert (row["attempts"], row["error_code"], row["finished_at"]) == (0, None, None)
    audit = oa.history(queue.engine)
    assert len(audit) == 1  # the dry run is not an action
    a = audit[0]
    assert (a["action"], a["actor"], a["via"], a["matched"]) == ("retry", "ops@example",
                                                                  "cli", 5)
    assert a["finished_at"] is not None and a["requested_at"] is not None
    code, out, _ = run("actions", "--database-url", db_url)
    assert code == 0 and "ops@example" in out and "retry" in out
    code, out, _ = run("actions", "--database-url", db_url, "--json")
    assert json.loads(out)[0]["matched"] == 5
    criteria = json.loads(a["criteria"])
    assert criteria["statuses"] == ["uncertain"]
    assert criteria["operations"] == ["chat.sendmessage"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", criteria["created_after"])


def test_bulk_cancel_touches_only_queued_rows(db_url: str, queue: Queue,
                                              mixed: dict[str, list[int]]) -> None:
    code, out, _ = run("cancel", "--database-url", db_url, "--operation", "chat.getchats",
                       "--yes")
    assert code == 0 and "4 requests cancelled" in out
    assert set(statuses(queue, mixed["queued_reads"])) == {"cancelled"}
    assert statuses(queue, mixed["processing"]) == ["processing"]  # being sent: left alone
    assert set(statuses(queue, mixed["failed_reads"])) == {"failed"}
    assert queue.get(mixed["queued_reads"][0])["error_code"] == "CANCELLED"


def test_without_a_terminal_a_bulk_action_needs_yes(db_url: str, queue: Queue,
                                                    mixed: dict[str, list[int]]) -> None:
    code, _, err = run("cancel", "--database-url", db_url, "--status", "queued")
    assert code == 2 and "needs confirmation: not a terminal, so pass --yes" in err
    assert set(statuses(queue, mixed["queued_reads"])) == {"queued"}
    assert oa.history(queue.engine) == []


@pytest.mark.parametrize("args, says", [
    ([], "needs a request id or at least one filter"),
    (["--status", "succeeded"], "--status succeeded can never match"),
])
def test_bulk_retry_refuses_an_empty_or_impossible_filter(db_url: str, args: list[str],
                                                          says: str) -> None:
    code, _, err = run("retry", "--database-url", db_url, "--yes", *args)
    assert code == 4 and says in err


def test_all_says_every_request_explicitly(db_url: str, queue: Queue,
                                           mixed: dict[str, list[int]]) -> None:
    code, out, _ = run("cancel", "--database-url", db_url, "--all", "--yes")
    assert code == 0 and "4 requests cancelled" in out


def test_a_bulk_action_works_in_chunks_on_the_set_as_it_began(
        queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oa, "CHUNK", 3)
    ids = [queue.enqueue("chat.getchats", CHATS).id for _ in range(10)]
    assert oa.apply(queue.engine, "cancel", oa.Selection(statuses=("queued",)),
                    actor="t") == 10
    assert set(statuses(queue, ids)) == {"cancelled"}
    # A request enqueued after the action began is not part of its set.
    sel = oa.Selection(operations=("chat.getchats",)).resolve(queue.engine)
    late = queue.enqueue("chat.getchats", CHATS).id
    with queue.engine.connect() as c:
        matched = c.execute(select(outbox.c.id).where(*sel.conditions())).scalars().all()
    assert late not in matched and set(ids) <= set(matched)


def test_single_request_retry_and_cancel_keep_their_messages_and_are_recorded(
        db_url: str, queue: Queue, mixed: dict[str, list[int]]) -> None:
    rid = mixed["failed_reads"][0]
    assert run("retry", str(rid), "--database-url", db_url)[1] == f"request {rid} queued again\n"
    code, _, err = run("cancel", str(mixed["processing"][0]), "--database-url", db_url)
    assert code == 5 and "is processing; only queued requests can be cancelled" in err
    code, _, err = run("retry", "999999", "--database-url", db_url)
    assert code == 5 and "request 999999 does not exist" in err
    assert [a["matched"] for a in oa.history(queue.engine)] == [0, 0, 1]
    code, _, _ = run("retry", str(rid), "--status", "failed", "--database-url", db_url)
    assert code == 2


def test_selection_validates_its_values() -> None:
    with pytest.raises(ValidationError, match="allowed: queued, processing"):
        oa.Selection(statuses=("nope",))
    with pytest.raises(ValidationError, match="correlation must be 1 to 400"):
        oa.Selection(correlation="x" * 401)
    assert oa.parse_moment("90m", "--since") == 5400.0
    assert oa.parse_moment("2026-01-31T08:00:00+01:00", "--since").hour == 7


def confirm_on_a_terminal(db_url: str, answer: bytes, *args: str) -> str:
    """Run the CLI with a real pseudo-terminal as stdin and stdout; answer its question."""
    leader, follower = pty.openpty()
    env = {**os.environ, "SQLBRIDGE_DATABASE_URL": db_url, "SQLBRIDGE_CONFIG": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sqlbridge", *args], stdin=follower,
                            stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select_mod.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if b"[y/N]" in seen and answer:
                    os.write(leader, answer)
                    answer = b""
            elif proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=60)
        os.close(leader)
    return seen.decode("utf-8", "replace")


def test_on_a_terminal_a_bulk_action_asks_first(db_url: str, queue: Queue,
                                                mixed: dict[str, list[int]]) -> None:
    said = confirm_on_a_terminal(db_url, b"n\n", "cancel", "--status", "queued")
    assert "cancel 4 requests matching" in said and "cancelled" not in said.split("[y/N]")[1]
    assert set(statuses(queue, mixed["queued_reads"])) == {"queued"}
    said = confirm_on_a_terminal(db_url, b"y\n", "cancel", "--status", "queued")
    assert "4 requests cancelled" in said
    assert set(statuses(queue, mixed["queued_reads"])) == {"cancelled"}


# -- the same actions from T-SQL ---------------------------------------------------------------

def test_the_t_sql_procedures_make_the_same_change_for_the_operator_role() -> None:
    text = (tsql.SQL_DIR / "110_procedures.sql").read_text(encoding="utf-8")
    for action, changes in (("retry", q.retry_changes()),
                            ("cancel", q.cancel_changes(oa.BULK_CANCEL_MESSAGE))):
        body = text.split(f"ALTER PROCEDURE sqlbridge.{action}_requests\n", 1)[1]
        body = body.split("\nEND;\nGO\n", 1)[0]
        assert f"UPDATE sqlbridge.outbox SET {tsql._set_clause(changes)}" in body
        guard = ", ".join(f"N'{s}'" for s in oa.ACTIONS[action])
        assert body.count(f"status IN ({guard})") == 3  # dry run, chunk picker, update
        assert f"SELECT TOP ({oa.CHUNK}) id" in body and "id <= @max_id" in body
        assert "INSERT INTO sqlbridge.operator_action" in body and "ORIGINAL_LOGIN()" in body
        assert "@dry_run BIT = 0" in body and "@matched INT = NULL OUTPUT" in body
        assert f"GRANT EXECUTE ON sqlbridge.{action}_requests TO sqlbridge_operator;" in text
        assert f"GRANT EXECUTE ON sqlbridge.{action}_requests TO sqlbridge_caller;" not in text
    assert "status = N'queued', attempts = 0" in tsql._set_clause(q.retry_changes())


# -- installs that exist already ---------------------------------------------------------------

def test_the_released_table_script_never_changes() -> None:
    body = (tsql.SQL_DIR / "001_schema.sql").read_text(encoding="utf-8")
    assert installer.checksum(body) == RELEASED_001_SHA256, (
        "001_schema.sql changed: installs that applied it will refuse to upgrade. Put new "
        "tables in a new numbered script (schema.py: info={'script': ...})")


def test_an_install_that_applied_001_accepts_the_audit_table_script() -> None:
    applied = {"001_schema.sql": RELEASED_001_SHA256}
    todo = [name for name, _ in installer.plan(applied)]
    assert todo[0] == "002_operator_action.sql" and "001_schema.sql" not in todo
    body = (tsql.SQL_DIR / "002_operator_action.sql").read_text(encoding="utf-8")
    assert "IF OBJECT_ID(N'sqlbridge.operator_action', N'U') IS NULL" in body


def test_an_existing_sqlite_database_gets_the_audit_table(queue: Queue) -> None:
    if queue.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's install")
    operator_action.drop(queue.engine)
    installer.install(queue.engine)
    assert oa.history(queue.engine) == []


# -- queue health and status ----------------------------------------------------------------------

def test_queue_health_counts_what_needs_attention(queue: Queue) -> None:
    due = [queue.enqueue("chat.getchats", CHATS).id for _ in range(3)]
    later = queue.enqueue("chat.getchats", CHATS, not_before=q._utc_naive()
                          + timedelta(hours=1)).id
    stuck = queue.enqueue("chat.getchats", CHATS).id
    unsure = queue.enqueue("chat.sendmessage", SEND).id
    set_rows(queue, due[:1], available_at=utcnow(-100))
    set_rows(queue, [stuck], status="processing", locked_until=utcnow(-5), lease_token="x")
    set_rows(queue, [unsure], status="uncertain", finished_at=utcnow())
    rows = {r["operation"]: r for r in monitoring.queue_health(queue.engine)}
    reads = rows["chat.getchats"]
    assert (reads["queued"], reads["due"], reads["processing"], reads["stuck"]) == (4, 3, 1, 1)
    assert 99 <= reads["oldest_queued_age_seconds"] <= 160
    assert rows["chat.sendmessage"]["uncertain"] == 1
    assert rows["chat.sendmessage"]["oldest_queued_age_seconds"] is None
    assert later not in due
    with queue.engine.begin() as c:
        c.execute(delete(outbox))
    assert monitoring.queue_health(queue.engine) == []


def test_status_json_has_the_queue_health_figures(db_url: str, queue: Queue,
                                                  mixed: dict[str, list[int]]) -> None:
    before = monitoring.queue_health(queue.engine)
    code, out, _ = run("status", "--json", "--database-url", db_url)
    after = monitoring.queue_health(queue.engine)
    data = json.loads(out)
    assert code == 0 and len(data["queue_health"]) == len(before) == len(after)
    # The oldest age is whole seconds of the clock at each read: status's lies between the
    # reads before and after it (a second boundary may fall between them); the rest is equal.
    age = "oldest_queued_age_seconds"
    for got, first, last in zip(data["queue_health"], before, after, strict=True):
        assert {**got, age: None} == {**first, age: None} == {**last, age: None}
        if first[age] is None:
            assert got[age] is None and last[age] is None
        else:
            assert first[age] <= got[age] <= last[age], (first, got, last)
    assert data["queue_totals"]["uncertain"] == 6 and data["queue_totals"]["queued"] == 4


def test_status_watch_redraws_and_stops_after_count(db_url: str,
                                                    mixed: dict[str, list[int]]) -> None:
    code, out, _ = run("status", "--watch", "--interval", "0.05", "--count", "2",
                       "--database-url", db_url)
    assert code == 0 and out.count("sqlbridge status, every 0.05s") == 2
    assert "\x1b[H" not in out  # not a terminal: frames, no escapes
    code, out, _ = run("status", "--watch", "--json", "--interval", "0.05", "--count", "3",
                       "--database-url", db_url)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert all(json.loads(line)["queue_totals"]["queued"] == 4 for line in lines)


def test_status_watch_on_a_terminal_refreshes_in_place(db_url: str,
                                                       mixed: dict[str, list[int]]) -> None:
    said = confirm_on_a_terminal(db_url, b"", "status", "--watch", "--interval", "0.05",
                                 "--count", "3")
    assert said.count("\x1b[H\x1b[J") == 3 and said.count("queue health") == 3


def test_the_view_is_the_python_query(tmp_path: Path) -> None:
    views = (tsql.SQL_DIR / "120_views.sql").read_text(encoding="utf-8")
    assert "CREATE VIEW sqlbridge.queue_health AS\n" + tsql._queue_health_sql() in views
    assert "DATEDIFF(second, min(CASE WHEN (status = N'queued' AND available_at <= " \
        "SYSUTCDATETIME()) THEN available_at END), SYSUTCDATETIME())" in views


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=300), age=st.floats(allow_nan=True, allow_infinity=True))
def test_any_filter_value_lists_or_is_refused_in_one_error(queue: Queue, value: str,
                                                           age: float) -> None:
    for kw in ({"operations": (value,)}, {"accounts": (value,)}, {"correlation": value},
               {"error_codes": (value,)}, {"created_after": age}, {"finished_before": age}):
        try:
            sel = oa.Selection(**kw)
            oa.list_requests(queue.engine, sel, limit=5)
            oa.count(queue.engine, "retry", sel.resolve(queue.engine))
        except ValidationError:
            pass


@pytest.mark.parametrize("text_, says", [
    ("99999999999999999999d", "more than 100 years ago"),
    ("1e9", "neither an age"),
    ("", "neither an age"),
])
def test_ages_out_of_range_are_refused(text_: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        oa.parse_moment(text_, "--since")


def test_undecodable_bytes_on_the_command_line_are_one_line(db_url: str,
                                                            queue: Queue) -> None:
    env = {**os.environ, "SQLBRIDGE_DATABASE_URL": db_url, "SQLBRIDGE_CONFIG": ""}
    done = subprocess.run([sys.executable.encode(), b"-m", b"sqlbridge", b"list",
                           b"--correlation", b"\xff\xfe"], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr  # the CLI checks every argument first
    assert b"not valid UTF-8" in done.stderr and b"Traceback" not in done.stderr
    # Library callers (a future dashboard) meet the same refusal in Selection itself.
    with pytest.raises(ValidationError, match="correlation is not valid text"):
        oa.Selection(correlation="\udcff")
    with pytest.raises(ValidationError, match="operation is not valid text"):
        oa.Selection(operations=("chat.\ud800",))


def test_long_ages_never_reach_sql_server_s_millisecond_dateadd(queue: Queue) -> None:
    from sqlalchemy import and_
    from sqlalchemy.dialects import mssql

    sel = oa.Selection(created_after=40 * 86400.0, finished_before=3650 * 86400.0)
    where = str(and_(*sel.resolve(queue.engine).conditions()).compile(dialect=mssql.dialect()))
    assert "DATEADD" not in where  # 40 days of milliseconds overflow an INT
    with pytest.raises(ValueError, match="resolve"):
        sel.conditions()
    assert oa.list_requests(queue.engine, sel)["total"] == 0

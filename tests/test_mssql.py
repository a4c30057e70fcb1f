"""The T-SQL procedures on a real SQL Server (or Babelfish).

They run the day ``SQLBRIDGE_TEST_MSSQL_URL`` names a server (``scripts/test-mssql`` starts one
in Docker); until then each is skipped with that reason, never faked.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from sqlbridge import registry
from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.errors import ConfigError, ValidationError
from sqlbridge.install import install
from sqlbridge.registry import ERROR_NUMBERS
from sqlbridge.sandbox import Sandbox
from sqlbridge.worker import Worker

from .conftest import FAST_WORKER, MSSQL_URL, NO_MSSQL

needs_server = pytest.mark.skipif(not MSSQL_URL, reason=NO_MSSQL)


def test_driver_urls_either_load_or_say_what_to_install() -> None:
    """Runs everywhere: the driver code path without a server."""
    for url in ("mssql+pyodbc://u:p@127.0.0.1:1/db?driver=FreeTDS",
                "mssql+mssqlpython://u:p@127.0.0.1:1/db"):
        try:
            engine = make_engine(url)
        except ConfigError as exc:
            assert "install" in str(exc) and "p@" not in str(exc)
        else:
            assert engine.dialect.name == "mssql"
            engine.dispose()


@pytest.fixture
def server() -> Iterator[Engine]:
    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    install(engine)
    with engine.begin() as c:
        c.execute(text("DELETE FROM sqlbridge.outbox_attempt; DELETE FROM sqlbridge.outbox; "
                       "DELETE FROM sqlbridge.chat_message;"))
    yield engine
    engine.dispose()


def run_proc(engine: Engine, call: str) -> int:
    with engine.begin() as c:
        return c.execute(text(f"SET NOCOUNT ON; DECLARE @id BIGINT; {call}, "
                              "@request_id = @id OUTPUT; SELECT @id")).scalar_one()


def refused(engine: Engine, call: str) -> str:
    with pytest.raises(DBAPIError) as e:
        run_proc(engine, call)
    return str(e.value.orig)


@needs_server
def test_install_twice_applies_nothing_the_second_time(server: Engine) -> None:
    assert install(server) == []


@needs_server
def test_endpoint_procedures_enqueue_the_vendor_shaped_params(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.anna_messenger_requests @userId = N'1001', "
                           "@dataIni = N'01/01/2024', @status = N'a', @pendentes = N''")
    with server.connect() as c:
        row = c.execute(text("SELECT provider, operation, params FROM sqlbridge.outbox "
                             "WHERE id = :id"), {"id": rid}).one()
    assert row.provider == "anna" and row.operation == "messenger.requests"
    assert json.loads(row.params) == {"userId": "1001", "messengerFilters": {
        "dataIni": "01/01/2024", "status": "A"}}


@needs_server
@pytest.mark.parametrize(("call", "code"), [
    ("EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'sms', @platformid = N'1', "
     "@destination = N'2', @message = N'x'", "INVALID_PARAM_VALUE"),
    ("EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2'", "MISSING_COMPULSORY_PARAM"),
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'gif', @fileurl = N'https://a/b'", "INCORRECT_FILETYPE"),
    ("EXEC sqlbridge.anna_messenger_link @userDocType = N'CPF'", "MISSING_USER_IDENTITY"),
    ("EXEC sqlbridge.anna_messenger_requests @userId = N'1', @dataIni = N'2024-01-01'",
     "INVALID_DATE"),
])
def test_bad_input_is_refused_with_the_documented_number(server: Engine, call: str,
                                                         code: str) -> None:
    assert f"({ERROR_NUMBERS[code]})" in refused(server, call)


@needs_server
def test_a_plain_insert_gets_every_default(server: Engine) -> None:
    with server.begin() as c:
        c.execute(text("INSERT INTO sqlbridge.outbox (operation, params) "
                       "VALUES (N'chat.getchatchannels', N'{}')"))
        row = c.execute(text("SELECT account, status, attempts FROM sqlbridge.outbox")).one()
    assert tuple(row) == ("default", "queued", 0)


@needs_server
def test_wait_for_refuses_inside_a_transaction_and_waits_outside(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    with pytest.raises(DBAPIError) as e, server.begin() as c:
        c.execute(text("EXEC sqlbridge.wait_for @request_id = :id, @timeout_ms = 100"),
                  {"id": rid})
    assert f"({ERROR_NUMBERS['WAIT_IN_TRANSACTION']})" in str(e.value.orig)
    with Sandbox() as sb:
        settings = dataclasses.replace(Settings(database_url=MSSQL_URL or ""),
                                       accounts={"default": sb.account()}, worker=FAST_WORKER)
        worker = Worker(settings, server, schedules=False)
        thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 20})
        thread.start()
        with server.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            row = c.execute(text("EXEC sqlbridge.wait_for @request_id = :id, "
                                 "@timeout_ms = 15000"), {"id": rid}).one()
        worker.stop()
        thread.join()
    assert row.status == "succeeded"


@needs_server
def test_a_caller_can_enqueue_and_read_but_not_touch_the_tables(server: Engine) -> None:
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("IF DATABASE_PRINCIPAL_ID(N'sqlbridge_test_caller') IS NULL "
                       "CREATE USER sqlbridge_test_caller WITHOUT LOGIN; "
                       "ALTER ROLE sqlbridge_caller ADD MEMBER sqlbridge_test_caller;"))
        c.execute(text("EXECUTE AS USER = N'sqlbridge_test_caller'"))
        try:
            c.execute(text("DECLARE @id BIGINT; EXEC sqlbridge.afilnet_chat_getchatchannels "
                           "@request_id = @id OUTPUT;"))
            assert c.execute(text("SELECT COUNT(*) FROM sqlbridge.request_results")).scalar()
            with pytest.raises(DBAPIError):
                c.execute(text("UPDATE sqlbridge.outbox SET status = N'failed'"))
        finally:
            c.execute(text("REVERT"))


@needs_server
def test_take_messages_gives_each_message_to_one_consumer(server: Engine) -> None:
    with server.begin() as c:
        for i in range(200):
            c.execute(text("INSERT INTO sqlbridge.chat_message (account, platform, platformid, "
                           "messageid, sent) VALUES (N'default', N'whatsapp', N'100', :m, 0)"),
                      {"m": f"m{i}"})
    taken: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            with server.begin() as c:
                rows = c.execute(text("EXEC sqlbridge.take_messages @consumer = N't', "
                                      "@max = 7")).all()
            if not rows:
                return
            with lock:
                taken.extend(r.id for r in rows)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == 200


# -- more of the contract, each procedure with good and bad input --------------------------------

GOOD = {"platform": "WhatsApp", "platformid": "100", "destination": "34600000000",
        "message": "olá & #1 😀", "type": "vídeo", "fileurl": "https://files.example.com/a.mp4",
        "userId": "1001", "userName": "Ana", "url": "https://api.example.com/x",
        "method": "get", "dataIni": "31/12/2024"}


def _exec(op: registry.Operation, **params: str) -> str:
    args = ", ".join(f"@{k} = N'{v.replace(chr(39), chr(39) * 2)}'" for k, v in params.items())
    return f"EXEC sqlbridge.{op.procedure}" + (f" {args}" if args else "")


@needs_server
@pytest.mark.parametrize("op", list(registry.OPERATIONS.values()), ids=list(registry.OPERATIONS))
def test_every_endpoint_procedure_enqueues_what_the_registry_accepts(
        server: Engine, op: registry.Operation) -> None:
    given = {p.name: GOOD[p.name] for p in op.params if p.required or p.name in GOOD}
    if op.needs_user_identity:
        given["userId"] = "1001"
    rid = run_proc(server, _exec(op, **given))
    with server.connect() as c:
        row = c.execute(text("SELECT provider, operation, params, status FROM sqlbridge.outbox "
                             "WHERE id = :id"), {"id": rid}).one()
    _, expected = registry.validate(op, given)
    assert (row.provider, row.operation, row.status) == (op.provider, op.name, "queued")
    assert json.loads(row.params) == json.loads(json.dumps(expected))


@needs_server
@pytest.mark.parametrize(("call", "code"), [
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'image', @fileurl = N'ftp://a/b'", "INCORRECT_FILEURL"),
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'image', @fileurl = N'https://a/b', @thumburl = N'x'",
     "INCORRECT_THUMBURL"),
    ("EXEC sqlbridge.afilnet_chat_getchats @platform = N'whatsapp', "
     "@platformid = N'" + "9" * 101 + "'", "PARAM_TOO_LONG"),
    ("EXEC sqlbridge.anna_messenger_requests @userId = N'1', @dataFim = N'31/02/2024'",
     "INVALID_DATE"),
    ("EXEC sqlbridge.invoke_external_rest_endpoint @url = N'https://a.example/x', "
     "@headers = N'[1]'", "INVALID_PARAM_TYPE"),
    ("EXEC sqlbridge.afilnet_call @class = N'sms', @method = N'sendsms', "
     "@params = N'{\"password\":\"x\"}'", "UNKNOWN_PARAM"),
    ("EXEC sqlbridge.enqueue @operation = N'not an operation'", "UNKNOWN_OPERATION"),
    ("EXEC sqlbridge.enqueue @operation = N'chat.getchats', @params = N'[1]'",
     "INVALID_PARAMS_JSON"),
])
def test_more_bad_input_is_refused_with_the_documented_number(server: Engine, call: str,
                                                              code: str) -> None:
    assert f"({ERROR_NUMBERS[code]})" in refused(server, call)


@needs_server
def test_the_refusal_sentence_is_the_registry_s(server: Engine) -> None:
    call = ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
            "@destination = N'2', @type = N'gif', @fileurl = N'https://a/b'")
    with pytest.raises(ValidationError) as py:
        registry.validate("chat.sendfile", {"platform": "whatsapp", "platformid": "1",
                                            "destination": "2", "type": "gif",
                                            "fileurl": "https://a/b"})
    assert str(py.value) in refused(server, call)


@needs_server
def test_the_same_request_key_returns_the_first_request(server: Engine) -> None:
    call = "EXEC sqlbridge.afilnet_chat_getchatchannels @request_key = N'k-1'"
    first = run_proc(server, call)
    assert run_proc(server, call) == first
    with server.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM sqlbridge.outbox "
                              "WHERE request_key = N'k-1'")).scalar() == 1


@needs_server
def test_cancel_and_retry_follow_the_state_rules(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    with server.begin() as c:
        c.execute(text("EXEC sqlbridge.cancel @request_id = :id"), {"id": rid})
        assert c.execute(text("SELECT status FROM sqlbridge.outbox WHERE id = :id"),
                         {"id": rid}).scalar() == "cancelled"
    for proc, code in (("cancel", "INVALID_STATE"), ("retry", None)):
        with server.begin() as c:
            if code:
                with pytest.raises(DBAPIError) as e:
                    c.execute(text(f"EXEC sqlbridge.{proc} @request_id = :id"), {"id": rid})
                assert f"({ERROR_NUMBERS[code]})" in str(e.value.orig)
            else:
                c.execute(text(f"EXEC sqlbridge.{proc} @request_id = :id"), {"id": rid})
    with server.connect() as c:
        row = c.execute(text("SELECT status, attempts FROM sqlbridge.outbox WHERE id = :id"),
                        {"id": rid}).one()
    assert tuple(row) == ("queued", 0)
    with pytest.raises(DBAPIError) as e, server.begin() as c:
        c.execute(text("EXEC sqlbridge.cancel @request_id = -1"))
    assert f"({ERROR_NUMBERS['REQUEST_NOT_FOUND']})" in str(e.value.orig)


@needs_server
def test_schedules_upsert_by_name_and_unschedule(server: Engine) -> None:
    with server.begin() as c:
        for interval in (60, 120):
            c.execute(text("EXEC sqlbridge.schedule_sync @name = N't-sched', "
                           "@operation = N'chat.getchatchannels', @interval_seconds = :s"),
                      {"s": interval})
        assert c.execute(text("SELECT interval_seconds FROM sqlbridge.sync_schedule "
                              "WHERE name = N't-sched'")).scalars().all() == [120]
        c.execute(text("EXEC sqlbridge.unschedule_sync @name = N't-sched'"))


def _as_user(engine: Engine, user: str, role: str, statements: list[str]) -> list[bool]:
    """Run each statement as a database user in ``role``; True where it was allowed."""
    ok: list[bool] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"IF DATABASE_PRINCIPAL_ID(N'{user}') IS NULL "
                       f"CREATE USER {user} WITHOUT LOGIN; ALTER ROLE {role} ADD MEMBER {user};"))
        c.execute(text(f"EXECUTE AS USER = N'{user}'"))
        try:
            for sql in statements:
                try:
                    c.execute(text(sql))
                    ok.append(True)
                except DBAPIError:
                    ok.append(False)
        finally:
            c.execute(text("REVERT"))
    return ok


@needs_server
def test_roles_allow_exactly_their_part(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    retry = f"EXEC sqlbridge.retry @request_id = {rid}"
    assert _as_user(server, "sqlbridge_t_caller", "sqlbridge_caller", [
        "SELECT COUNT(*) FROM sqlbridge.chat_message",
        "SELECT COUNT(*) FROM sqlbridge.queue_summary",
        "EXEC sqlbridge.take_messages @consumer = N'x'",
        retry,
        "SELECT COUNT(*) FROM sqlbridge.outbox",
        "DELETE FROM sqlbridge.outbox",
    ]) == [True, True, True, False, False, False]
    assert _as_user(server, "sqlbridge_t_worker", "sqlbridge_worker", [
        "UPDATE sqlbridge.outbox SET priority = priority WHERE 1 = 0",
        "SELECT COUNT(*) FROM sqlbridge.chat_message",
        "DECLARE @id BIGINT; EXEC sqlbridge.afilnet_chat_getchatchannels @request_id = @id OUTPUT",
        "CREATE TABLE sqlbridge.nope (a INT)",
    ]) == [True, True, False, False]

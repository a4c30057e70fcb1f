"""The T-SQL procedures on a real SQL Server (or Babelfish).

They run the day ``SQLBRIDGE_TEST_MSSQL_URL`` names a server (``scripts/test-mssql`` starts one
in Docker); until then each is skipped with that reason, never faked.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from sqlbridge.config import Settings
from sqlbridge.db import make_engine
from sqlbridge.errors import ConfigError
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
    import json

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

"""The T-SQL procedures on a real SQL Server or Babelfish for PostgreSQL.

They run when ``SQLBRIDGE_TEST_MSSQL_URL`` names a server (``scripts/test-mssql`` starts SQL
Server in Docker); until then each is skipped with that reason, never faked. The tests at the
top need no server: the driver options and connection strings, and the ScriptDom gate over
every T-SQL string this file sends.

Rules of this suite, learnt on a real engine:
- every T-SQL string is declared through ``tsql()`` at import time, so the gate parses it;
- procedures are called in autocommit: after a THROW under XACT_ABORT the server has already
  rolled back, and a driver-side ROLLBACK would fail with 3903 and hide the real refusal;
- engine differences are declared once, in ``conftest.ENGINE_LIMITS``, never left to fail;
- no test assumes an id value, a clock precision finer than DATETIME2(3)'s milliseconds, or
  that concurrent consumers run side by side (Babelfish serialises them).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from sqlbridge import registry
from sqlbridge.config import Settings
from sqlbridge.db import make_engine, mssql_engine_options
from sqlbridge.errors import ConfigError, ValidationError
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.registry import ERROR_NUMBERS
from sqlbridge.sandbox import Sandbox
from sqlbridge.worker import Worker

from .conftest import FAST_WORKER, MSSQL_URL, NO_MSSQL, engine_limits

needs_server = pytest.mark.skipif(not MSSQL_URL, reason=NO_MSSQL)
SENT: list[str] = []


def tsql(sql: str) -> str:
    """Declare a T-SQL string this suite sends (the ScriptDom gate parses every one)."""
    SENT.append(sql)
    return sql


# -- without a server: drivers and URLs -------------------------------------------------------

def test_driver_urls_either_load_or_say_what_to_install() -> None:
    for url in ("mssql+pyodbc://u:p@127.0.0.1:1/db?driver=FreeTDS",
                "mssql+mssqlpython://u:p@127.0.0.1:1/db"):
        try:
            engine = make_engine(url)
        except ConfigError as exc:
            assert "install" in str(exc) and "p@" not in str(exc)
        else:
            assert engine.dialect.name == "mssql"
            engine.dispose()


def connect_string(url: str) -> str:
    engine = make_engine(url)
    try:
        return engine.dialect.create_connect_args(engine.url)[0][0]
    finally:
        engine.dispose()


@pytest.mark.parametrize(("url", "expected"), [
    # README / docs/sqlserver.md forms.
    ("mssql+pyodbc://user:pass@host/db?driver=ODBC+Driver+18+for+SQL+Server"
     "&TrustServerCertificate=yes",
     "DRIVER={ODBC Driver 18 for SQL Server};Server=host;Database=db;UID=user;PWD=pass;"
     "TrustServerCertificate=yes"),
    ("mssql+pyodbc://user:pass@host:1433/db?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes",
     "DRIVER={ODBC Driver 18 for SQL Server};Server=host,1433;Database=db;UID=user;PWD=pass;"
     "Encrypt=yes"),
    # FreeTDS reads Port=, not "host,port" (that reached the server as host\x001433).
    ("mssql+pyodbc://user:pass@host:1433/db?driver=FreeTDS&TDS_Version=7.4",
     "DRIVER={FreeTDS};Server=host;Database=db;UID=user;PWD=pass;port=1433;TDS_Version=7.4"),
    ("mssql+pyodbc://user:pass@host/db?driver=FreeTDS&TDS_Version=7.4",
     "DRIVER={FreeTDS};Server=host;Database=db;UID=user;PWD=pass;TDS_Version=7.4"),
    ("mssql+pyodbc://babelfish_user:12345678@127.0.0.1:1433/sqlbridge_test?driver=FreeTDS"
     "&TDS_Version=7.4",
     "DRIVER={FreeTDS};Server=127.0.0.1;Database=sqlbridge_test;UID=babelfish_user;"
     "PWD=12345678;port=1433;TDS_Version=7.4"),
    # A port already in the query string is left alone.
    ("mssql+pyodbc://u:p@h/db?driver=FreeTDS&port=2000",
     "DRIVER={FreeTDS};Server=h;Database=db;UID=u;PWD=p;port=2000"),
])
def test_each_driver_gets_a_connection_string_it_reads(url: str, expected: str) -> None:
    assert connect_string(url) == expected


def test_fast_executemany_and_setinputsizes_follow_the_driver() -> None:
    def options(url: str) -> dict[str, Any]:
        return mssql_engine_options(make_url(url))
    assert options("mssql+pyodbc://u:p@h/d?driver=ODBC+Driver+18+for+SQL+Server") == \
        {"fast_executemany": True}
    assert options("mssql+pyodbc://u:p@h/d?driver=ODBC+Driver+17+for+SQL+Server") == \
        {"fast_executemany": True}
    # FreeTDS: fast_executemany crashes the process; setinputsizes' NVARCHAR(MAX) binding
    # (column size 0) is refused over 4,000 bytes (HY090).
    assert options("mssql+pyodbc://u:p@h/d?driver=FreeTDS&TDS_Version=7.4") == \
        {"use_setinputsizes": False}
    assert options("mssql+pyodbc://u:p@mydsn") == {}  # a DSN: nothing assumed
    engine = make_engine("mssql+pyodbc://u:p@h:1433/d?driver=FreeTDS")
    assert engine.dialect.fast_executemany is False
    assert engine.dialect.bind_typing.name == "NONE"
    engine.dispose()
    engine = make_engine("mssql+pyodbc://u:p@h/d?driver=ODBC+Driver+18+for+SQL+Server")
    assert engine.dialect.fast_executemany is True
    assert engine.dialect.bind_typing.name == "SETINPUTSIZES"
    engine.dispose()


def test_the_long_text_columns_bind_as_nvarchar_max_for_microsoft_s_driver() -> None:
    """SQLAlchemy's (SQL_WVARCHAR, 0, 0) is the "max" binding: the columns must carry a
    Unicode type of no length, or long values are bound as VARCHAR or truncated."""
    import pyodbc
    from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc

    from sqlbridge.schema import outbox
    dialect = MSDialect_pyodbc()
    for column in ("params", "response", "error_message"):
        impl = outbox.c[column].type.dialect_impl(dialect)
        assert impl.get_dbapi_type(pyodbc) == (pyodbc.SQL_WVARCHAR, 0, 0), column


# -- without a server: every string this file sends parses ----------------------------------------

def test_every_tsql_string_this_suite_sends_parses(tmp_path: Path) -> None:
    from .test_tsql_parse import as_tsql, parse_errors
    assert len(SENT) > 30
    script = "".join(f"{as_tsql(sql)}\nGO\n" for sql in SENT)
    assert parse_errors(script, tmp_path) == ""


# -- the server ----------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[Engine]:
    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    install(engine)
    with engine.begin() as c:
        c.execute(text(CLEAN))
    yield engine
    engine.dispose()


CLEAN = tsql("DELETE FROM sqlbridge.outbox_attempt; DELETE FROM sqlbridge.outbox; "
             "DELETE FROM sqlbridge.chat_message; DELETE FROM sqlbridge.sync_schedule;")


def autocommit(engine: Engine) -> Any:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def call_batch(call: str) -> str:
    """``call`` with the OUTPUT id added, then selected: ``EXEC p`` or ``EXEC p @a = …``."""
    sep = ", " if " @" in call else " "
    return f"DECLARE @id BIGINT; {call}{sep}@request_id = @id OUTPUT; SELECT @id AS id;"


def run_proc(engine: Engine, call: str, **params: Any) -> int:
    with autocommit(engine) as c:
        return int(c.execute(text(call_batch(call)), params).scalar_one())


def refused(engine: Engine, call: str, **params: Any) -> str:
    with pytest.raises(DBAPIError) as e:
        run_proc(engine, call, **params)
    return str(e.value.orig)


def outbox_row(engine: Engine, rid: int) -> Any:
    with engine.connect() as c:
        return c.execute(text(ROW), {"id": rid}).one()


ROW = tsql("SELECT provider, operation, params, status, max_attempts FROM sqlbridge.outbox "
           "WHERE id = :id")
for _call in ("EXEC sqlbridge.afilnet_chat_getchatchannels",
              "EXEC sqlbridge.anna_messenger_requests @userId = N'1001'"):
    tsql(call_batch(_call))


def test_calls_get_their_output_parameter_with_or_without_arguments() -> None:
    assert call_batch("EXEC sqlbridge.x") == \
        "DECLARE @id BIGINT; EXEC sqlbridge.x @request_id = @id OUTPUT; SELECT @id AS id;"
    assert call_batch("EXEC sqlbridge.x @a = 1") == \
        "DECLARE @id BIGINT; EXEC sqlbridge.x @a = 1, @request_id = @id OUTPUT; SELECT @id AS id;"


@needs_server
def test_install_twice_applies_nothing_and_leaves_rowcounts_right(server: Engine) -> None:
    assert install(server) == []
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    # The pooled connections after install still report rows affected (NOCOUNT is off).
    for _ in range(3):
        with server.begin() as c:
            assert c.execute(text(TOUCH), {"id": rid}).rowcount == 1


TOUCH = tsql("UPDATE sqlbridge.outbox SET priority = priority WHERE id = :id")


ENQUEUE_REQUESTS = tsql(call_batch(
    "EXEC sqlbridge.anna_messenger_requests @userId = N'1001', @dataIni = N'31/12/2024', "
    "@status = N'a', @pendentes = N''"))


@needs_server
def test_endpoint_procedures_enqueue_the_vendor_shaped_params(server: Engine) -> None:
    with autocommit(server) as c:
        rid = c.execute(text(ENQUEUE_REQUESTS)).scalar_one()
    row = outbox_row(server, rid)
    assert row.provider == "anna" and row.operation == "messenger.requests"
    assert json.loads(row.params) == {"userId": "1001", "messengerFilters": {
        "dataIni": "31/12/2024", "status": "A"}}


@needs_server
def test_optional_dates_may_be_left_out(server: Engine) -> None:
    for proc in ("anna_messenger_requests", "anna_messenger_alertcounter"):
        rid = run_proc(server, tsql(f"EXEC sqlbridge.{proc} @userId = N'1001'"))
        assert json.loads(outbox_row(server, rid).params) == {"userId": "1001"}


BAD = [
    ("EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'sms', @platformid = N'1', "
     "@destination = N'2', @message = N'x'", "INVALID_PARAM_VALUE"),
    ("EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2'", "MISSING_COMPULSORY_PARAM"),
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'gif', @fileurl = N'https://a/b'", "INCORRECT_FILETYPE"),
    ("EXEC sqlbridge.anna_messenger_link @userDocType = N'CPF'", "MISSING_USER_IDENTITY"),
    ("EXEC sqlbridge.anna_messenger_requests @userId = N'1', @dataIni = N'2024-01-01'",
     "INVALID_DATE"),
    ("EXEC sqlbridge.anna_messenger_requests @userId = N'1', @dataFim = N'31/02/2024'",
     "INVALID_DATE"),
    ("EXEC sqlbridge.anna_messenger_requests @userId = N'1', @dataFim = N'29/02/2023'",
     "INVALID_DATE"),
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'image', @fileurl = N'ftp://a/b'", "INCORRECT_FILEURL"),
    ("EXEC sqlbridge.afilnet_chat_sendfile @platform = N'whatsapp', @platformid = N'1', "
     "@destination = N'2', @type = N'image', @fileurl = N'https://a/b', @thumburl = N'x'",
     "INCORRECT_THUMBURL"),
    ("EXEC sqlbridge.afilnet_chat_getchats @platform = N'whatsapp', "
     "@platformid = N'" + "9" * 101 + "'", "PARAM_TOO_LONG"),
    ("EXEC sqlbridge.invoke_external_rest_endpoint @url = N'https://a.example/x', "
     "@headers = N'[1]'", "INVALID_PARAM_TYPE"),
    ("EXEC sqlbridge.afilnet_call @class = N'sms', @method = N'sendsms', "
     "@params = N'{\"password\":\"x\"}'", "UNKNOWN_PARAM"),
    ("EXEC sqlbridge.enqueue @operation = N'not an operation'", "UNKNOWN_OPERATION"),
    # One rule for names everywhere: exact, as Python's registry.resolve has it.
    ("EXEC sqlbridge.enqueue @operation = N'Chat.GetChats'", "UNKNOWN_OPERATION"),
    ("EXEC sqlbridge.enqueue @operation = N' chat.getchats'", "UNKNOWN_OPERATION"),
    ("EXEC sqlbridge.afilnet_call @class = N'SMS', @method = N'sendsms'", "UNKNOWN_OPERATION"),
    ("EXEC sqlbridge.enqueue @operation = N'chat.getchats', @params = N'[1]'",
     "INVALID_PARAMS_JSON"),
]
for _call, _ in BAD:
    tsql(call_batch(_call))


@needs_server
@pytest.mark.parametrize(("call", "code"), BAD, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD)])
def test_bad_input_is_refused_with_the_documented_number(server: Engine, call: str,
                                                         code: str) -> None:
    assert f"({ERROR_NUMBERS[code]})" in refused(server, call)


def test_python_refuses_the_names_the_procedures_refuse() -> None:
    for name in ("Chat.GetChats", " chat.getchats", "SMS.sendsms"):
        with pytest.raises(ValidationError):
            registry.resolve(name)


PLAIN_INSERT = tsql("INSERT INTO sqlbridge.outbox (operation, params) "
                    "VALUES (N'chat.getchatchannels', N'{}')")
PLAIN_ROW = tsql("SELECT account, status, attempts, max_attempts FROM sqlbridge.outbox")


@needs_server
def test_a_plain_insert_gets_every_default(server: Engine) -> None:
    with server.begin() as c:
        c.execute(text(PLAIN_INSERT))
        row = c.execute(text(PLAIN_ROW)).one()
    assert tuple(row) == ("default", "queued", 0, 0)  # 0: the worker's max_attempts


@needs_server
def test_max_attempts_means_the_worker_s_setting_from_every_entry_point(server: Engine) -> None:
    """A procedure call, a plain INSERT and Python's enqueue all store 0 unless given; the
    worker reads its own setting when it claims them."""
    by_proc = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    own = run_proc(server, tsql("EXEC sqlbridge.afilnet_chat_getchatchannels "
                                "@max_attempts = 2"))
    with server.begin() as c:
        c.execute(text(PLAIN_INSERT))
    queue = Queue(server, Settings(database_url=MSSQL_URL or "",
                                   worker=dataclasses.replace(FAST_WORKER, max_attempts=7)))
    by_python = queue.enqueue("chat.getchatchannels", {}).id
    assert outbox_row(server, by_proc).max_attempts == 0
    assert outbox_row(server, by_python).max_attempts == 0
    limits = {c.id: c.max_attempts for c in queue.claim("w", 10, 30)}
    assert len(limits) == 4 and limits[own] == 2
    assert {v for k, v in limits.items() if k != own} == {7}


WAIT_FOR = tsql("EXEC sqlbridge.wait_for @request_id = :id, @timeout_ms = :ms")
# The caller's own transaction, opened in T-SQL: the THROW under XACT_ABORT ends it server-side.
WAIT_IN_TRANSACTION = tsql("BEGIN TRANSACTION; EXEC sqlbridge.wait_for @request_id = :id, "
                           "@timeout_ms = 100;")
ROLLBACK_IF_OPEN = tsql("IF @@TRANCOUNT > 0 ROLLBACK;")


@needs_server
def test_wait_for_refuses_inside_a_transaction_and_waits_outside(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    with autocommit(server) as c:
        try:
            with pytest.raises(DBAPIError) as e:
                c.execute(text(WAIT_IN_TRANSACTION), {"id": rid})
        finally:
            c.execute(text(ROLLBACK_IF_OPEN))
    assert f"({ERROR_NUMBERS['WAIT_IN_TRANSACTION']})" in str(e.value.orig)
    with Sandbox() as sb:
        settings = dataclasses.replace(Settings(database_url=MSSQL_URL or ""),
                                       accounts={"default": sb.account()}, worker=FAST_WORKER)
        worker = Worker(settings, server, schedules=False)
        thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 60})
        thread.start()
        try:
            with autocommit(server) as c:
                row = c.execute(text(WAIT_FOR), {"id": rid, "ms": 30000}).one()
        finally:
            worker.stop()
            thread.join()
    assert row.status == "succeeded"


# -- every parameter of every procedure, byte for byte ---------------------------------------------

HOSTILE = ("Olá & #1 100% 🎉 ção ÿ € 中文 \"quoted\" 'single' back\\slash / tab\there "
           "nl\nend cr\rend \x01\x1f\x7f \u2028 +=?&")


def hostile_value(p: registry.Param, limits: frozenset[str]) -> Any:
    text_ = HOSTILE if "nul" in limits else HOSTILE + "\x00nul"
    if p.type == "int":
        return 5
    if p.type == "url":
        return "https://files.example.com/á/%20\"q\"?x=1&y=ü#🎉"
    if p.type == "date":
        return "29/02/2024"
    if p.type == "object":
        return json.dumps({"X-Note": text_, "n": 1}, ensure_ascii=False)
    if p.type == "json":
        return text_  # not JSON: sent as a JSON string
    if p.allowed:
        return p.allowed[-1]
    return text_[:p.max_length] if p.max_length else text_


def hostile_call(op: registry.Operation) -> tuple[str, dict[str, Any]]:
    """A call binding every parameter (as driver parameters, not literals)."""
    names = [p.name for p in op.params]
    args = ", ".join(f"@{n} = :{n}" for n in names)
    return f"EXEC sqlbridge.{op.procedure}" + (f" {args}" if args else ""), {}


for _op in registry.OPERATIONS.values():
    tsql(call_batch(hostile_call(_op)[0]))


@needs_server
@pytest.mark.parametrize("op", list(registry.OPERATIONS.values()), ids=list(registry.OPERATIONS))
def test_every_parameter_round_trips_byte_for_byte(server: Engine, op: registry.Operation,
                                                   mssql_limits: frozenset[str]) -> None:
    given = {p.name: hostile_value(p, mssql_limits) for p in op.params}
    if op.name == "http.request":
        given["method"] = "POST"
    call, _ = hostile_call(op)
    rid = run_proc(server, call, **given)
    row = outbox_row(server, rid)
    _, expected = registry.validate(op, {k: v for k, v in given.items()})
    assert (row.provider, row.operation, row.status) == (op.provider, op.name, "queued")
    assert json.loads(row.params) == expected


@needs_server
def test_passthrough_params_round_trip(server: Engine, mssql_limits: frozenset[str]) -> None:
    value = HOSTILE if "nul" in mssql_limits else HOSTILE + "\x00"
    params = json.dumps({"to": "346", "text": value}, ensure_ascii=False)
    rid = run_proc(server, tsql("EXEC sqlbridge.afilnet_call @class = N'sms', "
                                "@method = N'sendsms', @params = :params"), params=params)
    assert json.loads(outbox_row(server, rid).params) == {"to": "346", "text": value}


# -- long values through every path ----------------------------------------------------------------

@needs_server
@pytest.mark.parametrize("size", [10_000, 1_000_000], ids=["10k", "1M"])
def test_long_values_pass_every_path(server: Engine, size: int) -> None:
    """Over ~4,000 bytes FreeTDS refused the NVARCHAR(MAX) binding (HY090): a procedure
    parameter, Python's enqueue, a plain INSERT, the worker's send and its written response."""
    long = ("é😀ab" * size)[:size]
    message = {"platform": "whatsapp", "platformid": "100", "destination": "346"}
    by_proc = run_proc(server, tsql(
        "EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'whatsapp', @platformid = N'100', "
        "@destination = N'346', @message = :m"), m=long)
    assert json.loads(outbox_row(server, by_proc).params)["message"] == long
    with Sandbox() as sb:
        # The long message waits in a chat of its own: the sends above go to another one.
        sb.state.add_chat("whatsapp", "100", "347")
        sb.state.add_message("whatsapp", "100", "347", long, sent=1, status="sent")
        settings = dataclasses.replace(Settings(database_url=MSSQL_URL or ""),
                                       accounts={"default": sb.account()}, worker=FAST_WORKER)
        queue = Queue(server, settings)
        by_python = queue.enqueue("chat.sendmessage", {**message, "message": long}).id
        reads = queue.enqueue("chat.getmessages", {**message, "destination": "347"}).id
        with server.begin() as c:
            c.execute(text(tsql("INSERT INTO sqlbridge.outbox (operation, params) "
                                "VALUES (N'chat.sendmessage', :p)")),
                      {"p": json.dumps({**message, "message": long}, ensure_ascii=False)})
        Worker(settings, server, schedules=False).run(once=True)
    for rid in (by_proc, by_python, reads):
        assert queue.get(rid)["status"] == "succeeded", queue.get(rid)
    # The stored response is capped (textsafe.MAX_STORED_RESPONSE); the message lands whole.
    response = queue.get(reads)["response"] or ""
    assert len(response) > 4000 and (long in response or "sqlbridge_truncated" in response)
    with server.connect() as c:
        stored = c.execute(text(tsql("SELECT message FROM sqlbridge.chat_message "
                                     "WHERE request_id = :id")), {"id": reads}).scalar_one()
        plain = c.execute(text(tsql("SELECT status FROM sqlbridge.outbox WHERE id NOT IN "
                                    "(:a, :b, :c)")),
                          {"a": by_proc, "b": by_python, "c": reads}).scalar_one()
    assert stored == long and plain == "succeeded"


# -- operator procedures -----------------------------------------------------------------------

@needs_server
def test_the_refusal_sentence_is_the_registry_s(server: Engine) -> None:
    call = BAD[2][0]
    with pytest.raises(ValidationError) as py:
        registry.validate("chat.sendfile", {"platform": "whatsapp", "platformid": "1",
                                            "destination": "2", "type": "gif",
                                            "fileurl": "https://a/b"})
    assert str(py.value) in refused(server, call)


KEYED = tsql(call_batch("EXEC sqlbridge.afilnet_chat_getchatchannels @request_key = :k"))
COUNT_KEY = tsql("SELECT COUNT(*) FROM sqlbridge.outbox WHERE request_key = :k")


@needs_server
def test_the_same_request_key_returns_the_first_request(server: Engine) -> None:
    key = f"k-{uuid.uuid4()}"
    with autocommit(server) as c:
        first = c.execute(text(KEYED), {"k": key}).scalar_one()
        assert c.execute(text(KEYED), {"k": key}).scalar_one() == first
        assert c.execute(text(COUNT_KEY), {"k": key}).scalar() == 1


CANCEL = tsql("EXEC sqlbridge.cancel @request_id = :id")
RETRY = tsql("EXEC sqlbridge.retry @request_id = :id")
STATUS = tsql("SELECT status, attempts FROM sqlbridge.outbox WHERE id = :id")


@needs_server
def test_cancel_and_retry_follow_the_state_rules(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    with autocommit(server) as c:
        c.execute(text(CANCEL), {"id": rid})
        assert tuple(c.execute(text(STATUS), {"id": rid}).one()) == ("cancelled", 0)
        with pytest.raises(DBAPIError) as e:
            c.execute(text(CANCEL), {"id": rid})
        assert f"({ERROR_NUMBERS['INVALID_STATE']})" in str(e.value.orig)
    with autocommit(server) as c:
        c.execute(text(RETRY), {"id": rid})
        assert tuple(c.execute(text(STATUS), {"id": rid}).one()) == ("queued", 0)
    with autocommit(server) as c, pytest.raises(DBAPIError) as e:
        c.execute(text(CANCEL), {"id": -1})
    assert f"({ERROR_NUMBERS['REQUEST_NOT_FOUND']})" in str(e.value.orig)


SCHEDULE = tsql("EXEC sqlbridge.schedule_sync @name = :name, "
                "@operation = N'chat.getchatchannels', @interval_seconds = :s")
SCHEDULED = tsql("SELECT interval_seconds FROM sqlbridge.sync_schedule WHERE name = :name")
UNSCHEDULE = tsql("EXEC sqlbridge.unschedule_sync @name = :name")
BAD_SCHEDULE = tsql("EXEC sqlbridge.schedule_sync @name = N'x', "
                    "@operation = N'Chat.GetChatChannels', @interval_seconds = 60")


@needs_server
def test_schedules_upsert_by_name_and_unschedule(server: Engine) -> None:
    with autocommit(server) as c:
        for interval in (60, 120):
            c.execute(text(SCHEDULE), {"name": "t-sched", "s": interval})
        assert c.execute(text(SCHEDULED), {"name": "t-sched"}).scalars().all() == [120]
        c.execute(text(UNSCHEDULE), {"name": "t-sched"})
        with pytest.raises(DBAPIError) as e:
            c.execute(text(BAD_SCHEDULE))
    assert f"({ERROR_NUMBERS['UNKNOWN_OPERATION']})" in str(e.value.orig)


INSERT_MESSAGE = tsql("INSERT INTO sqlbridge.chat_message (account, platform, platformid, "
                      "messageid, sent) VALUES (N'default', N'whatsapp', N'100', :m, 0)")
TAKE = tsql("EXEC sqlbridge.take_messages @consumer = :who, @max = 7")


@needs_server
def test_take_messages_gives_each_message_to_one_consumer(server: Engine) -> None:
    """Concurrent consumers never get the same message. Whether they run side by side is the
    engine's business (Babelfish ignores READPAST and serialises them)."""
    with server.begin() as c:
        c.execute(text(INSERT_MESSAGE), [{"m": f"m{i}"} for i in range(200)])
    taken: list[int] = []
    lock = threading.Lock()

    def consume(who: str) -> None:
        while True:
            with autocommit(server) as c:
                rows = c.execute(text(TAKE), {"who": who}).all()
            if not rows:
                return
            with lock:
                taken.extend(r.id for r in rows)

    threads = [threading.Thread(target=consume, args=(f"t{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with autocommit(server) as c:  # whatever a consumer gave up on is still there to take
        while rows := c.execute(text(TAKE), {"who": "last"}).all():
            taken.extend(r.id for r in rows)
    assert len(taken) == len(set(taken)) == 200


# -- roles, as real logins -------------------------------------------------------------------------

CALLER_CAN = [
    ("SELECT COUNT(*) FROM sqlbridge.chat_message", True),
    ("SELECT COUNT(*) FROM sqlbridge.queue_summary", True),
    ("SELECT COUNT(*) FROM sqlbridge.request_results", True),
    ("EXEC sqlbridge.take_messages @consumer = N'x'", True),
    (call_batch("EXEC sqlbridge.afilnet_chat_getchatchannels"), True),
    (call_batch("EXEC sqlbridge.afilnet_chat_sendmessage @platform = N'whatsapp', "
                "@platformid = N'1', @destination = N'2', @message = N'olá'"), True),
    # A used key (sp_getapplock), again with params spelled otherwise (sqlbridge.same_params:
    # Babelfish's missing ownership chaining needs its EXECUTE granted to the role).
    (call_batch("EXEC sqlbridge.enqueue @operation = N'sms.sendsms', "
                "@params = N'{\"to\":\"1\"}', @request_key = N'role-key'"), True),
    (call_batch("EXEC sqlbridge.enqueue @operation = N'sms.sendsms', "
                "@params = N'{ \"to\" : \"\\u0031\" }', @request_key = N'role-key'"), True),
    # A DBA's natural call of the native procedure's form, @response OUTPUT included.
    ("DECLARE @r NVARCHAR(MAX); " + call_batch(
        "EXEC sqlbridge.invoke_external_rest_endpoint @url = N'https://example.com/', "
        "@method = N'GET', @response = @r OUTPUT"), True),
    ("EXEC sqlbridge.cancel @request_id = :id", True),
    ("EXEC sqlbridge.wait_for @request_id = :id, @timeout_ms = 10", True),
    ("EXEC sqlbridge.retry @request_id = :id", False),
    ("DELETE FROM sqlbridge.outbox", False),
    ("UPDATE sqlbridge.outbox SET params = N'{}'", False),
    ("CREATE TABLE sqlbridge.nope (a INT)", False),
]
WORKER_CAN = [
    ("UPDATE sqlbridge.outbox SET priority = priority WHERE 1 = 0", True),
    ("SELECT COUNT(*) FROM sqlbridge.chat_message", True),
    (call_batch("EXEC sqlbridge.afilnet_chat_getchatchannels"), False),
    ("CREATE TABLE sqlbridge.nope (a INT)", False),
]
for _sql, _ in CALLER_CAN + WORKER_CAN:
    tsql(_sql)
PASSWORD = "Sqlb-" + uuid.uuid4().hex[:12] + "-x9"
LOGINS = {"sqlbridge_t_caller": "sqlbridge_caller", "sqlbridge_t_worker": "sqlbridge_worker"}
LOGIN_SQL = {login: (
    tsql(f"IF SUSER_ID(N'{login}') IS NULL CREATE LOGIN {login} WITH PASSWORD = N'{PASSWORD}';"),
    tsql(f"IF DATABASE_PRINCIPAL_ID(N'{login}') IS NULL CREATE USER {login} FOR LOGIN {login};"),
    tsql(f"ALTER LOGIN {login} WITH PASSWORD = N'{PASSWORD}';"),
    tsql(f"ALTER ROLE {role} ADD MEMBER {login};"),
) for login, role in LOGINS.items()}


def as_login(server: Engine, login: str) -> Engine:
    """An engine that connects as a login whose database user is in its role (LOGINS). Real
    logins on every engine: Babelfish supports neither CREATE USER … WITHOUT LOGIN nor
    EXECUTE AS."""
    try:
        with autocommit(server) as c:
            for sql in LOGIN_SQL[login]:
                c.execute(text(sql))
    except DBAPIError as exc:
        pytest.skip(f"this login may not create logins and users ({exc.orig})")
    url = make_url(MSSQL_URL or "").set(username=login, password=PASSWORD)
    return make_engine(url.render_as_string(hide_password=False))


def allowed(engine: Engine, statements: list[tuple[str, bool]], rid: int) -> list[bool]:
    out = []
    for sql, _ in statements:
        try:
            with autocommit(engine) as c:
                c.execute(text(sql), {"id": rid} if ":id" in sql else {}).all() \
                    if sql.lstrip().startswith(("SELECT", "DECLARE")) else \
                    c.execute(text(sql), {"id": rid} if ":id" in sql else {})
            out.append(True)
        except DBAPIError:
            out.append(False)
    return out


@needs_server
def test_roles_allow_exactly_their_part(server: Engine) -> None:
    rid = run_proc(server, "EXEC sqlbridge.afilnet_chat_getchatchannels")
    caller = as_login(server, "sqlbridge_t_caller")
    worker = as_login(server, "sqlbridge_t_worker")
    try:
        assert allowed(caller, CALLER_CAN, rid) == [ok for _, ok in CALLER_CAN]
        assert allowed(worker, WORKER_CAN, rid) == [ok for _, ok in WORKER_CAN]
    finally:
        caller.dispose()
        worker.dispose()


@needs_server
def test_the_engine_is_what_the_limits_say(server: Engine) -> None:
    """Engine differences are declared once (conftest.ENGINE_LIMITS): check the declaration."""
    limits = engine_limits(server)
    with server.connect() as c:
        babelfish = bool(c.execute(text(tsql(
            "SELECT CAST(SERVERPROPERTY('BabelfishVersion') AS NVARCHAR(100))"))).scalar())
    assert ("babelfish" in limits) == babelfish

"""The bulk operator procedures and the queue_health view on a real SQL Server. They run when
``SQLBRIDGE_TEST_MSSQL_URL`` names a server (``scripts/test-mssql``); until then each is
skipped with that reason, never faked."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError

from sqlbridge import monitoring
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.registry import ERROR_NUMBERS
from sqlbridge.schema import operator_action, outbox, outbox_attempt
from sqlbridge.sqlfuncs import utcnow

from .conftest import MSSQL_URL, NO_MSSQL

CHATS = {"platform": "whatsapp", "platformid": "100"}


@pytest.fixture
def server() -> Iterator[Engine]:
    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    install(engine)
    with engine.begin() as c:
        for table in (outbox_attempt, outbox, operator_action):
            c.execute(delete(table))
    yield engine
    engine.dispose()


def matched(engine: Engine, call: str) -> int:
    # "EXEC proc, @matched = …" is not T-SQL: the comma only follows an argument.
    sep = ", " if "@" in call else " "
    with engine.begin() as c:
        return int(c.execute(text(f"SET NOCOUNT ON; DECLARE @n INT; {call}{sep}"
                                  "@matched = @n OUTPUT; SELECT @n;")).scalar())


def test_retry_and_cancel_requests_in_bulk_from_t_sql(server: Engine) -> None:
    queue = Queue(server)
    ids = [queue.enqueue("chat.getchats", CHATS).id for _ in range(4)]
    with server.begin() as c:
        c.execute(update(outbox).where(outbox.c.id.in_(ids[:3]))
                  .values(status="uncertain", finished_at=utcnow(), error_code="X"))
    assert matched(server, "EXEC sqlbridge.retry_requests @status = N'uncertain', "
                           "@dry_run = 1") == 3
    assert queue.get(ids[0])["status"] == "uncertain"
    assert matched(server, "EXEC sqlbridge.retry_requests @status = N'uncertain', "
                           "@operation = N'CHAT.GETCHATS'") == 3
    row = queue.get(ids[0])
    assert (row["status"], row["attempts"], row["error_code"]) == ("queued", 0, None)
    assert matched(server, "EXEC sqlbridge.cancel_requests @operation = N'chat.getchats'") == 4
    assert queue.get(ids[3])["error_code"] == "CANCELLED"
    with server.connect() as c:
        audit = c.execute(select(operator_action).order_by(operator_action.c.id)).all()
    assert [(a.action, a.via, a.matched) for a in audit] == [("retry", "tsql", 3),
                                                            ("cancel", "tsql", 4)]
    assert json.loads(audit[0].criteria) == {"status": "uncertain",
                                             "operation": "CHAT.GETCHATS"}
    assert audit[0].actor and audit[0].finished_at is not None


def test_a_bulk_procedure_without_a_filter_is_refused(server: Engine) -> None:
    with pytest.raises(DBAPIError) as e:
        matched(server, "EXEC sqlbridge.cancel_requests")
    assert str(ERROR_NUMBERS["INVALID_ARGUMENT"]) in str(e.value)
    with pytest.raises(DBAPIError) as e:
        matched(server, "EXEC sqlbridge.retry_requests @status = N'succeeded'")
    assert "@status must be one of failed, uncertain, cancelled" in str(e.value)


def test_the_queue_health_view_matches_the_python_query(server: Engine) -> None:
    queue = Queue(server)
    for _ in range(3):
        queue.enqueue("chat.getchats", CHATS)
    with server.connect() as c:
        view = c.execute(text("SELECT operation, queued, due, processing, stuck, uncertain, "
                              "oldest_queued_age_seconds FROM sqlbridge.queue_health")).all()
    rows = monitoring.queue_health(server)
    assert [(r[0], r[1], r[2]) for r in view] == [(r["operation"], r["queued"], r["due"])
                                                  for r in rows] == [("chat.getchats", 3, 3)]

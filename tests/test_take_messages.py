"""take_messages: every incoming message goes to exactly one consumer, once, even with several
consumers taking at the same time on their own connections; outgoing messages are never
handed out; the command prints what it took."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, false, func, select

from sqlbridge import inbox
from sqlbridge.db import make_engine
from sqlbridge.errors import ValidationError
from sqlbridge.messages import mssql_statements, take_messages
from sqlbridge.schema import chat_message


def store(engine: Engine, n: int, start: int = 0) -> None:
    """n messages of one chat; every fourth one outgoing."""
    records = [{"platform": "whatsapp", "platformid": "100", "messageid": f"m{i:05d}",
                "destination": "3460001", "message": f"olá {i}", "sent": i % 4 == 0,
                "status": "x", "datetime": None} for i in range(start, start + n)]
    with engine.begin() as c:
        inbox.write(c, "chat_message", "default", {}, records, None)


def test_concurrent_consumers_take_each_incoming_message_exactly_once(engine: Engine,
                                                                     db_url: str) -> None:
    store(engine, 800)
    taken: dict[str, list[int]] = {}
    barrier = threading.Barrier(3, timeout=120)
    first_taken = threading.Barrier(3, timeout=120)

    def consumer(name: str) -> None:
        own = make_engine(db_url)  # its own engine and connections, like another process
        mine: list[int] = []
        barrier.wait()
        batch = take_messages(own, name, 17)
        # Every consumer holds a batch before any takes a second one, so they do run side by
        # side however the threads are scheduled (a loaded machine once let one take nothing).
        first_taken.wait()
        while batch:
            mine.extend(r["id"] for r in batch)
            time.sleep(0.002)  # handling the batch: the others get their turn meanwhile
            batch = take_messages(own, name, 17)
        taken[name] = mine
        own.dispose()

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in taken.values() for i in ids]
    assert len(everything) == len(set(everything)) == 600  # the 200 outgoing are not taken
    assert all(taken.values()), "every consumer got some: they ran side by side"
    with engine.connect() as c:
        rows = c.execute(select(chat_message.c.id, chat_message.c.taken_by)
                         .where(chat_message.c.taken_at.is_not(None))).all()
    assert {r.id: r.taken_by for r in rows} == {i: n for n, ids in taken.items() for i in ids}
    assert take_messages(engine, "late", 10) == []


def test_only_new_messages_are_taken_and_in_arrival_order(engine: Engine) -> None:
    store(engine, 8)
    first = take_messages(engine, "app", 3)
    assert [r["messageid"] for r in first] == ["m00001", "m00002", "m00003"]
    assert first[0]["message"] == "olá 1" and first[0]["account"] == "default"
    assert [r["messageid"] for r in take_messages(engine, "app")] == ["m00005", "m00006",
                                                                      "m00007"]
    store(engine, 8)  # a re-sync of the same messages does not make them new again
    assert take_messages(engine, "app") == []
    store(engine, 2, start=9)
    assert [r["messageid"] for r in take_messages(engine, "app")] == ["m00009", "m00010"]
    with engine.connect() as c:
        untaken_incoming = c.execute(select(func.count()).select_from(chat_message).where(
            chat_message.c.taken_at.is_(None), chat_message.c.sent == false())).scalar_one()
    assert untaken_incoming == 0


def test_bad_arguments_are_refused(engine: Engine) -> None:
    with pytest.raises(ValidationError, match="consumer"):
        take_messages(engine, "", 10)
    with pytest.raises(ValidationError, match="limit"):
        take_messages(engine, "app", 0)


def test_the_take_command_prints_json(db_url: str, engine: Engine) -> None:
    from sqlbridge.cli import main

    store(engine, 4)
    result = CliRunner().invoke(main, ["take", "--consumer", "cli", "--max", "2", "--json",
                                       "--database-url", db_url], catch_exceptions=False)
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["messageid"] for r in rows] == ["m00001", "m00002"]
    result = CliRunner().invoke(main, ["take", "--consumer", "cli", "--database-url", db_url],
                                catch_exceptions=False)
    # The table shows the message text, not its id: the one left (3) and neither taken one.
    assert "olá 3" in result.stdout
    assert "olá 1" not in result.stdout and "olá 2" not in result.stdout
    result = CliRunner().invoke(main, ["take", "--consumer", "cli", "--database-url", db_url],
                                catch_exceptions=False)
    assert result.stdout.strip() == "no new messages"


def test_the_sql_server_statement_skips_locked_rows_and_parses(tmp_path: Path) -> None:
    from tests.test_tsql_parse import as_tsql as _parsable
    from tests.test_tsql_parse import parse_errors

    sql = mssql_statements()["take_messages"]
    assert "WITH (ROWLOCK, READPAST, UPDLOCK)" in sql and "OUTPUT inserted.id" in sql
    assert "TOP" in sql and "sent = 0" in sql
    assert parse_errors(_parsable(sql) + ";\n", tmp_path) == ""

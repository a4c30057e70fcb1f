"""Fetched data lands in tables once: re-fetching updates, never duplicates."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, func, select, true

from sqlbridge import demo, inbox, registry, schema
from sqlbridge.providers import Providers
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox

CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "3461"}


def msg(mid: str, text: str, sent: bool = False) -> dict:
    return {"platform": "whatsapp", "platformid": "100", "messageid": mid,
            "destination": "3461", "message": text, "sent": sent, "status": "received",
            "datetime": "2024-01-01 10:00:00"}


def rows(engine: Engine, table) -> list[dict]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(select(table).order_by(table.c.id))]


def test_the_same_fetch_twice_inserts_once_and_keeps_first_seen(engine: Engine) -> None:
    batch = [msg("m1", "olá"), msg("m2", "tudo bem?", sent=True)]
    with engine.begin() as c:
        assert inbox.write(c, "chat_message", "default", CHAT, batch, 1) == {
            "chat_message": [2, 0]}
    first = rows(engine, schema.chat_message)
    time.sleep(0.01)
    with engine.begin() as c:
        assert inbox.write(c, "chat_message", "default", CHAT,
                           [msg("m1", "olá (editada)"), batch[1]], 2) == {"chat_message": [0, 2]}
    again = rows(engine, schema.chat_message)
    assert len(again) == 2
    assert again[0]["message"] == "olá (editada)" and again[0]["request_id"] == 2
    assert again[0]["first_seen"] == first[0]["first_seen"]
    assert again[0]["last_seen"] > first[0]["last_seen"]


def test_unread_flags_follow_what_the_provider_still_reports(engine: Engine) -> None:
    with engine.begin() as c:
        inbox.write(c, "chat_message_unread", "default", CHAT,
                    [msg("m1", "a"), msg("m2", "b")], 1)
    assert [r["unread"] for r in rows(engine, schema.chat_message)] == [True, True]
    with engine.begin() as c:  # m1 was read somewhere else
        counts = inbox.write(c, "chat_message_unread", "default", CHAT, [msg("m2", "b")], 2)
    assert counts == {"chat_message": [0, 2]}
    assert [r["unread"] for r in rows(engine, schema.chat_message)] == [False, True]
    with engine.begin() as c:  # nothing unread any more
        inbox.write(c, "chat_message_unread", "default", CHAT, [], 3)
    assert [r["unread"] for r in rows(engine, schema.chat_message)] == [False, False]


def test_accounts_keep_their_data_apart(engine: Engine) -> None:
    channel = [{"platform": "whatsapp", "platformid": "100", "name": "Loja"}]
    with engine.begin() as c:
        inbox.write(c, "chat_channel", "default", {}, channel, 1)
        inbox.write(c, "chat_channel", "marketing", {}, channel, 2)
    assert [r["account"] for r in rows(engine, schema.chat_channel)] == ["default", "marketing"]


def test_structure_fills_departments_and_channels(engine: Engine) -> None:
    records = [{"kind": "department", "alias": "SUP", "name": "Suporte"},
               {"kind": "channel", "department_alias": "SUP", "alias": "TEC",
                "name": "Técnico"}]
    with engine.begin() as c:
        assert inbox.write(c, "anna_structure", "default", {}, records, 1) == {
            "anna_department": [1, 0], "anna_channel": [1, 0]}


def test_a_large_batch_upserts_in_one_go(engine: Engine) -> None:
    batch = [msg(f"m{i}", f"text {i}") for i in range(5000)]
    with engine.begin() as c:
        assert inbox.write(c, "chat_message", "default", CHAT, batch, 1) == {
            "chat_message": [5000, 0]}
    with engine.begin() as c:
        assert inbox.write(c, "chat_message", "default", CHAT, batch, 2) == {
            "chat_message": [0, 5000]}
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(schema.chat_message)).scalar() == 5000


def test_the_demo_runs_every_operation_end_to_end(tmp_path) -> None:
    lines: list[str] = []
    result = demo.run(f"sqlite:///{tmp_path / 'demo.db'}", echo=lines.append)
    by_op = {(r["operation"], r["status"]) for r in result["requests"]}
    assert {r["operation"] for r in result["requests"]} >= {
        "chat.getchatchannels", "chat.sendmessage", "chat.sendfile", "chat.getchats",
        "chat.getmessages", "chat.getunreadmessages", "user.userhash", "user.userhashforced",
        "user.inactivate", "messenger.structure", "messenger.alertcounter",
        "messenger.requests", "messenger.link", "http.request", "user.getbalance"}
    assert ("chat.sendmessage", "failed") in by_op  # the deliberate unknown channel
    failed = [r for r in result["requests"] if r["status"] != "succeeded"]
    assert {r["error_code"] for r in failed} == {"CHANNEL_NOT_FOUND", "USER_INACTIVE"}
    assert result["intact"] == 2
    assert all(result["counts"][t.name] > 0 for t in schema.INBOX_TABLES)
    assert any("text check: 2 of 2" in line for line in lines)


def test_queue_and_inbox_share_one_transaction(queue: Queue) -> None:
    """A finished request and its data commit together (the worker passes inbox.write)."""
    from datetime import datetime

    from sqlbridge.queue import Completion

    queue.enqueue("chat.getchatchannels", {})
    (c,) = queue.claim("w", 1, 30)
    records = [{"platform": "telegram", "platformid": "200", "name": "T"}]
    queue.finish([Completion(id=c.id, lease_token=c.lease_token, attempt=1,
                             status="succeeded", started_at=datetime.now(), duration_ms=1,
                             worker="w", inbox=("chat_channel", "default", {}, records))],
                 inbox.write)
    assert rows(queue.engine, schema.chat_channel)[0]["request_id"] == c.id


# -- both upsert forms, fed by the real clients ----------------------------------------------

SB_CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000"}


def fetch_and_store(engine: Engine, providers: Providers, sb: Sandbox, operation: str,
                    params: dict, request_id: int = 1) -> dict[str, list[int]]:
    op, clean = registry.validate(operation, params)
    result = providers.call(op, clean, sb.account())
    assert op.lands_in is not None
    with engine.begin() as c:
        return inbox.write(c, op.lands_in, "default", clean, result.records, request_id)


def count(engine: Engine, table) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize(("operation", "params", "tables"), [
    ("chat.getchatchannels", {}, {"chat_channel": 3}),
    ("chat.getchats", {"platform": "whatsapp", "platformid": "100"}, {"chat": 2}),
    ("chat.getunreadmessages", SB_CHAT, {"chat_message": 1}),
    ("chat.getmessages", SB_CHAT, {"chat_message": 2}),
    ("user.userhash", {"userId": "1001"}, {"anna_user_hash": 1}),
    ("messenger.structure", {}, {"anna_department": 2, "anna_channel": 4}),
    ("messenger.requests", {"userId": "1001"}, {"anna_user_request": 4}),
    ("messenger.alertcounter", {"userId": "1001", "status": "A"}, {"anna_alert_counter": 1}),
])
def test_fetching_twice_changes_nothing_but_last_seen(engine: Engine, providers: Providers,
                                                      sandbox: Sandbox, operation: str,
                                                      params: dict, tables: dict) -> None:
    first = fetch_and_store(engine, providers, sandbox, operation, params, 1)
    assert first == {name: [n, 0] for name, n in tables.items()}
    by_name = {t.name: t for t in schema.INBOX_TABLES}
    before = {name: rows(engine, by_name[name]) for name in tables}
    if operation == "chat.getunreadmessages":
        sandbox.state.add_incoming_message(**SB_CHAT, text="not fetched yet")
    second = fetch_and_store(engine, providers, sandbox, operation, params, 2)
    if operation == "chat.getunreadmessages":  # the new one is unread too now
        assert second == {"chat_message": [1, 1]}
        return
    assert second == {name: [0, n] for name, n in tables.items()}
    for name in tables:
        after = rows(engine, by_name[name])
        assert len(after) == tables[name]
        for old, new in zip(before[name], after, strict=True):
            changed = {k for k in old if old[k] != new[k]}
            volatile = {"last_seen", "request_id"} | {
                # A new access hash on every call; the first read turned "received" to "read".
                "anna_user_hash": {"hash", "chat_url", "embedded_url", "expires_at"},
                "chat_message": {"status"}}.get(name, set())
            assert changed <= volatile, (name, changed)
            assert new["first_seen"] == old["first_seen"] and new["request_id"] == 2


def test_unread_follows_the_vendor_through_a_sync(engine: Engine, providers: Providers,
                                                  sandbox: Sandbox) -> None:
    m = schema.chat_message
    mid = sandbox.state.add_incoming_message(**SB_CHAT, text="nova mensagem")
    fetch_and_store(engine, providers, sandbox, "chat.getunreadmessages", SB_CHAT)

    def unread() -> list[str]:
        with engine.connect() as c:
            return sorted(c.execute(select(m.c.messageid).where(m.c.unread == true())).scalars())

    assert len(unread()) == 2 and mid in unread()
    # getmessages reads the chat at the vendor; what it returned is read here too.
    fetch_and_store(engine, providers, sandbox, "chat.getmessages", SB_CHAT)
    assert unread() == [] and sandbox.state.unread(**SB_CHAT) == []
    # Read elsewhere: the vendor stops listing it, the next unread sync clears it.
    later = sandbox.state.add_incoming_message(**SB_CHAT, text="outra")
    fetch_and_store(engine, providers, sandbox, "chat.getunreadmessages", SB_CHAT)
    assert unread() == [later]
    sandbox.state.mark_read(**SB_CHAT)
    assert fetch_and_store(engine, providers, sandbox, "chat.getunreadmessages",
                           SB_CHAT) == {"chat_message": [0, 1]}
    assert unread() == []


def test_unicode_and_a_10000_character_message_land_intact(engine: Engine,
                                                           providers: Providers,
                                                           sandbox: Sandbox) -> None:
    text = ("Olá ção 😀 日本語 & % # + \u200b\n" * 500)[:10_000]
    op, params = registry.validate("chat.sendmessage", {**SB_CHAT, "message": text})
    providers.call(op, params, sandbox.account())
    fetch_and_store(engine, providers, sandbox, "chat.getmessages", SB_CHAT)
    with engine.connect() as c:
        stored = c.execute(select(schema.chat_message.c.message)
                           .where(schema.chat_message.c.sent == true())
                           .order_by(schema.chat_message.c.id.desc())).scalars().first()
    assert stored == text and len(stored) == 10_000


def test_the_portable_form_gives_the_same_rows_and_counts(engine: Engine) -> None:
    """UPDATE, then INSERT … WHERE NOT EXISTS (the SQL Server form), run on SQLite."""
    batch = [msg(f"m{i}", f"t{i} ção") for i in range(600)]
    rows_in = [{**r, "account": "default", "unread": False} for r in batch]
    with engine.begin() as c:
        assert inbox.upsert(c, "chat_message", rows_in, 1, portable=True) == [600, 0]
    first = rows(engine, schema.chat_message)
    time.sleep(0.01)
    changed = [{**r, "message": "edited"} if r["messageid"] == "m5" else r for r in rows_in]
    with engine.begin() as c:
        assert inbox.upsert(c, "chat_message", changed + [
            {**rows_in[0], "messageid": "new"}], 2, portable=True) == [1, 600]
    again = rows(engine, schema.chat_message)
    assert len(again) == 601 and again[5]["message"] == "edited"
    assert again[0]["first_seen"] == first[0]["first_seen"]
    assert again[0]["last_seen"] > first[0]["last_seen"] and again[0]["request_id"] == 2


# Text Babelfish's OPENJSON would not give back as sent (escapes kept, cut at 4,000), and
# text it would: every kind goes through the statements of both engines' form.
HOSTILE = ['say "hi"', "back\\slash \\n", "two\nlines\ttab\r", "bell\x07 esc\x1b",
           "Olá ção 😀 日本語 & % # + \u200b \u2028", "x" * 4000, "😀" * 2000,
           "y" * 4001, "é" * 5000, "", "  spaced  ", "'single' /slash/ <b>"]


def _portable_batch() -> list[dict]:
    return [{**msg(f"h{i:03d}", text, sent=i % 2 == 0), "account": "default", "unread": False}
            for i, text in enumerate(HOSTILE * 3)]


def test_the_portable_form_writes_a_page_in_a_few_statements_not_one_per_row(
        engine: Engine) -> None:
    """On SQL Server a write per row is a round trip per row (no fast_executemany with
    FreeTDS): a 30,000-message sync spent minutes there. A page is a few statements."""
    from sqlalchemy import event

    batch = [{**msg(f"p{i:05d}", f"text {i}"), "account": "default", "unread": False}
             for i in range(2500)] + _portable_batch()
    executions: list[bool] = []

    def count(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        if "chat_message" in statement and not statement.lstrip().startswith("SELECT"):
            executions.append(many)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as c:
            assert inbox.upsert(c, "chat_message", batch, 1, portable=True) == [len(batch), 0]
        inserts = len(executions)
        with engine.begin() as c:
            assert inbox.upsert(c, "chat_message", batch, 2, portable=True) == [0, len(batch)]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert not any(executions), "an executemany: one round trip per row on SQL Server"
    assert inserts <= 4 and len(executions) - inserts <= 4, executions


@pytest.mark.parametrize("portable", [True, None], ids=["portable", "default"])
def test_hostile_text_lands_byte_for_byte_and_in_the_batch_s_order(engine: Engine,
                                                                   portable: bool | None) -> None:
    batch = _portable_batch()
    with engine.begin() as c:
        inbox.upsert(c, "chat_message", batch, 1, portable=portable)
    stored = rows(engine, schema.chat_message)
    # ids in the batch's order (take_messages and the dashboard list messages by id), and
    # every text exactly as given, rows in the JSON document and rows as parameters alike.
    assert [r["messageid"] for r in stored] == [b["messageid"] for b in batch]
    assert [r["message"] for r in stored] == [b["message"] for b in batch]
    assert [r["sent"] for r in stored] == [b["sent"] for b in batch]
    changed = [{**b, "message": b["message"][::-1] + '"'} for b in batch]
    with engine.begin() as c:
        inbox.upsert(c, "chat_message", changed, 2, portable=portable)
    assert [r["message"] for r in rows(engine, schema.chat_message)] == \
        [b["message"] for b in changed]


def test_duplicate_keys_in_one_batch_count_once(engine: Engine) -> None:
    with engine.begin() as c:
        assert inbox.write(c, "chat_message", "default", CHAT,
                           [msg("m1", "a"), msg("m1", "b")], 1) == {"chat_message": [1, 0]}
    assert [r["message"] for r in rows(engine, schema.chat_message)] == ["b"]


def test_clearing_many_unread_stays_under_the_parameter_limit(engine: Engine) -> None:
    many = [msg(f"u{i}", "x") for i in range(2500)]
    with engine.begin() as c:
        inbox.write(c, "chat_message_unread", "default", CHAT, many, 1)
    with engine.begin() as c:
        assert inbox.write(c, "chat_message_unread", "default", CHAT, many[:10], 2) == {
            "chat_message": [0, 2500]}
    with engine.connect() as c:
        still = c.execute(select(func.count()).select_from(schema.chat_message)
                          .where(schema.chat_message.c.unread == true())).scalar_one()
    assert still == 10


def test_an_unknown_writer_is_refused(engine: Engine) -> None:
    with engine.begin() as c, pytest.raises(ValueError, match="no inbox writer"):
        inbox.write(c, "nowhere", "default", {}, [{"a": 1}], 1)


def test_the_sql_server_statements_are_portable() -> None:
    statements = inbox.statements_for_mssql()
    unread = {"unread_stored", "unread_clear"}
    assert set(statements) == {f"{t}_{kind}" for t in inbox.TARGETS
                               for kind in ("existing", "update", "insert")} | unread
    for name, sql in statements.items():
        assert "MERGE" not in sql.upper(), name
        assert name in unread or "WITH (UPDLOCK, HOLDLOCK)" in sql, name
    # T-SQL has no boolean literal test: "unread IS 1" would not parse on SQL Server.
    assert "unread = 1" in statements["unread_stored"]
    insert = statements["chat_message_insert"]
    assert "WHERE NOT (EXISTS (SELECT" in insert and "CAST(" in insert
    assert statements["chat_message_update"].startswith(
        "UPDATE sqlbridge.chat_message WITH (UPDLOCK, HOLDLOCK) SET")
    assert "first_seen" not in statements["chat_message_update"]

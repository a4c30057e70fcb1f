"""Fetched data lands in tables once: re-fetching updates, never duplicates."""

from __future__ import annotations

import time

from sqlalchemy import Engine, func, select

from sqlbridge import demo, inbox, schema
from sqlbridge.queue import Queue

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

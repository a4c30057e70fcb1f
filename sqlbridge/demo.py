"""The main job, end to end, on the embedded default: what ``scripts/demo`` shows.

A fresh SQLite file, the sandbox of both APIs on 127.0.0.1, one request of every operation
(including text that the sp_OACreate scripts break: ``&``, ``#``, ``%``, accents, an emoji, and a
message longer than 8,000 characters), a worker run until the queue is empty, a scheduled chat
sync, then a readable summary. Nothing leaves this machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from . import schema
from .config import Settings, WorkerSettings
from .db import make_engine
from .install import install
from .queue import Queue
from .worker import Worker

DASHBOARD_HINT = ("and in a browser: sqlbridge dashboard --database-url {url}   "
                  "(then open http://127.0.0.1:8790/)")
UNICODE_TEXT = "Olá! Preço: 5€ & 10% off #promo — ação já 😀"
LONG_TEXT = ("Mensagem longa: " + "0123456789 áéíóú ç € 😀 & # % " * 320)[:9000]

# (operation, params, why it is in the demo). Phase 1 changes state; phase 2 reads it back.
PHASE_1: list[tuple[str, dict[str, Any], str]] = [
    ("chat.getchatchannels", {}, "channels into chat_channel"),
    ("chat.sendmessage", {"platform": "whatsapp", "platformid": "100",
                          "destination": "34600001000", "message": UNICODE_TEXT},
     "& # % accents and an emoji, intact"),
    ("chat.sendmessage", {"platform": "whatsapp", "platformid": "100",
                          "destination": "34600001000", "message": LONG_TEXT},
     f"{len(LONG_TEXT)} characters (sp_OA* cuts at 8,000)"),
    ("chat.sendfile", {"platform": "whatsapp", "platformid": "100",
                       "destination": "34600001000", "type": "image",
                       "fileurl": "https://example.com/photo.jpg",
                       "thumburl": "https://example.com/thumb.jpg", "message": "Foto 📷"},
     "a file with a caption"),
    ("chat.sendmessage", {"platform": "telegram", "platformid": "999",
                          "destination": "x", "message": "hi"},
     "an unknown channel: fails with CHANNEL_NOT_FOUND, no retry"),
    ("user.getbalance", {}, "any other Afilnet class.method (passthrough)"),
    ("user.userhash", {"userId": "1001", "startService": "chat"}, "hash into anna_user_hash"),
    ("user.userhashforced", {"userId": "2001", "userName": "Maria José"},
     "creates the user, then its hash"),
    ("user.userhash", {"userId": "1003"}, "an inactive user: the vendor's own refusal"),
    ("user.inactivate", {"userId": "1002"}, "inactivates a user"),
    ("messenger.structure", {}, "departments and channels into tables"),
    ("http.request", {"url": "{echo}", "method": "POST",
                      "payload": {"text": UNICODE_TEXT}},
     "generic HTTP, like sp_invoke_external_rest_endpoint"),
]
PHASE_2: list[tuple[str, dict[str, Any], str]] = [
    ("chat.getchats", {"platform": "whatsapp", "platformid": "100"}, "chats into chat"),
    ("chat.getunreadmessages", {"platform": "whatsapp", "platformid": "100",
                                "destination": "34600001000"}, "unread incoming messages"),
    ("chat.getmessages", {"platform": "whatsapp", "platformid": "100",
                          "destination": "34600001000"}, "the chat, with what was sent"),
    ("messenger.alertcounter", {"userId": "1001"}, "open requests awaiting user 1001"),
    ("messenger.requests", {"userId": "1001", "dataIni": "01/01/2024", "dataFim": "31/12/2024"},
     "user 1001's requests of 2024"),
    ("messenger.link", {"userDocType": "CPF", "userDocValue": "12345678900"},
     "a link, user found by document"),
]


def _fill(params: dict[str, Any], echo: str) -> dict[str, Any]:
    return {k: (echo if v == "{echo}" else v) for k, v in params.items()}


def run(database_url: str = "sqlite:///sqlbridge-demo.db", *, fresh: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; return what it printed as data (the tests check it)."""
    from .sandbox import Sandbox

    if fresh and database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    engine = make_engine(database_url)
    install(engine)
    with Sandbox(seed=7) as sb:
        settings = Settings(
            database_url=database_url,
            accounts={"default": sb.account("default")},
            worker=dataclasses.replace(WorkerSettings(), concurrency=8, poll_interval=0.1,
                                       backoff_base=0.2, backoff_max=1.0),
        )
        queue = Queue(engine, settings)
        echo(f"sandbox of the Afilnet and AnnA APIs at {sb.url}")
        echo(f"database: {database_url}\n")
        rows: list[tuple[int, str]] = []
        for phase, ops in (("1", PHASE_1), ("2", PHASE_2)):
            for operation, params, why in ops:
                r = queue.enqueue(operation, _fill(params, sb.echo_url),
                                  correlation=f"demo phase {phase}")
                rows.append((r.id, why))
            echo(f"phase {phase}: {len(ops)} requests enqueued; running the worker...")
            Worker(settings, engine, schedules=False).run(once=True)

        synced = _scheduled_sync(settings, engine, echo)

        echo("\nrequests:")
        echo(f"{'id':>3}  {'operation':<24} {'status':<10} {'http':<5} {'error':<26} why")
        results = []
        for rid, why in rows:
            row = queue.get(rid)
            results.append(row)
            echo(f"{rid:>3}  {row['operation']:<24} {row['status']:<10} "
                 f"{row['http_status'] or '':<5} {row['error_code'] or '':<26} {why}")

        intact = text_round_trip(engine)
        echo(f"\ntext check: {intact} of 2 tricky messages (& # % accents emoji; "
             f"{len(LONG_TEXT)} characters) read back from chat_message exactly as sent")
        counts = table_counts(engine)
        echo("\nrows in the inbox tables:")
        for name, n in counts.items():
            echo(f"  {name:<20} {n}")
        echo("\nlook inside: sqlite3 " + database_url.removeprefix("sqlite:///") +
             " 'SELECT id, operation, status, error_code FROM outbox'")
        echo("or: sqlbridge status --database-url " + database_url +
             "   (scripts/demo installs the command in .venv/bin)")
        echo(DASHBOARD_HINT.format(url=database_url))
    engine.dispose()
    return {"requests": results, "counts": counts, "synced": synced, "intact": intact}


def _scheduled_sync(settings: Settings, engine: Any, echo: Callable[[str], None]) -> Any:
    """A schedule row makes the worker sync every chat into the tables."""
    from . import sync

    add = getattr(sync, "add_schedule", None)
    if add is None:
        return None
    add(engine, "demo-chat-sync", "sync.chats", {}, "5m")
    echo("schedule 'demo-chat-sync' (sync.chats every 5m) added; running the worker...")
    stats = Worker(settings, engine).run(once=True)
    echo(f"scheduled sync: {stats.succeeded} requests succeeded, {stats.failed} failed "
         "(channels -> chats per channel -> messages per chat)")
    m = schema.chat_message
    with engine.connect() as conn:
        sample = conn.execute(select(m.c.platform, m.c.destination, m.c.sent, m.c.unread,
                                     m.c.message).order_by(m.c.id).limit(6)).all()
    echo("synced messages (first 6 of chat_message):")
    for platform, destination, sent, unread, text in sample:
        direction = "out" if sent else "in "
        echo(f"  {platform:<9} {destination:<12} {direction} {'unread' if unread else '      '}"
             f" {text[:50]!r}")
    return stats


def text_round_trip(engine: Any) -> int:
    """How many of the two texts sp_OA* would break came back from the API unchanged."""
    m = schema.chat_message
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m)
                            .where(m.c.message.in_([UNICODE_TEXT, LONG_TEXT]))).scalar_one()


def table_counts(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (schema.outbox, schema.outbox_attempt, *schema.INBOX_TABLES)}

"""What operators touch on day two: purge and retention, ids never reused, `sqlbridge sync`
on its own run only, the first contact with a database, doctor, mistakes refused at enqueue,
log lines per attempt, JSON output, and docs that match the code."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, event, func, select, update
from sqlalchemy.schema import CreateTable

from sqlbridge import dbcheck, logs, registry, sync
from sqlbridge.cli import EXIT_CODES, main
from sqlbridge.config import ConfigError, Settings, load
from sqlbridge.db import make_engine
from sqlbridge.errors import ValidationError
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import outbox, outbox_attempt
from sqlbridge.worker import Worker, WorkerStats

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stdout, result.stderr


def age_rows(engine: Engine, status: str = "succeeded", seconds: int = 90 * 86400) -> None:
    with engine.begin() as c:
        c.execute(update(outbox).values(status=status, finished_at=func.datetime(
            "now", f"-{seconds} seconds")))


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as c:
        return (c.execute(select(func.count()).select_from(outbox)).scalar_one(),
                c.execute(select(func.count()).select_from(outbox_attempt)).scalar_one())


# -- purge -------------------------------------------------------------------------------------

@pytest.mark.sqlite_only
@pytest.mark.parametrize("age", ["30", "-1d", "nand", "nan", "inf", "1e400d", "0d", "1e400",
                                 "36501d", "30 days"])
def test_purge_refuses_ages_without_a_unit_or_out_of_range(db_url: str, queue: Queue,
                                                           age: str) -> None:
    queue.enqueue("chat.getchatchannels")
    age_rows(queue.engine)
    code, _, err = run("purge", "--older-than", age, "--yes", "--database-url", db_url)
    assert code == 2 and "30d, 12h, 90m or 45s" in err and len(err.strip().splitlines()) == 1
    assert counts(queue.engine)[0] == 1


@pytest.mark.sqlite_only
def test_purge_counts_asks_and_deletes_in_batches_attempts_first(db_url: str,
                                                                 queue: Queue) -> None:
    for _ in range(7):
        queue.enqueue("chat.getchatchannels")
    for c in queue.claim("w", 7, 30):
        with queue.engine.begin() as conn:
            conn.execute(outbox_attempt.insert().values(
                request_id=c.id, attempt=1, started_at=func.datetime("now"), outcome="failed"))
    age_rows(queue.engine)
    with queue.engine.begin() as c:
        c.execute(update(outbox).where(outbox.c.id <= 2).values(status="failed"))
    code, out, _ = run("purge", "--older-than", "30d", "--dry-run", "--database-url", db_url)
    assert code == 0 and out.strip() == \
        "would purge 7 requests older than 30d: failed 2, succeeded 5"
    # Not on a terminal and no --yes: refused, nothing deleted.
    code, _, err = run("purge", "--older-than", "30d", "--database-url", db_url)
    assert code == 2 and "--yes" in err and counts(queue.engine) == (7, 7)
    # On a terminal the question is asked; "n" keeps everything.
    assert queue.purge_counts(86400) == {"failed": 2, "succeeded": 5}
    code, out, _ = run("purge", "--older-than", "30d", "--yes", "--batch", "2",
                       "--database-url", db_url)
    assert code == 0 and out.strip() == "purged 7 requests" and counts(queue.engine) == (0, 0)


@pytest.mark.sqlite_only
def test_purge_in_batches_of_one_deletes_only_old_rows(queue: Queue) -> None:
    ids = [queue.enqueue("chat.getchatchannels").id for _ in range(4)]
    age_rows(queue.engine)
    with queue.engine.begin() as c:  # the newest finished just now
        c.execute(update(outbox).where(outbox.c.id == ids[-1])
                  .values(finished_at=func.datetime("now")))
    deletes: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if re.match(r"\s*DELETE FROM (\w+\.)?outbox\s", statement, re.I):
            deletes.append(statement)

    event.listen(queue.engine, "before_cursor_execute", seen)
    assert queue.purge(86400, batch=1) == 3
    event.remove(queue.engine, "before_cursor_execute", seen)
    assert len(deletes) == 3  # one bounded transaction per request, never one big DELETE
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).scalars().all() == [ids[-1]]


@pytest.mark.sqlite_only
def test_retention_in_the_worker_purges_old_finished_requests(settings: Settings,
                                                              queue: Queue) -> None:
    queue.enqueue("chat.getchatchannels")
    age_rows(queue.engine, seconds=40 * 86400)
    keep = queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "1"})
    with queue.engine.begin() as c:
        c.execute(update(outbox).where(outbox.c.id == keep.id).values(status="cancelled"))
    off = Worker(settings, queue.engine, call=lambda *a: None, schedules=False)
    off.run(once=True)
    assert counts(queue.engine)[0] == 2  # retention is off by default
    on = dataclasses.replace(settings, worker=dataclasses.replace(settings.worker,
                                                                  retention=30 * 86400))
    Worker(on, queue.engine, call=lambda *a: None, schedules=False).run(once=True)
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).scalars().all() == [keep.id]


@pytest.mark.sqlite_only
def test_retention_purges_one_batch_per_tick_so_the_worker_loop_keeps_moving(
        settings: Settings, queue: Queue) -> None:
    from sqlbridge.queue import PURGE_BATCH
    from sqlbridge.worker import RETENTION_EVERY

    with queue.engine.begin() as c:
        c.execute(outbox.insert(), [{"operation": "chat.getchatchannels", "params": "{}"}
                                    for _ in range(2 * PURGE_BATCH + 7)])
    age_rows(queue.engine, seconds=40 * 86400)
    on = dataclasses.replace(settings, worker=dataclasses.replace(settings.worker,
                                                                  retention=30 * 86400))
    w = Worker(on, queue.engine, call=lambda *a: None, schedules=False)
    left = []
    for now in (0.0, 0.5, 1.0, 2.0, 3.0):
        w._retention(now)
        left.append(counts(queue.engine)[0])
    assert left == [PURGE_BATCH + 7, PURGE_BATCH + 7, 7, 0, 0]
    assert w._next_retention == 2.0 + RETENTION_EVERY


def test_retention_setting_needs_a_unit(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[worker]\nretention = "30d"\n')
    assert load(cfg, env={}).worker.retention == 30 * 86400
    assert load(None, env={}).worker.retention is None
    for bad in ('"30"', '"-1d"', "30", '"nan"'):
        cfg.write_text(f"[worker]\nretention = {bad}\n")
        with pytest.raises(ConfigError, match="worker.retention"):
            load(cfg, env={})


# -- ids are never reused ----------------------------------------------------------------------

@pytest.mark.sqlite_only
def test_sqlite_never_reuses_a_purged_id(queue: Queue) -> None:
    ids = [queue.enqueue("chat.getchatchannels").id for _ in range(3)]
    age_rows(queue.engine)
    assert queue.purge(86400) == 3
    assert queue.enqueue("chat.getchatchannels").id == ids[-1] + 1


def test_an_old_sqlite_outbox_is_upgraded_keeping_rows_and_never_reusing_ids(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    eng = make_engine(url)
    install(eng)
    with eng.begin() as c:  # the outbox as versions before AUTOINCREMENT made it
        old_ddl = str(CreateTable(outbox).compile(dialect=eng.dialect))
        c.exec_driver_sql("DROP TABLE outbox")
        c.exec_driver_sql(old_ddl.replace("AUTOINCREMENT", "").replace("sqlbridge.", ""))
    q = Queue(eng)
    ids = [q.enqueue("chat.getchatchannels").id for _ in range(3)]
    with eng.begin() as c:
        c.execute(outbox.delete().where(outbox.c.id == ids[-1]))
        c.execute(outbox_attempt.insert().values(request_id=ids[-1], attempt=1,
                                                 started_at=func.datetime("now"),
                                                 outcome="succeeded"))
    from sqlbridge.install import pending

    assert pending(eng) == ["sqlite:metadata"]  # doctor: "run sqlbridge install"
    install(eng)
    assert pending(eng) == []
    with eng.connect() as c:
        ddl = c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'outbox'").scalar()
        assert "AUTOINCREMENT" in ddl
        assert c.execute(select(outbox.c.id)).scalars().all() == ids[:2]
    assert q.enqueue("chat.getchatchannels").id == ids[-1] + 1


# -- sqlbridge sync works on its own run -------------------------------------------------------

@pytest.fixture
def live(settings: Settings, sandbox: Sandbox) -> Settings:
    return dataclasses.replace(settings, accounts={"default": sandbox.account()})


def test_sync_sends_nothing_but_its_own_run_and_counts_exactly(live: Settings, sandbox: Sandbox,
                                                                queue: Queue) -> None:
    sandbox.state.populate(channels=2, chats_per_channel=3, messages_per_chat=2)
    other = queue.enqueue("chat.sendmessage", {"platform": "whatsapp", "platformid": "100",
                                               "destination": "346", "message": "not now"})
    summary = sync.sync_now(live, queue.engine)
    assert summary.requests == {"succeeded": 1 + 2 + 6}
    assert queue.get(other.id)["status"] == "queued"  # never sent by the sync


def test_sync_waits_while_another_worker_holds_part_of_its_run(
        live: Settings, sandbox: Sandbox, queue: Queue, providers: object) -> None:
    import functools

    from sqlbridge import attempt, inbox

    sandbox.state.populate(channels=1, chats_per_channel=2, messages_per_chat=1)
    sid = sync.add_schedule(queue.engine, "held", sync.CHAT_SYNC, {}, 86400, enabled=False)
    root = queue.enqueue("chat.getchatchannels", {}, schedule_id=sid)
    (held,) = queue.claim("another-worker", 1, 60)  # another worker is sending the root
    runner = threading.Thread(target=sync._drive_run, args=(queue, live, root.id, sid),
                              kwargs={"progress": None, "poll": 0.02, "deadline": None})
    runner.start()
    runner.join(1.0)
    assert runner.is_alive()  # it cannot be done: its root is still in flight elsewhere
    done = attempt.run(held, settings=live, call=providers.call,  # type: ignore[attr-defined]
                       worker="another-worker",
                       followups=functools.partial(sync.followups, queue.engine))
    queue.finish([done], inbox.write)
    runner.join(120)
    assert not runner.is_alive()
    with queue.engine.connect() as c:
        assert sync._tree_state(c, root.id) == {"succeeded": 1 + 1 + 2}


@pytest.mark.sqlite_only
def test_two_syncs_at_once_each_count_exactly_their_own_run(live: Settings, sandbox: Sandbox,
                                                             queue: Queue) -> None:
    sandbox.state.populate(channels=2, chats_per_channel=4, messages_per_chat=2)
    results: list[sync.SyncSummary] = []
    threads = [threading.Thread(target=lambda: results.append(
        sync.sync_now(live, queue.engine))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.requests for r in results] == [{"succeeded": 1 + 2 + 8}] * 2
    assert len({r.root_id for r in results}) == 2


@pytest.mark.sqlite_only
def test_sync_waits_for_its_whole_tree_while_a_worker_runs_alongside(
        live: Settings, sandbox: Sandbox, queue: Queue) -> None:
    sandbox.state.populate(channels=2, chats_per_channel=10, messages_per_chat=2)
    w = Worker(live, queue.engine, schedules=False)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        summary = sync.sync_now(live, queue.engine)
    finally:
        w.stop()
        t.join(120)
    assert summary.requests == {"succeeded": 1 + 2 + 20}
    with queue.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(outbox).where(
            outbox.c.status.in_(("queued", "processing")))).scalar_one() == 0


def test_sync_timeout_exits_6_and_leaves_the_run_to_the_workers(db_url: str,
                                                                 queue: Queue) -> None:
    code, out, _ = run("sync", "--timeout", "0.001", "--database-url", db_url)
    assert code == 6 and "stopped waiting (1 still in flight)" in out
    assert queue.summary()["by_status"] == {"queued": 1}


# -- the first contact with a database ---------------------------------------------------------

@pytest.mark.parametrize("command", [["status"], ["show", "1"], ["enqueue", "chat.getchats"],
                                     ["worker", "--once"], ["schedule", "list"], ["purge",
                                     "--older-than", "1d", "--dry-run"], ["sync"]])
def test_before_install_every_command_says_so_and_creates_nothing(tmp_path: Path,
                                                                  command: list[str]) -> None:
    db = tmp_path / "none.db"
    code, _, err = run(*command, "--database-url", f"sqlite:///{db}")
    assert code == 3 and not db.exists()
    assert err.strip() == ("error: SCHEMA_NOT_INSTALLED: the schema is not installed here: run "
                           f"`sqlbridge install --database-url sqlite:///{db}`")


def test_an_existing_database_without_the_schema_says_so(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    make_engine(f"sqlite:///{db}").connect().close()
    code, _, err = run("worker", "--once", "--database-url", f"sqlite:///{db}")
    assert code == 3 and "the schema is not installed here" in err


MISSING_DRIVER = "mssql+pyodbc://u:p@127.0.0.1:1/db?driver=NoSuchDriver"


@pytest.mark.parametrize("command", [["status"], ["install"], ["enqueue", "chat.getchats"],
                                     ["worker", "--once"], ["doctor"]])
def test_a_missing_odbc_driver_is_one_line_exit_3_for_every_command(command: list[str]) -> None:
    pytest.importorskip("pyodbc", reason="pyodbc is not installed")
    code, out, err = run(*command, "--database-url", MISSING_DRIVER)
    if command == ["doctor"]:
        assert code == 1 and "[fail] sql server driver" in out
        return
    assert code == 3, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "NoSuchDriver" in line
    assert "ODBC driver" in line and "apt-get install" in line and "u:p@" not in line


def test_a_closed_port_is_an_outage_not_a_mistake() -> None:
    pyodbc = pytest.importorskip("pyodbc", reason="pyodbc is not installed")
    if "FreeTDS" not in pyodbc.drivers():
        pytest.skip("the FreeTDS ODBC driver (tdsodbc) is not installed")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mssql+pyodbc://u:p@127.0.0.1:{port}/db?driver=FreeTDS&TDS_Version=7.4"
    with pytest.raises(dbcheck.DatabaseUnavailable, match="cannot reach the database"):
        dbcheck.first_contact(make_engine(url))
    code, _, err = run("status", "--database-url", url)
    assert code == 7 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("message, kind", [
    ("[28000] [FreeTDS][SQL Server]Login failed for user 'x'. (18456)", "refused the login"),
    ("[42000] Cannot open database \"nope\" requested by the login. (4060)", "does not exist"),
    ("[IM002] Data source name not found and no default driver specified", "cannot be found"),
])
def test_login_and_database_mistakes_are_configuration_errors(message: str, kind: str) -> None:
    from sqlalchemy.exc import DBAPIError

    exc = DBAPIError("connect", {}, Exception(message))
    found = dbcheck.classify(exc, "mssql+pyodbc://u:secret@h/db?driver=FreeTDS")
    assert isinstance(found, ConfigError) and kind in str(found)
    assert "secret" not in str(found)


# -- doctor -------------------------------------------------------------------------------------

def test_doctor_fails_placeholders_and_broken_schedules(tmp_path: Path, db_url: str,
                                                        engine: Engine) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[accounts.default.afilnet]\nuser = "me@example.com"\npassword = "…"\n'
                   '[[schedules]]\nname = "x"\noperation = "chat.getchats"\ninterval = "5m"\n')
    code, out, _ = run("doctor", "--config", str(cfg), "--database-url", db_url)
    assert code == 1
    assert "[fail] account default: afilnet" in out
    assert "[fail] schedules: [[schedules]] #1 (x):" in out and "platform" in out
    assert "[ ok ] schema version: up to date" in out
    cfg.write_text('[accounts.default.afilnet]\nuser = "real"\npassword = "s3cr3t-value"\n')
    code, out, _ = run("doctor", "--config", str(cfg), "--database-url", db_url)
    assert code == 0, out
    assert "[ ok ] account default: afilnet" in out


def _doctor_with_checksums_changed(db_url: str, engine: Engine, versioned: bool) -> tuple[int, str]:
    """doctor's answer while the recorded checksums of the repeatable scripts (or, with
    ``versioned``, of the versioned ones) are not those of the files."""
    from sqlbridge.install import is_versioned
    from sqlbridge.schema import schema_version

    with engine.begin() as c:
        saved = c.execute(select(schema_version.c.version, schema_version.c.checksum)).all()
        for version, _ in saved:
            if is_versioned(version) == versioned:
                c.execute(update(schema_version).where(schema_version.c.version == version)
                          .values(checksum="0" * 64))
    try:
        code, out, _ = run("doctor", "--database-url", db_url)
    finally:  # a SQL Server database is shared by the tests that follow: put it back
        with engine.begin() as c:
            for version, digest in saved:
                c.execute(update(schema_version).where(schema_version.c.version == version)
                          .values(checksum=digest))
    return code, out


def test_doctor_fails_a_schema_that_needs_an_upgrade(db_url: str, engine: Engine) -> None:
    # Repeatable scripts (procedures, views; SQLite's one metadata row) changed: install
    # upgrades in place.
    code, out = _doctor_with_checksums_changed(db_url, engine, versioned=False)
    assert code == 1 and "[fail] schema version:" in out and "run sqlbridge install" in out


def test_doctor_names_a_changed_versioned_script_as_the_schema_version(
        db_url: str, engine: Engine) -> None:
    """A versioned script changed after it was applied is install's refusal (a person
    decides), reported on the schema version line, not as an unreachable database."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no versioned scripts (its tables come from the metadata)")
    code, out = _doctor_with_checksums_changed(db_url, engine, versioned=True)
    assert code == 1 and "[ ok ] database:" in out, out
    assert "[fail] schema version: sql/001_schema.sql was applied with checksum 000000000000" \
        in out, out


def test_doctor_names_the_sql_server_driver_and_tls_settings() -> None:
    pyodbc = pytest.importorskip("pyodbc", reason="pyodbc is not installed")
    if "FreeTDS" not in pyodbc.drivers():
        pytest.skip("the FreeTDS ODBC driver (tdsodbc) is not installed")
    url = ("mssql+pyodbc://u:p@127.0.0.1:1/db?driver=FreeTDS&TrustServerCertificate=yes"
           "&Encrypt=no")
    code, out, _ = run("doctor", "--database-url", url)
    assert code == 1
    assert "[ ok ] sql server driver: FreeTDS" in out
    assert "[warn] sql server TLS: TrustServerCertificate=yes" in out
    assert "[warn] sql server TLS: Encrypt=no" in out
    assert "[fail] database: cannot reach the database" in out and "u:p@" not in out


# -- mistakes refused at enqueue ----------------------------------------------------------------

def test_a_typo_in_a_declared_class_is_refused_with_a_suggestion(queue: Queue) -> None:
    with pytest.raises(ValidationError) as e:
        queue.enqueue("chat.sendmesage", {"platform": "whatsapp"})
    assert e.value.code == "UNKNOWN_OPERATION"
    assert "did you mean 'chat.sendmessage'?" in str(e.value)
    assert registry.resolve("sms.sendsms").passthrough
    assert registry.resolve("user.getbalance").passthrough


def test_unknown_accounts_and_loose_booleans_are_refused_at_enqueue(tmp_path: Path,
                                                                    db_url: str,
                                                                    engine: Engine) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[accounts.default.afilnet]\nuser = "u"\npassword = "pw-pw"\n')
    base = ["--config", str(cfg), "--database-url", db_url]
    code, _, err = run("enqueue", "chat.getchatchannels", "--account", "nosuch", *base)
    assert code == 4 and "UNKNOWN_ACCOUNT" in err and "nosuch" in err
    code, _, err = run("schedule", "add", "s", "chat.getchatchannels", "--account", "nosuch",
                       *base)
    assert code == 4 and "UNKNOWN_ACCOUNT" in err
    code, _, err = run("schedule", "add", "s", "sync.chats", "-p", "unread_only=maybe", *base)
    assert code == 4 and "true, false, 1 or 0" in err
    assert run("schedule", "add", "s", "sync.chats", "-p", "unread_only=1", *base)[0] == 0
    assert run("enqueue", "chat.getchatchannels", *base)[0] == 0


def test_a_host_outside_the_allowlist_is_refused_at_enqueue(tmp_path: Path, db_url: str,
                                                            engine: Engine) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[accounts.default.http]\nallowed_hosts = ["api.example.com"]\n')
    base = ["--config", str(cfg), "--database-url", db_url]
    code, _, err = run("enqueue", "http.request", "-p", "url=https://evil.example.net/x",
                       *base)
    assert code == 4 and "HOST_NOT_ALLOWED" in err and "https://api.example.com" in err
    code, _, err = run("schedule", "add", "s", "http.request", "-p",
                       "url=http://api.example.com/", *base)  # plain http: not allowed
    assert code == 4 and "HOST_NOT_ALLOWED" in err
    assert run("enqueue", "http.request", "-p", "url=https://api.example.com/x", *base)[0] == 0
    assert Queue(engine).summary()["by_status"] == {"queued": 1}


# -- operators see what happens -----------------------------------------------------------------

def test_one_log_line_per_attempt_with_its_fields_and_no_secret(
        live: Settings, sandbox: Sandbox, queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    ok = queue.enqueue("chat.getchatchannels")
    bad = queue.enqueue("chat.sendmessage", {"platform": "telegram", "platformid": "999",
                                             "destination": "x", "message": "hi"})
    with caplog.at_level(logging.INFO, logger="sqlbridge.attempt"):
        Worker(live, queue.engine, schedules=False).run(once=True)
    lines = [r for r in caplog.records if r.name == "sqlbridge.attempt"]
    assert len(lines) == 2
    by_id = {r.fields["request_id"]: r for r in lines}  # type: ignore[attr-defined]
    assert by_id[ok.id].fields == {  # type: ignore[attr-defined]
        "request_id": ok.id, "operation": "chat.getchatchannels", "account": "default",
        "attempt": 1, "outcome": "succeeded", "http_status": 200, "error_code": None,
        "duration_ms": by_id[ok.id].fields["duration_ms"]}  # type: ignore[attr-defined]
    assert by_id[bad.id].fields["error_code"] == "CHANNEL_NOT_FOUND"  # type: ignore[attr-defined]
    secrets = live.secrets()
    for r in lines:
        assert not any(s in r.getMessage() for s in secrets)


def test_json_log_lines_and_warnings_for_uncertain_and_dead_letters() -> None:
    import io

    from sqlbridge.queue import Claimed, Completion

    stream = io.StringIO()
    handler = logs.configure("INFO", "json", secrets=["tok-123456"], stream=stream)
    try:
        claim = Claimed(7, None, "default", "afilnet", "chat.sendmessage", "{}", 0, 3, 3, "t",
                        None, None, None)
        done = Completion(7, "t", 3, "failed", None, 12, "w",  # type: ignore[arg-type]
                          http_status=503, error_code="HTTP_503",
                          error_message="tok-123456", claim=claim)
        logs.attempts_written([done])
        logging.getLogger("sqlbridge.test").warning("echoed: Bearer %s", "tok-123456")
    finally:
        logging.getLogger().removeHandler(handler)
    record, echoed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert echoed["message"] == "echoed: Bearer ***"
    assert record["level"] == "WARNING" and record["dead_letter"] is True
    assert {k: record[k] for k in logs.FIELDS} == {
        "request_id": 7, "operation": "chat.sendmessage", "account": "default", "attempt": 3,
        "outcome": "failed", "http_status": 503, "error_code": "HTTP_503", "duration_ms": 12}
    assert record["time"].endswith("Z") and "tok-123456" not in stream.getvalue()


def test_the_stop_line_is_a_sentence() -> None:
    text = str(WorkerStats(claimed=3, succeeded=2, failed=1))
    assert text.startswith("3 claimed, 2 succeeded, 1 failed") and "WorkerStats(" not in text


def test_show_json_prints_objects_and_utc_times(db_url: str, queue: Queue) -> None:
    rid = queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "1"}).id
    with queue.engine.begin() as c:
        c.execute(update(outbox).values(response='{"status": "success", "result": []}'))
    code, out, _ = run("show", str(rid), "--json", "--database-url", db_url)
    row = json.loads(out)
    assert row["params"] == {"platform": "whatsapp", "platformid": "1"}
    assert row["response"] == {"status": "success", "result": []}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["created_at"])


def test_schedule_list_shows_a_finished_run_settled_and_fits_a_terminal(
        live: Settings, sandbox: Sandbox, queue: Queue, db_url: str) -> None:
    sync.add_schedule(queue.engine, "a-rather-long-schedule-name", "messenger.structure", {},
                      "5m", start_at=None)
    sync.run_now(queue.engine, "a-rather-long-schedule-name")
    assert sync.run_due(queue, "w") == 1
    Worker(live, queue.engine, schedules=False).run(once=True)  # no settle tick after it
    code, out, _ = run("schedule", "list", "--database-url", db_url)
    assert code == 0 and "succeeded" in out and "queued" not in out
    assert max(len(line) for line in out.splitlines()) < 120, out


# -- docs match the code ------------------------------------------------------------------------

def test_the_readme_error_table_is_the_registry() -> None:
    rows = {code: int(n) for n, code in re.findall(r"^\| (\d{5}) \| `([A-Z_]+)` \|", README,
                                                   re.M)}
    assert rows == registry.ERROR_NUMBERS


def test_every_error_code_python_raises_is_documented_in_the_readme() -> None:
    root = Path(sync.__file__).parent
    codes = set()
    for path in root.rglob("*.py"):
        body = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r'code = "([A-Z][A-Z_]+)"', body))
        codes |= set(re.findall(r'code="([A-Z][A-Z_]+)"', body))
    missing = sorted(c for c in codes if f"`{c}`" not in README)
    assert "SCHEDULE_NOT_FOUND" in codes and missing == []


def test_the_readme_exit_codes_are_the_cli_exit_codes() -> None:
    rows = dict((int(n), text.strip()) for n, text in
                re.findall(r"^\| `(\d+)` \| ([^|]+) \|", README, re.M))
    assert set(rows) == set(EXIT_CODES.values())


def test_the_readme_layout_names_every_module() -> None:
    layout = README[README.index("## Layout"):]
    root = Path(sync.__file__).parent
    for path in sorted(root.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            assert f"`{path.name}`" in layout, path.name
    assert "docs/operations.md" in README
    for doc in [README, *(p.read_text(encoding="utf-8")
                          for p in (root.parent / "docs").glob("*.md"))]:
        assert "seeds/" not in doc  # the project has no such folder


def test_a_new_schedule_runs_at_once_as_docs_sync_md_says(queue: Queue) -> None:
    sync.add_schedule(queue.engine, "five", "messenger.structure", {}, "5m")
    assert sync.run_due(queue, "w") == 1
    doc = (Path(sync.__file__).parent.parent / "docs" / "sync.md").read_text(encoding="utf-8")
    assert "created at 10:02 runs at once" in doc


def test_the_worker_command_logs_json_lines_without_secrets(sandbox: Sandbox,
                                                             tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from sqlbridge.sandbox.server import SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER

    url = f"sqlite:///{tmp_path / 'w.db'}"
    install(make_engine(url))
    q = Queue(make_engine(url))
    ok = q.enqueue("chat.getchatchannels").id
    bad = q.enqueue("chat.getchats", {"platform": "telegram", "platformid": "999"}).id
    env = {**os.environ, "SQLBRIDGE_AFILNET_URL": sandbox.afilnet_post_url,
           "SQLBRIDGE_AFILNET_USER": SANDBOX_AFILNET_USER,
           "SQLBRIDGE_AFILNET_PASSWORD": SANDBOX_AFILNET_PASSWORD}
    env.pop("SQLBRIDGE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "sqlbridge", "worker", "--once",
                           "--log-format", "JSON", "--database-url", url],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    attempts = {r["request_id"]: r for r in records if "request_id" in r}
    assert attempts[ok]["outcome"] == "succeeded" and attempts[ok]["level"] == "INFO"
    assert attempts[bad]["outcome"] == "failed" and attempts[bad]["operation"] == "chat.getchats"
    stop = [r["message"] for r in records if " stopped: " in r["message"]]
    assert stop and "2 claimed, 1 succeeded, 1 failed" in stop[0]
    assert SANDBOX_AFILNET_PASSWORD not in proc.stderr + proc.stdout

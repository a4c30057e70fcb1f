"""Hostile rows and hostile answers: each fails its own request with a clear code, and nothing
kills, stalls or loops a worker. Answers come from a real server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, text

from sqlbridge import attempt, textsafe
from sqlbridge.config import Settings
from sqlbridge.errors import ProtocolError, TransientError
from sqlbridge.providers.base import CallResult
from sqlbridge.providers.transport import Transport
from sqlbridge.queue import Queue
from sqlbridge.sandbox import Sandbox
from sqlbridge.schema import chat_channel, outbox
from sqlbridge.worker import Worker

Behaviour = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    """A server on 127.0.0.1 that answers every request with ``behaviour(handler)``."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda h: answer(h, 200, b"{}")
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                try:
                    outer.behaviour(self)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST  # noqa: N815

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(h: BaseHTTPRequestHandler, status: int, body: bytes,
           headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def endless(h: BaseHTTPRequestHandler) -> None:
    """A chunked body that never ends (until the client hangs up)."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    block = b"[" * 65536
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    while True:
        h.wfile.write(chunk)


def huge(h: BaseHTTPRequestHandler) -> None:
    """A declared 200 MB body, sent for real (until the client hangs up)."""
    size = 200 * 1024 * 1024
    h.send_response(200)
    h.send_header("Content-Length", str(size))
    h.end_headers()
    block = b" " * 65536
    for _ in range(size // len(block)):
        h.wfile.write(block)


def drip(h: BaseHTTPRequestHandler) -> None:
    """A valid status line, then one byte every 0.2 s, well inside any read timeout."""
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.flush()
    for _ in range(100000):
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(0.2)


def drip_headers(h: BaseHTTPRequestHandler) -> None:
    """A status line, then one header byte every 0.2 s: no read ever times out, and the
    standard library reads headers with no clock of its own."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    h.wfile.flush()
    for _ in range(300):
        h.wfile.write(b"a")
        h.wfile.flush()
        time.sleep(0.2)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def pointed_at(live: Settings, url: str, **afilnet: Any) -> Settings:
    account = live.account("default")
    return dataclasses.replace(live, accounts={"default": dataclasses.replace(
        account, afilnet=dataclasses.replace(account.afilnet, url=url, **afilnet))})


CHAT = {"platform": "whatsapp", "platformid": "100"}


def run(settings: Settings, queue: Queue) -> None:
    Worker(settings, queue.engine, schedules=False).run(once=True)


# -- text no database can store --------------------------------------------------------------


def test_an_answer_with_a_lone_surrogate_is_stored_and_its_batch_finishes(
        live: Settings, hostile: Hostile, queue: Queue) -> None:
    body = (b'{"status": "success", "result": {"list": [{"platform": "whatsapp", '
            b'"platformid": "100", "name": "bad \\ud800 name"}]}, "x\\udfff": "\\ud800"}')
    hostile.behaviour = lambda h: answer(h, 200, body)
    ids = [queue.enqueue("chat.getchatchannels", {}).id for _ in range(3)]
    run(pointed_at(live, hostile.url), queue)
    for rid in ids:
        row = queue.get(rid)
        assert row["status"] == "succeeded", row
        assert "\ufffd" in row["response"]
    with queue.engine.connect() as c:
        assert c.execute(select(chat_channel.c.name)).scalar() == "bad \ufffd name"


def test_textsafe_makes_any_string_storable() -> None:
    value = {"a\ud800": ["\udfff", ("x", {"k": "\ud83d"})], "ok": 1.5}
    out = textsafe.storable(value)
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # does not raise
    assert out == {"a\ufffd": ["\ufffd", ["x", {"k": "\ufffd"}]], "ok": 1.5}


# -- rows no claim can read -----------------------------------------------------------------


def run_and_see_only_the_poison_row_fail(live: Settings, queue: Queue, before: int,
                                         poison: int, after: int) -> None:
    """The worker runs the rows queued around an unreadable one: they succeed, it alone fails."""
    run(live, queue)
    assert queue.get(before)["status"] == "succeeded"
    assert queue.get(after)["status"] == "succeeded"
    with queue.engine.connect() as c:
        status, code = c.execute(select(outbox.c.status, outbox.c.error_code)
                                 .where(outbox.c.id == poison)).one()
    assert (status, code) == ("failed", "UNREADABLE_ROW")


@pytest.mark.sqlite_only
@pytest.mark.parametrize("column", ["params", "operation"])
def test_a_poison_row_is_failed_alone_and_the_queue_keeps_moving(
        live: Settings, queue: Queue, column: str) -> None:
    before = queue.enqueue("chat.getchatchannels", {}).id
    with queue.engine.begin() as c:
        values = {"params": "'{}'", "operation": "'chat.getchatchannels'"}
        values[column] = "CAST(X'7B2261223A22C3FF227D' AS TEXT)"
        c.execute(text(f"INSERT INTO outbox (account, operation, params) VALUES "
                       f"('default', {values['operation']}, {values['params']})"))
        poison = c.execute(text("SELECT max(id) FROM outbox")).scalar()
    after = queue.enqueue("chat.getchatchannels", {}).id
    run_and_see_only_the_poison_row_fail(live, queue, before, poison, after)


@pytest.mark.sqlite_only
def test_a_poison_row_whose_worker_died_is_failed_by_recovery(live: Settings,
                                                              queue: Queue) -> None:
    with queue.engine.begin() as c:
        c.execute(text("INSERT INTO outbox (account, operation, params, status, attempts) "
                       "VALUES ('default', 'chat.sendmessage', "
                       "CAST(X'7B2261223A22C3FF227D' AS TEXT), 'processing', 1)"))
    assert Queue(queue.engine, live).recover_expired()["failed"] == 1
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.error_code)).scalar() == "UNREADABLE_ROW"


@pytest.mark.sqlite_only
def test_a_row_whose_available_at_is_not_a_date_does_not_crash_worker_once(
        live: Settings, queue: Queue) -> None:
    good = queue.enqueue("chat.getchatchannels", {}).id
    with queue.engine.begin() as c:
        c.execute(text("INSERT INTO outbox (account, operation, params, available_at) "
                       "VALUES ('default', 'chat.getchatchannels', '{}', 'not a date')"))
    run(live, queue)
    assert queue.get(good)["status"] == "succeeded"
    assert queue.next_due_in() is None
    with queue.engine.connect() as c:
        codes = c.execute(select(outbox.c.error_code).where(outbox.c.id != good)).scalars()
        assert list(codes) == ["UNREADABLE_ROW"]


# -- answers too deep, too big, too slow --------------------------------------------------------


@pytest.mark.parametrize(("operation", "params", "status"), [
    ("chat.getchatchannels", {}, "failed"),
    ("chat.sendmessage", {**CHAT, "destination": "34600000001", "message": "m"}, "uncertain"),
])
@pytest.mark.parametrize("depth", [900, 5000])
def test_json_nested_thousands_deep_is_a_protocol_error_under_the_delivery_rules(
        live: Settings, hostile: Hostile, queue: Queue, operation: str,
        params: dict[str, str], status: str, depth: int) -> None:
    # 900 levels parse (and then broke recursive code); 5000 break the parser itself.
    hostile.behaviour = lambda h: answer(h, 200, b'{"a":' * depth + b"1" + b"}" * depth)
    rid = queue.enqueue(operation, params, max_attempts=2).id
    run(pointed_at(live, hostile.url), queue)
    row = queue.get(rid)
    assert (row["status"], row["error_code"]) == (status, "PROTOCOL_ERROR"), row
    assert hostile.requests == (2 if status == "failed" else 1)  # reads retried, sends not


@pytest.mark.parametrize("behaviour", [huge, endless], ids=["huge", "endless"])
def test_a_huge_or_endless_answer_is_cut_at_the_cap_with_bounded_memory(
        hostile: Hostile, behaviour: Behaviour) -> None:
    hostile.behaviour = behaviour
    transport = Transport(2)
    try:
        gc.collect()
        tracemalloc.start()
        with pytest.raises(ProtocolError) as e:
            transport.send("POST", hostile.url, what="t", timeout=(5, 30), secrets=[],
                           max_bytes=1024 * 1024, data=b"x")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        transport.close()
    assert e.value.code == "RESPONSE_TOO_LARGE" and e.value.http_status == 200
    print(f"peak traced memory reading a {behaviour.__name__} answer, cap 1 MiB: "
          f"{peak / 1e6:.1f} MB")
    assert peak < 16 * 1024 * 1024


@pytest.mark.parametrize("behaviour", [huge, endless], ids=["huge", "endless"])
def test_a_worker_stays_small_against_a_huge_or_endless_answer(
        live: Settings, hostile: Hostile, queue: Queue, behaviour: Behaviour) -> None:
    hostile.behaviour = behaviour
    settings = pointed_at(live, hostile.url, max_response_bytes=2 * 1024 * 1024)
    for _ in range(4):
        queue.enqueue("chat.getchatchannels", {}, max_attempts=1)
    gc.collect()
    tracemalloc.start()
    run(settings, queue)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak traced memory of a worker over 4 {behaviour.__name__} answers, cap 2 MiB: "
          f"{peak / 1e6:.1f} MB")
    with queue.engine.connect() as c:
        codes = c.execute(select(outbox.c.error_code)).scalars().all()
    assert codes == ["RESPONSE_TOO_LARGE"] * 4
    assert peak < 64 * 1024 * 1024


def test_a_dripping_answer_is_cut_at_the_call_deadline(hostile: Hostile) -> None:
    hostile.behaviour = drip
    transport = Transport(2)
    try:
        with pytest.raises(TransientError) as e:
            transport.send("POST", hostile.url, what="t", timeout=(5, 5), secrets=[],
                           deadline=1.0, data=b"x")
    finally:
        transport.close()
    assert e.value.code == "DEADLINE_EXCEEDED" and e.value.delivered


def test_dripping_headers_are_cut_at_the_call_deadline(hostile: Hostile) -> None:
    hostile.behaviour = drip_headers
    transport = Transport(2)
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            transport.send("POST", hostile.url, what="t", timeout=(5, 5), secrets=[],
                           deadline=1.0, data=b"x")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - asserted on in the test's thread
            outcome.append(exc)

    # The call runs in a thread only so that a broken deadline fails this test instead of
    # hanging it for a minute; every assertion is made here.
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=20)
    transport.close()
    assert not caller.is_alive(), "the call outlived its deadline by far"
    assert len(outcome) == 1 and isinstance(outcome[0], TransientError), outcome
    assert outcome[0].code == "DEADLINE_EXCEEDED" and outcome[0].delivered


def test_a_dripping_send_becomes_uncertain(live: Settings, hostile: Hostile,
                                           queue: Queue) -> None:
    hostile.behaviour = drip
    rid = queue.enqueue("chat.sendmessage", {**CHAT, "destination": "34600000002",
                                             "message": "m"}).id
    run(pointed_at(live, hostile.url, total_timeout=1.0, read_timeout=5), queue)
    row = queue.get(rid)
    assert (row["status"], row["error_code"]) == ("uncertain", "DEADLINE_EXCEEDED")


def test_a_stored_response_is_capped_with_a_note(live: Settings, queue: Queue) -> None:
    rid = queue.enqueue("chat.getchatchannels", {}).id
    claim = queue.claim("w", 1, 30)[0]
    big = {"status": "success", "result": {"list": []}, "pad": "x" * 3_000_000}
    done = attempt.run(claim, settings=live, worker="w",
                       call=lambda *_: CallResult(200, big, []))
    queue.finish([done])
    stored = queue.get(rid)["response"]
    assert len(stored) <= textsafe.MAX_STORED_RESPONSE
    assert "sqlbridge_truncated" in json.loads(stored)


# -- shutdown -------------------------------------------------------------------------------


def _worker(sb: Sandbox, db_url: str, *args: str) -> subprocess.Popen[str]:
    from tests.test_worker import worker_env

    return subprocess.Popen([sys.executable, "-m", "sqlbridge", "worker", "--no-schedules",
                             "--poll-interval", "0.1", *args], env=worker_env(sb, db_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processing(queue: Queue) -> int:
    with queue.engine.connect() as c:
        return len(c.execute(select(outbox.c.id).where(outbox.c.status == "processing")).all())


def _wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, "condition not reached in time"
        time.sleep(0.05)


def test_sigterm_gives_calls_in_flight_the_grace_then_exits_leaving_them_to_recovery(
        sandbox: Sandbox, db_url: str, queue: Queue) -> None:
    sandbox.faults.timeout_seconds = 600  # the vendor holds every call
    sandbox.fail_next(2, "timeout")
    for _ in range(2):
        queue.enqueue("chat.getchatchannels", {})
    proc = _worker(sandbox, db_url, "--grace", "0.5", "--lease", "60")
    _wait_for(lambda: _processing(queue) == 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "2 left to lease recovery" in out
    assert _processing(queue) == 2  # their leases are intact; recovery will settle them


def test_a_second_signal_exits_at_once(sandbox: Sandbox, db_url: str, queue: Queue) -> None:
    sandbox.faults.timeout_seconds = 600
    sandbox.fail_next(1, "timeout")
    queue.enqueue("chat.getchatchannels", {})
    proc = _worker(sandbox, db_url, "--grace", "3600")
    _wait_for(lambda: _processing(queue) == 1)
    proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: "finishing in-flight calls" in (proc.stderr.readline() or ""))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT


# -- nets under the nets -----------------------------------------------------------------------


def test_a_result_that_cannot_be_stored_fails_its_own_row_and_the_batch_is_written(
        live: Settings, queue: Queue) -> None:
    a = queue.enqueue("chat.getchatchannels", {}).id
    b = queue.enqueue("chat.getchatchannels", {}).id
    claims = {c.id: c for c in queue.claim("w", 2, 30)}
    ok = attempt.run(claims[a], settings=live, worker="w",
                     call=lambda *_: CallResult(200, {"fine": 1}, []))
    bad = attempt.run(claims[b], settings=live, worker="w",
                      call=lambda *_: CallResult(200, {"fine": 1}, []))
    bad.response = "\ud800"  # what textsafe prevents; the worker must survive it anyway
    w = Worker(live, queue.engine, schedules=False)
    w._flush([ok, bad], w._inbox_writer())  # noqa: SLF001
    assert queue.get(a)["status"] == "succeeded"
    row = queue.get(b)
    assert (row["status"], row["error_code"]) == ("failed", "UNSTORABLE_RESULT")


def test_a_statement_failing_on_data_is_skipped_not_retried_forever(live: Settings,
                                                                   queue: Queue) -> None:
    w = Worker(live, queue.engine, schedules=False)
    calls = []

    def poisoned() -> None:
        calls.append(1)
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    assert w._db("claim", poisoned) is None  # noqa: SLF001
    assert calls == [1]


def test_streamed_reading_keeps_connections_alive(sandbox: Sandbox) -> None:
    transport = Transport(2)
    try:
        for path in ("status/200", "status/503", "status/200", "status/404", "status/200"):
            with contextlib.suppress(TransientError):
                transport.send("GET", sandbox.url + path, what="t", timeout=(5, 5), secrets=[])
        pools = transport.session.adapters["http://"].poolmanager.pools
        pool = pools._container[next(iter(pools.keys()))]  # noqa: SLF001
        assert (pool.num_requests, pool.num_connections) == (5, 1)
    finally:
        transport.close()


def test_a_follow_up_built_from_bad_vendor_data_is_skipped_not_the_parent(
        live: Settings, queue: Queue) -> None:
    rid = queue.enqueue("chat.getchatchannels", {}).id
    claim = queue.claim("w", 1, 30)[0]
    done = attempt.run(claim, settings=live, worker="w",
                       call=lambda *_: CallResult(200, {"ok": 1}, []))
    done.followups = [
        {"operation": "chat.getchats", "params": {"platform": "no-such", "platformid": "1"}},
        {"operation": "chat.getchats", "params": {"platform": "whatsapp", "platformid": "1"}}]
    assert queue.finish([done]) == []
    assert queue.get(rid)["status"] == "succeeded"
    with queue.engine.connect() as c:
        children = c.execute(select(outbox.c.params).where(outbox.c.parent_id == rid)).all()
    assert len(children) == 1


def _json_response(body: bytes) -> Any:
    import requests

    resp = requests.Response()
    resp.status_code, resp._content = 200, body  # noqa: SLF001
    return resp


def test_the_depth_limit_refuses_json_deeper_than_it() -> None:
    from sqlbridge.providers.transport import json_object, parse_json

    n = textsafe.MAX_JSON_DEPTH + 1
    with pytest.raises(ProtocolError, match="nested more than"):
        json_object(_json_response(b'{"a":' * n + b"1" + b"}" * n), "t", [])
    n = textsafe.MAX_JSON_DEPTH
    assert parse_json(_json_response(b'{"a":' * n + b"1" + b"}" * n))
    with pytest.raises(ValueError, match="nested too deeply"):  # the parser's own limit
        parse_json(_json_response(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("column", "value"), [
    ("priority", "'high'"), ("priority", "X'00'"), ("attempts", "9223372036854775807"),
    ("max_attempts", "'x'"), ("max_attempts", "1e400"),
])
def test_a_row_whose_numbers_are_not_numbers_is_failed_alone_and_its_batch_is_sent(
        live: Settings, queue: Queue, column: str, value: str) -> None:
    # SQLite keeps 'high' in an INTEGER column. Failing after the claim committed left the
    # whole batch 'processing', and lease recovery then made its sends 'uncertain'.
    send = {**CHAT, "destination": "34600000001", "message": "m"}
    before = queue.enqueue("chat.sendmessage", send).id
    with queue.engine.begin() as c:
        c.execute(text(f"INSERT INTO outbox (account, operation, params, {column}) VALUES "
                       f"('default', 'chat.getchatchannels', '{{}}', {value})"))
        poison = c.execute(text("SELECT max(id) FROM outbox")).scalar()
    after = queue.enqueue("chat.sendmessage", {**send, "destination": "34600000002"}).id
    run_and_see_only_the_poison_row_fail(live, queue, before, poison, after)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("column", ["attempts", "max_attempts"])
def test_lease_recovery_fails_a_row_whose_counts_are_not_numbers(
        live: Settings, queue: Queue, column: str) -> None:
    with queue.engine.begin() as c:
        c.execute(text(f"INSERT INTO outbox (account, operation, params, status, {column}) "
                       "VALUES ('default', 'chat.getchatchannels', '{}', 'processing', 'x')"))
    assert Queue(queue.engine, live).recover_expired()["failed"] == 1
    with queue.engine.connect() as c:
        assert c.execute(select(outbox.c.status, outbox.c.error_code)).one() == (
            "failed", "UNREADABLE_ROW")


def two_lengths(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "2")
    h.send_header("Content-Length", "5")
    h.end_headers()
    h.wfile.write(b"{}")


@pytest.mark.parametrize(("operation", "params", "status", "requests"), [
    ("chat.getchatchannels", {}, "failed", 2),
    ("chat.sendmessage", {**CHAT, "destination": "34600000001", "message": "m"}, "uncertain", 1),
])
def test_an_answer_whose_headers_urllib3_refuses_was_still_sent(
        live: Settings, hostile: Hostile, queue: Queue, operation: str,
        params: dict[str, str], status: str, requests: int) -> None:
    # urllib3 raises InvalidHeader for the *answer*; it was once reported as "the request
    # cannot be sent" (INVALID_REQUEST, failed), so a delivered send looked safe to retry.
    hostile.behaviour = two_lengths
    rid = queue.enqueue(operation, params, max_attempts=2).id
    run(pointed_at(live, hostile.url), queue)
    row = queue.get(rid)
    assert (row["status"], row["error_code"]) == (status, "PROTOCOL_ERROR"), row
    assert hostile.requests == requests


def test_a_password_echoed_in_an_error_code_is_masked_though_upper_cased(
        live: Settings, hostile: Hostile, queue: Queue) -> None:
    # Afilnet's error codes are read upper-cased: the echo became 'SANDBOX-PASS-…' in
    # error_message, which the case-sensitive scrubber did not recognise.
    settings = pointed_at(live, hostile.url)
    secret = settings.account("default").afilnet.password.reveal()
    hostile.behaviour = lambda h: answer(
        h, 200, json.dumps({"status": "error", "error": f"bad {secret} here"}).encode())
    rid = queue.enqueue("chat.getchatchannels", {}, max_attempts=1).id
    run(settings, queue)
    row = queue.get(rid, with_attempts=True)
    assert row["status"] == "failed"
    assert secret.lower() not in json.dumps(row, default=str).lower()

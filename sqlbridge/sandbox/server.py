"""The sandbox HTTP server: routes, faults, and the ``Sandbox`` handle tests hold.

Standard library only (ThreadingHTTPServer, HTTP/1.1 keep-alive) and bound to 127.0.0.1 by
default: it exists so that the demo, the tests and the benchmarks make real HTTP calls without
ever leaving the machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..config import Account, _account
from . import admin, afilnet, anna
from .faults import FaultPlan, Faults
from .state import State, seeded

SANDBOX_AFILNET_USER = "demo@example.com"
SANDBOX_AFILNET_PASSWORD = "sandbox-pass-4417"
SANDBOX_ANNA_COMPANY_HASH = "SANDBOXCOMPANY9"
SANDBOX_ANNA_USER = "anna-user"
SANDBOX_ANNA_PASSWORD = "anna-pass-8812"


_AFILNET_PATHS = ("api/http/", "api/http", "api/basic/", "api/basic")


def _form(query: str, raw: bytes) -> dict[str, str]:
    """Afilnet's parameters: the query string (GET, as the seed's scripts send them) overlaid
    with the UTF-8 form body (POST)."""
    form = dict(parse_qsl(query, keep_blank_values=True))
    if raw:
        form.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return form


def _operation(path: str, form: dict[str, str]) -> str:
    """What a request asked for, in the project's naming: ``chat.sendmessage``,
    ``User/UserHash``, or the path itself for echo and status."""
    if form or path in _AFILNET_PATHS:
        return f"{form.get('class', '')}.{form.get('method', '')}"
    if path.startswith("anna/"):
        return path.removeprefix("anna/").removeprefix("REST/AnnACorporate/")
    return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a worker opening 64 keep-alive connections at
    # once overflowed it, and the connections dropped from the accept queue came back as
    # CONNECTION_LOST after a second (the benchmark's c = 64 case lost requests that way).
    request_queue_size = 128
    sandbox: Sandbox

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        super().__init__(address, _Handler)
        self.sandbox = sandbox
        # Keep-alive connections outlive serve_forever(); stop() closes them so that a stopped
        # sandbox really stops answering (tests use that to simulate an unreachable vendor).
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.connections.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout, dropped fault, stop()) is the normal case here,
        # not something to print a traceback for.
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError | ValueError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's
    # delayed ACK (40 ms on Linux), capping a keep-alive client at ~25 requests/s.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, *_args: Any) -> None:  # tests and demos stay quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        after, self._after = getattr(self, "_after", None), None
        if after is not None:  # the work is done; now the answer goes wrong
            self._fault(after.removeprefix("after_"))
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"),
                   "application/json; charset=utf-8", headers)

    def _fault(self, kind: str) -> bool:
        """Apply a fault; True when the request is fully handled (or dropped)."""
        sb = self.server.sandbox
        if kind == "timeout":
            # An Event rather than sleep(): stop() must not wait for held requests.
            return sb.stopping.wait(sb.faults.timeout_seconds)
        if kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if kind in ("503", "500", "502", "504", "429"):
            retry = {"Retry-After": "1"} if kind in ("429", "503") else {}
            self._send(int(kind), f'{{"error": "sandbox fault {kind}"}}'.encode(),
                       headers=retry)
        elif kind == "html":
            self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                       "text/html")
        elif kind == "empty":
            self._send(200, b"")
        elif kind == "badjson":
            self._send(200, b'{"status":')
        elif kind == "garbled":  # 200, JSON, but not the vendor's shape
            self._send(200, b'{"ok": 1}')
        return True

    def _body(self) -> bytes:
        """The request body, Content-Length or chunked (a client streaming an upload)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        sb = self.server.sandbox
        try:
            raw = self._body()
        except ValueError:
            self.close_connection = True
            self._json(400, {"error": "unreadable request body"})
            return
        parts = urlsplit(self.path)
        path = parts.path.lstrip("/")
        if path.startswith("_sandbox/"):
            self._admin(path.removeprefix("_sandbox/"), raw)
            return
        afilnet_path = path in _AFILNET_PATHS
        form = _form(parts.query, raw) if afilnet_path else {}
        sb.record(path, _operation(path, form))
        # Counted while the call is held (its latency), and no longer once the answer may be
        # on its way: a client can never see the answer while the call still counts.
        sb.call_started()
        try:
            stopping = bool(sb.faults.latency_ms) and sb.stopping.wait(sb.faults.latency_ms
                                                                       / 1000)
        finally:
            sb.call_ended()
        if stopping:
            return  # stopping: no answer, as from a vendor that went away mid-call
        kind = sb.plan.choose(path)
        if kind and not kind.startswith("after_") and self._fault(kind):
            return
        # An after_* fault replaces the answer in _send, once the work is done.
        self._after = kind if kind and kind.startswith("after_") else None
        sb.record_processed(_operation(path, form), form.get("message") if form else
                            raw.decode("utf-8", "replace"))
        try:
            if afilnet_path:
                self._afilnet(path.startswith("api/basic"), form)
            elif path.startswith("anna/"):
                self._anna(path.removeprefix("anna/"), raw)
            elif path == "echo" or path.startswith("echo/"):
                self._echo(parts, raw)
            elif path.startswith("status/") and path[7:].isdigit() and 200 <= int(path[7:]) < 600:
                self._status(int(path[7:]))
            else:
                self._json(404, {"error": f"no such path /{path}"})
        except Exception as exc:  # a sandbox bug must read as one, not as a dropped connection
            self._json(500, {"error": f"sandbox error: {type(exc).__name__}: {exc}"})

    def _status(self, code: int) -> None:
        if code in (204, 304):  # no body allowed; a Content-Length body would poison keep-alive
            self._send(code, b"")
            return
        self._json(code, {"status": code}, {"Retry-After": "1"} if code in (429, 503) else None)

    # -- the APIs -----------------------------------------------------------------------------

    def _afilnet(self, basic: bool, form: dict[str, str]) -> None:
        sb = self.server.sandbox
        if basic:
            user = password = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    user = password = None
        else:
            user, password = form.get("user"), form.get("password")
        ok, err = ("SUCCESS", "ERROR") if sb.status_case == "upper" else ("success", "error")
        try:
            result = afilnet.handle(sb.state, form, user, password,
                                    (SANDBOX_AFILNET_USER, SANDBOX_AFILNET_PASSWORD))
        except afilnet.AfilnetError as exc:
            self._json(200, {"status": err, "error": exc.code})
            return
        body: dict[str, Any] = {"status": ok}
        if isinstance(result, list):
            body["result"] = result if sb.list_shape == "array" else {"list": result}
        elif result is not None:
            body["result"] = result
        self._json(200, body)

    def _anna(self, path: str, raw: bytes) -> None:
        sb = self.server.sandbox
        if self.command != "POST":
            self._json(405, {"success": False, "message": "Use POST"})
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            self._json(400, {"success": False, "message": "JSON inválido"})
            return
        if path == anna.TOKEN_PATH:
            self._json(200, anna.get_token(
                sb.state, body, (SANDBOX_ANNA_COMPANY_HASH, SANDBOX_ANNA_USER,
                                 SANDBOX_ANNA_PASSWORD), sb.token_ttl, sb.expires_in_format))
            return
        header = self.headers.get("Authorization", "")
        if not (header.startswith("Bearer ") and sb.state.token_valid(header[7:])):
            self._json(401, {"success": False, "message": "Token inválido ou expirado"})
            return
        if not path.startswith("REST/AnnACorporate/"):
            self._json(404, {"success": False, "message": "Endpoint não encontrado"})
            return
        self._json(200, anna.handle(sb.state, path.removeprefix("REST/AnnACorporate/"), body,
                                    SANDBOX_ANNA_COMPANY_HASH, sb.url))

    def _echo(self, parts: Any, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        self._json(200, {"method": self.command, "path": parts.path, "query": parts.query,
                         "headers": dict(self.headers.items()), "body": text, "json": parsed})

    def _admin(self, action: str, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, {"error": "the body must be JSON"})
            return
        self._json(*admin.run(self.server.sandbox, action, body))


class Sandbox:
    """A running sandbox: ``with Sandbox() as sb: …`` or ``start()`` / ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, faults: Faults | None = None,
                 seed: int | None = None, token_ttl: float = 3600,
                 expires_in_format: str = "seconds", status_case: str = "upper",
                 list_shape: str = "object") -> None:
        self.host, self.port = host, port
        self.seed = seed
        self.faults = faults or Faults(seed=seed)
        self.plan = FaultPlan(self.faults, seed)
        self.state: State = seeded(seed)
        self.token_ttl = token_ttl
        self.expires_in_format = expires_in_format
        self.status_case = status_case
        self.list_shape = list_shape
        # Paths of API requests (admin calls excluded), and the same as (path, operation)
        # pairs, operation being e.g. "chat.sendmessage" or "User/UserHash".
        self.requests_seen: list[str] = []
        self.operations_seen: list[tuple[str, str]] = []
        # (operation, message or body) of every request that was processed, i.e. got past the
        # faults that happen before processing: what the fake vendor actually did.
        self.processed: list[tuple[str, str]] = []
        # API calls held now (in their latency), and the most there ever were at once: what
        # a concurrency cap is checked against.
        self.in_flight = 0
        self.max_in_flight = 0
        self._seen_lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def record(self, path: str, operation: str) -> None:
        with self._seen_lock:
            self.requests_seen.append(path)
            self.operations_seen.append((path, operation))

    def call_started(self) -> None:
        with self._seen_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def call_ended(self) -> None:
        with self._seen_lock:
            self.in_flight -= 1

    def record_processed(self, operation: str, what: str | None) -> None:
        with self._seen_lock:
            self.processed.append((operation, what or ""))

    def reset(self) -> None:
        """Back to the seeded state, with no scripted faults and nothing seen."""
        self.state = seeded(self.seed)
        self.plan.clear()
        with self._seen_lock:
            self.requests_seen.clear()
            self.operations_seen.clear()
            self.processed.clear()
            self.max_in_flight = self.in_flight

    def fail_next(self, n: int, kind: str, path_contains: str | None = None) -> None:
        self.plan.fail_next(n, kind, path_contains)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._faults = value
        if hasattr(self, "plan"):
            self.plan.faults = value

    def start(self) -> Sandbox:
        self.stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        # stop() waits up to one poll interval; test suites start a sandbox per test.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True,
                                        name="sqlbridge-sandbox")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.stopping.set()
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
            self._server = None
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def afilnet_post_url(self) -> str:
        return self.url + "api/http/"

    @property
    def afilnet_basic_url(self) -> str:
        return self.url + "api/basic/"

    @property
    def anna_url(self) -> str:
        return self.url + "anna/"

    @property
    def echo_url(self) -> str:
        return self.url + "echo"

    def account(self, name: str = "default", auth: str = "post") -> Account:
        """Settings of an account that points at this sandbox, with its credentials."""
        return _account(name, {
            "afilnet": {"url": self.afilnet_basic_url if auth == "basic"
                        else self.afilnet_post_url, "user": SANDBOX_AFILNET_USER,
                        "password": SANDBOX_AFILNET_PASSWORD, "auth": auth,
                        "read_timeout": 10},
            "anna": {"url": self.anna_url, "company_hash": SANDBOX_ANNA_COMPANY_HASH,
                     "user": SANDBOX_ANNA_USER, "password": SANDBOX_ANNA_PASSWORD,
                     "read_timeout": 10},
            # The sandbox listens on loopback, which http.request refuses unless allowed.
            "http": {"allowed_hosts": [{"url": self.url, "allow_private": True}],
                     "read_timeout": 10},
        })


def serve(host: str = "127.0.0.1", port: int = 8780, faults: Faults | None = None,
          seed: int | None = None) -> None:
    """Run a sandbox in the foreground until interrupted (the ``sqlbridge sandbox`` command)."""
    sb = Sandbox(host, port, faults=faults, seed=seed).start()
    print(f"sandbox listening on {sb.url}")
    print(f"  Afilnet (POST form):  {sb.afilnet_post_url}")
    print(f"  Afilnet (Basic auth): {sb.afilnet_basic_url}")
    print(f"  AnnA base URL:        {sb.anna_url}")
    print(f"  echo (http.request):  {sb.echo_url}")
    print(f"  admin (JSON POST):    {sb.url}_sandbox/<action>, actions: "
          f"{', '.join(sorted(admin.ACTIONS))}")
    print("credentials for a sqlbridge account (sandbox only, not secrets):")
    print(f"  SQLBRIDGE_AFILNET_URL={sb.afilnet_post_url} SQLBRIDGE_AFILNET_USER="
          f"{SANDBOX_AFILNET_USER} SQLBRIDGE_AFILNET_PASSWORD={SANDBOX_AFILNET_PASSWORD}")
    print(f"  SQLBRIDGE_ANNA_URL={sb.anna_url} SQLBRIDGE_ANNA_COMPANY_HASH="
          f"{SANDBOX_ANNA_COMPANY_HASH} SQLBRIDGE_ANNA_USER={SANDBOX_ANNA_USER} "
          f"SQLBRIDGE_ANNA_PASSWORD={SANDBOX_ANNA_PASSWORD}")
    print(f"  SQLBRIDGE_HTTP_ALLOWED_HOSTS={sb.url.rstrip('/')} SQLBRIDGE_HTTP_ALLOW_PRIVATE=true",
          flush=True)
    # SIGTERM (a supervisor, a benchmark tearing down) stops as cleanly as Ctrl-C.
    with contextlib.suppress(ValueError):  # signal() works only on the main thread
        signal.signal(signal.SIGTERM, lambda *_: sb.stopping.set())
    try:
        while not sb.stopping.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sb.stop()

"""A capture server for security tests: listens on one loopback address, records every
connection it accepts (before any byte is read) and every request, and answers with what it saw.

``GET /redirect?to=URL`` answers 302 to URL; ``/echo-secrets`` answers with every header value,
its parts, and their base64 encodings and decodings (a hostile server echoing credentials);
``/afilnet-echo`` does the same as an Afilnet ``{"status": "SUCCESS", "result": …}`` answer;
``/reason-echo`` answers 400 with those forms as the status line's reason phrase; ``/text-echo``
answers them as UTF-8 ``text/plain`` without a charset (read as ISO-8859-1 by requests).
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def echoes(headers: dict[str, str]) -> list[str]:
    """Every form a careless or hostile server might echo a header value in."""
    out: list[str] = []
    for value in headers.values():
        words = value.split()
        for piece in {value, *words}:
            out += [piece, base64.b64encode(piece.encode()).decode(),
                    base64.urlsafe_b64encode(piece.encode()).decode().rstrip("=")]
            try:
                decoded = base64.b64decode(piece, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
            out += [decoded, *decoded.split(":", 1)]
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        seen = {"method": self.command, "path": self.path, "headers": headers,
                "body": body.decode("utf-8", "replace")}
        with self.server.lock:
            self.server.requests.append(seen)
        parts = urlsplit(self.path)
        status, extra, answer, reason = 200, {}, seen, None
        content_type = "application/json"
        if parts.path == "/redirect":
            status, extra = 302, {"Location": parse_qs(parts.query)["to"][0]}
        elif parts.path == "/echo-secrets":
            answer = {"echo": echoes(headers), "text": " ".join(echoes(headers))}
        elif parts.path == "/reason-echo":  # the credentials in the status line's reason
            status, reason = 400, " ".join(echoes(headers))[:1000]
            answer = {"echo": echoes(headers)}
        elif parts.path == "/text-echo":  # UTF-8 text without a charset: ISO-8859-1 to requests
            answer, content_type = {"echo": echoes(headers)}, "text/plain"
        elif parts.path.startswith("/afilnet-echo"):
            answer = {"status": "SUCCESS", "result": {"echo": echoes(headers),
                                                      "form": seen["body"]}}
        data = json.dumps(answer, ensure_ascii=False).encode()
        self.send_response(status, reason)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lock = threading.Lock()
        self.connections: list[tuple[str, int]] = []
        self.requests: list[dict[str, Any]] = []
        self.tls = tls
        super().__init__((host, port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Counted at accept, before TLS or any byte: a connection is a connection.
        with self.lock:
            self.connections.append((str(addr[0]), int(addr[1])))
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr


class Capture:
    """``with Capture() as c:`` a server on 127.0.0.1 (or ``host``) at ``c.port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.server = _Server(host, port, tls)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.server.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def connections(self) -> list[tuple[str, int]]:
        with self.server.lock:
            return list(self.server.connections)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    def __enter__(self) -> Capture:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def make_test_pki(d: Path, ca_name: str, leaf_name: str, san: str) -> Path:
    """A throwaway CA (``ca.pem``) and a certificate for ``san`` signed by it (``leaf.pem``,
    ``leaf.key``) in ``d``, made with the openssl CLI; the test skips without openssl."""
    import pytest

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=120)

    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.pem", "-subj", f"/CN={ca_name}", "-days", "2")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out",
                "leaf.csr", "-subj", f"/CN={leaf_name}")
        (d / "san.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make test certificates: {exc}")
    return d

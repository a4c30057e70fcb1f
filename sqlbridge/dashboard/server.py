"""Serving the dashboard app with waitress (a small, well-kept pure-Python WSGI server): the
same code for ``sqlbridge dashboard`` and for the tests, which run it on an ephemeral port."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from sqlalchemy import Engine
from waitress import wasyncore
from waitress.server import create_server

from ..config import Settings
from ..errors import ConfigError
from . import rules
from .app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790
THREADS = 4


class Dashboard:
    """The app bound to ``host:port`` (port 0: any free one; see ``port`` after start)."""

    def __init__(self, settings: Settings, engine: Engine, *, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, password: str | None = None,
                 read_only: bool = False) -> None:
        problem = rules.bind_problem(host, password)
        if problem:
            raise ConfigError(problem)
        self.host, self.read_only = host, read_only
        self._settings, self._engine, self._password = settings, engine, password
        # The app needs the real port for its Host check, so bind first, then build the app.
        deferred = _Deferred()
        self.server: Any = create_server(deferred, host=host, port=port, threads=THREADS,
                                         clear_untrusted_proxy_headers=True)
        self.port = int(self.server.effective_port)
        hosts = None if password else rules.loopback_hosts(self.port)
        deferred.app = create_app(settings, engine, password=password,
                                                 read_only=read_only, allowed_hosts=hosts)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        self.server.run()

    def start(self) -> Dashboard:
        """Serve on a background thread (tests)."""
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every socket from inside the server's own loop (closing them from this thread
        would pull a file descriptor out from under its select()), then end its threads."""
        if self._thread is not None and self._thread.is_alive():
            # pull_trigger queues the close first and writes the wake-up byte second. A request
            # thread's own wake-up between the two lets the loop run the close, which closes
            # the trigger's pipe, so our write finds it shut (EBADF): the close already ran.
            with contextlib.suppress(OSError):
                self.server.trigger.pull_trigger(
                    lambda: wasyncore.close_all(self.server._map, ignore_all=True))
            self._thread.join(timeout=30)
        else:
            self.server.close()
        self.server.task_dispatcher.shutdown()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Deferred:
    """A WSGI callable whose app is set once the server knows its port."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

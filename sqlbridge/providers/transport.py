"""One pooled HTTP session, and the translation of what happened on the wire into errors.

The worker's retry decisions rest on one distinction made here: whether a failed request may
have reached the remote end. A refused connection, a failed DNS lookup or a connect timeout
provably never delivered anything (``delivered=False``: safe to send again); a read timeout or
a connection dropped after the request was written might have (``delivered=True``).
urllib3's own retries are off: the queue retries, with backoff and an audit row per attempt.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError

from .. import __version__
from ..backoff import parse_retry_after
from ..errors import ProtocolError, ProviderError, TransientError
from ..redact import scrub

RETRYABLE_STATUS = (429, 500, 502, 503, 504)
_SNIPPET = 200


class RateLimiter:
    """Token buckets keyed by (account, provider), shared by every thread of one worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[tuple[str, str], float] = {}

    def acquire(self, key: tuple[str, str], per_second: float | None) -> None:
        if not per_second:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + 1.0 / per_second
        if slot > now:
            time.sleep(slot - now)


class Transport:
    def __init__(self, pool_size: int = 8) -> None:
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"sqlbridge/{__version__}"
        self.limiter = RateLimiter()

    def close(self) -> None:
        self.session.close()

    def send(self, method: str, url: str, *, what: str, timeout: tuple[float, float],
             secrets: list[str], rate: tuple[tuple[str, str], float | None] | None = None,
             **kwargs: Any) -> requests.Response:
        """Send once; raise TransientError for network trouble and retryable statuses."""
        if rate is not None:
            self.limiter.acquire(*rate)
        try:
            resp = self.session.request(method, url, timeout=timeout, allow_redirects=False,
                                        **kwargs)
        except requests.ConnectTimeout:
            raise TransientError(f"{what}: could not connect within {timeout[0]:g}s",
                                 code="CONNECT_TIMEOUT", delivered=False) from None
        except requests.ReadTimeout:
            raise TransientError(f"{what}: no answer within {timeout[1]:g}s",
                                 code="READ_TIMEOUT", delivered=True) from None
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            never_left = isinstance(reason, NewConnectionError | NameResolutionError)
            text = "could not connect" if never_left else "connection lost before an answer"
            raise TransientError(f"{what}: {text} ({type(reason or exc).__name__})",
                                 code="CONNECTION_FAILED" if never_left else "CONNECTION_LOST",
                                 delivered=not never_left) from None
        except requests.RequestException as exc:
            raise TransientError(f"{what}: {type(exc).__name__}", code="CONNECTION_LOST",
                                 delivered=True) from None
        if resp.status_code in RETRYABLE_STATUS:
            raise TransientError(
                f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                response=scrub(snippet(resp), secrets))
        return resp


def snippet(resp: requests.Response) -> str:
    text = resp.text or ""
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def json_object(resp: requests.Response, what: str, secrets: list[str]) -> dict[str, Any]:
    """The body as a JSON object, or ProtocolError saying what came instead."""
    if not resp.content:
        raise ProtocolError(f"{what}: empty answer (HTTP {resp.status_code})",
                            http_status=resp.status_code)
    try:
        body = resp.json()
    except ValueError:
        kind = "an HTML page" if "html" in resp.headers.get("Content-Type", "").lower() or \
            resp.text.lstrip().startswith("<") else "not JSON"
        raise ProtocolError(f"{what}: the answer is {kind} (HTTP {resp.status_code}): "
                            f"{scrub(snippet(resp), secrets)!r}",
                            http_status=resp.status_code) from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(body).__name__}",
                            http_status=resp.status_code)
    return body


def refuse_client_error(resp: requests.Response, what: str, secrets: list[str]) -> None:
    """Other 4xx answers are permanent: sending the same request again gets the same no."""
    if 400 <= resp.status_code < 500:
        raise ProviderError(f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                            code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                            response=scrub(snippet(resp), secrets))

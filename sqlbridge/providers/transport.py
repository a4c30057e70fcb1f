"""Sending one request, and turning what happened on the wire into sqlbridge errors.

The worker's retry decisions rest on one distinction made here: whether a failed request may
have reached the remote end. A refused connection, a failed DNS lookup, a failed TLS handshake
or a connect timeout provably delivered nothing (``delivered=False``: safe to send again); a
read timeout or a connection dropped after the request was written might have
(``delivered=True``: a send becomes ``uncertain``).

| what happened                                   | raised                                     |
| ----------------------------------------------- | ------------------------------------------ |
| connection refused, DNS, TLS, connect timeout   | TransientError(delivered=False)            |
| read timeout, connection lost mid-call          | TransientError(delivered=True)             |
| HTTP 429, 500, 502, 503, 504                    | TransientError(http_status, retry_after)   |
| other HTTP 4xx (``refuse_client_error``)        | ProviderError(HTTP_4xx), permanent         |
| body empty, not JSON, not an object            | ProtocolError (retryable)                  |
| a URL or header requests cannot send           | ProviderError(INVALID_REQUEST), permanent  |

Every message is short (a body excerpt of at most 200 characters) and scrubbed.
"""

from __future__ import annotations

from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from ..backoff import parse_retry_after
from ..errors import ProtocolError, ProviderError, TransientError
from ..redact import scrub
from .ratelimit import RateLimiter
from .session import make_session

RETRYABLE_STATUS = (429, 500, 502, 503, 504)
SNIPPET = 200
_NOT_SENDABLE = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                 requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
                 UnicodeEncodeError)


class Transport:
    """The shared session and rate limiter; thread-safe."""

    def __init__(self, pool_size: int = 8) -> None:
        self.session = make_session(pool_size)
        self.limiter = RateLimiter()

    def close(self) -> None:
        self.session.close()

    def send(self, method: str, url: str, *, what: str, timeout: tuple[float, float],
             secrets: list[str], rate: tuple[tuple[str, str], float | None] | None = None,
             check_status: bool = True, **kwargs: Any) -> requests.Response:
        """Send once. Network trouble raises TransientError; so do retryable statuses unless
        ``check_status`` is off (http.request shapes those answers itself)."""
        if rate is not None:
            self.limiter.acquire(*rate)
        try:
            # Redirects are not followed: a 30x to another host would step around the
            # http.request allowlist, and a redirected POST silently becomes a GET.
            resp = self.session.request(method, url, timeout=timeout, allow_redirects=False,
                                        **kwargs)
        except requests.ConnectTimeout:
            raise TransientError(f"{what}: could not connect within {timeout[0]:g}s",
                                 code="CONNECT_TIMEOUT", delivered=False) from None
        except requests.ReadTimeout:
            raise TransientError(f"{what}: no answer within {timeout[1]:g}s",
                                 code="READ_TIMEOUT", delivered=True) from None
        except requests.exceptions.SSLError:
            # The handshake comes before the request: nothing was sent.
            raise TransientError(f"{what}: TLS handshake failed", code="TLS_ERROR",
                                 delivered=False) from None
        except requests.ConnectionError as exc:
            never_left = _never_left(exc)
            text = "could not connect" if never_left else "connection lost before an answer"
            raise TransientError(f"{what}: {text} ({_reason_name(exc)})",
                                 code="CONNECTION_FAILED" if never_left else "CONNECTION_LOST",
                                 delivered=not never_left) from None
        except _NOT_SENDABLE as exc:
            raise ProviderError(scrub(f"{what}: the request cannot be sent: {exc}"[:300],
                                      secrets), code="INVALID_REQUEST") from None
        except requests.RequestException as exc:
            raise TransientError(f"{what}: {type(exc).__name__}", code="CONNECTION_LOST",
                                 delivered=True) from None
        if check_status and resp.status_code in RETRYABLE_STATUS:
            raise TransientError(
                f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                retry_after=retry_after(resp), response=scrub(snippet(resp), secrets))
        return resp


def _never_left(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made (NameResolutionError is a NewConnectionError)."""
    seen: set[int] = set()
    cause: Any = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, NewConnectionError | ConnectionRefusedError):
            return True
        cause = getattr(cause, "reason", None) or (cause.args[0] if getattr(cause, "args", None)
                                                   and isinstance(cause.args[0], BaseException)
                                                   else None)
    return False


def _reason_name(exc: requests.ConnectionError) -> str:
    reason = exc.args[0] if exc.args else exc
    return type(getattr(reason, "reason", None) or reason).__name__


def retry_after(resp: requests.Response) -> float | None:
    """Seconds from Retry-After (delta-seconds or an HTTP-date), None when absent or unreadable."""
    return parse_retry_after(resp.headers.get("Retry-After"))


def snippet(resp: requests.Response) -> str:
    text = resp.text or ""
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"


def json_object(resp: requests.Response, what: str, secrets: list[str]) -> dict[str, Any]:
    """The body as a JSON object, or ProtocolError saying what came instead."""
    if not resp.content or not resp.content.strip():
        raise ProtocolError(f"{what}: empty answer (HTTP {resp.status_code})",
                            http_status=resp.status_code)
    try:
        body = resp.json()
    except ValueError:
        html = "html" in resp.headers.get("Content-Type", "").lower() or \
            resp.text.lstrip().startswith("<")
        kind = "an HTML page, not JSON" if html else "not valid JSON"
        raise ProtocolError(f"{what}: the answer is {kind} (HTTP {resp.status_code}): "
                            f"{scrub(snippet(resp), secrets)!r}",
                            http_status=resp.status_code) from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {_json_kind(body)}",
                            http_status=resp.status_code)
    return body


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def refuse_client_error(resp: requests.Response, what: str, secrets: list[str]) -> None:
    """Other 4xx answers are permanent: sending the same request again gets the same no."""
    if 400 <= resp.status_code < 500:
        raise ProviderError(f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                            code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                            response=scrub(snippet(resp), secrets))

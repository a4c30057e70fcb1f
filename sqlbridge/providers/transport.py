"""Sending one request, and turning what happened on the wire into sqlbridge errors.

What each failure says about delivery is decided by ``sqlbridge.delivery`` (one rule for the
transport, the worker and lease recovery); this module only reports the facts: whether the
request may have left (``delivered``) and the HTTP status, if any.

| what happened                                      | raised                                      |
| -------------------------------------------------- | ------------------------------------------- |
| connection refused, DNS, TLS, connect timeout      | TransientError(delivered=False)             |
| read timeout, connection lost mid-call             | TransientError(delivered=True)              |
| the call's deadline passed (dripping headers/body) | TransientError(DEADLINE_EXCEEDED, delivered)|
| HTTP 429 or any 5xx                                | TransientError(http_status, retry_after)    |
| other HTTP 4xx (``refuse_client_error``)           | ProviderError(HTTP_4xx), permanent          |
| body larger than ``max_response_bytes``            | ProtocolError(RESPONSE_TOO_LARGE)           |
| body empty, not JSON, not an object, too deep      | ProtocolError (PROTOCOL_ERROR)              |
| a URL or header requests cannot send               | ProviderError(INVALID_REQUEST), permanent   |
| answer headers urllib3 refuses (two Content-Length)| ProtocolError (PROTOCOL_ERROR)              |

Bodies are read streamed, at most ``max_bytes`` of them (default DEFAULT_MAX_RESPONSE_BYTES),
and never past the call's deadline (default connect + 2 x read timeout; ``watchdog`` cuts the socket
when it passes, also while waiting for the status line and headers): whatever a server sends,
a call holds a bounded amount of memory for a bounded time. Every message is short (a body
excerpt of at most 200 characters) and scrubbed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from urllib3.exceptions import NewConnectionError

from .. import textsafe
from ..backoff import parse_retry_after
from ..errors import ProtocolError, ProviderError, TransientError
from ..redact import excerpt, spellings
from . import watchdog
from .environment import Environment
from .ratelimit import RateLimiter
from .session import make_session

RETRYABLE_STATUS = (429, 500, 502, 503, 504)
SNIPPET = 200
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# An error answer (429/5xx) is read only for its excerpt.
ERROR_BODY_BYTES = 64 * 1024
CHUNK = 64 * 1024
T = TypeVar("T")
_NOT_SENDABLE = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                 requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
                 UnicodeEncodeError)


class Transport:
    """The shared session and rate limiter; thread-safe."""

    def __init__(self, pool_size: int = 8) -> None:
        self.session = make_session(pool_size)
        self.limiter = RateLimiter()
        # HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE: read once per URL (session.trust_env off).
        self.environment = Environment()

    def close(self) -> None:
        self.session.close()

    def send(self, method: str, url: str, *, what: str, timeout: tuple[float, float],
             secrets: list[str], rate: tuple[tuple[str, str], float | None] | None = None,
             check_status: bool = True, max_bytes: int | None = None,
             deadline: float | None = None, **kwargs: Any) -> requests.Response:
        """Send once and read the answer (at most ``max_bytes``, within ``deadline`` seconds
        of the start). Network trouble raises TransientError; so do 429 and 5xx answers unless
        ``check_status`` is off (http.request shapes those answers itself)."""
        if rate is not None:
            self.limiter.acquire(*rate)
        limit = max_bytes or DEFAULT_MAX_RESPONSE_BYTES
        budget = deadline or (timeout[0] + 2 * timeout[1])
        ends = time.monotonic() + budget
        # The watchdog cuts the socket at the deadline, wherever the exchange is blocked (the
        # status line and headers have no clock of their own); the checks below then name it.
        with watchdog.deadline(budget) as watch:
            try:
                resp = self._request(method, url, what, timeout, secrets, **kwargs)
            except TransientError as exc:
                if watch.expired:
                    raise _past_deadline(what, budget, None, None) from exc
                raise
            failing = check_status and (resp.status_code == 429 or resp.status_code >= 500)
            try:
                _read_body(resp, what, ERROR_BODY_BYTES if failing else limit, ends, budget,
                           truncate=failing)
            except TransientError:
                if watch.expired:
                    raise _past_deadline(what, budget, resp.status_code, None) from None
                raise
            finally:
                resp.close()
            if watch.expired:
                # Cut between two reads: what arrived may look complete, but is not.
                raise _past_deadline(what, budget, resp.status_code, None)
        if failing:
            raise TransientError(
                f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                retry_after=retry_after(resp), response=snippet(resp, secrets))
        return resp

    def _request(self, method: str, url: str, what: str, timeout: tuple[float, float],
                 secrets: list[str], **kwargs: Any) -> requests.Response:
        """Send and read the status line and headers; the body stays on the socket."""
        try:
            # Redirects are not followed: a 30x to another host would step around the
            # http.request allowlist, and a redirected POST silently becomes a GET.
            return self.session.request(method, url, timeout=timeout, allow_redirects=False,
                                        stream=True, **self.environment.apply(url, kwargs))
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
        except requests.exceptions.InvalidHeader as exc:
            if not _answer_side(exc):
                raise ProviderError(excerpt(f"{what}: the request cannot be sent: {exc}",
                                            secrets, 300, ""), code="INVALID_REQUEST") from None
            # urllib3 refused the *answer's* headers (two Content-Length values that differ):
            # the request had left, so it may have been carried out. Not "cannot be sent".
            raise ProtocolError(excerpt(f"{what}: the answer's headers cannot be read: {exc}",
                                        secrets, 300, "")) from None
        except _NOT_SENDABLE as exc:
            raise ProviderError(excerpt(f"{what}: the request cannot be sent: {exc}", secrets,
                                        300, ""), code="INVALID_REQUEST") from None
        except requests.RequestException as exc:
            raise TransientError(f"{what}: {type(exc).__name__}", code="CONNECTION_LOST",
                                 delivered=True) from None


def _answer_side(exc: BaseException) -> bool:
    """True when requests' InvalidHeader wraps urllib3's, which only the answer raises."""
    return any(isinstance(arg, urllib3.exceptions.InvalidHeader) for arg in exc.args)


def _past_deadline(what: str, budget: float, status: int | None,
                   size: int | None) -> TransientError:
    got = f"HTTP {status}" if status is not None else "no status line"
    if size is not None:
        got += f", {size} bytes so far"
    return TransientError(f"{what}: the answer did not arrive within the call's deadline of "
                          f"{budget:g}s ({got})", code="DEADLINE_EXCEEDED", delivered=True)


def _read_body(resp: requests.Response, what: str, limit: int, ends: float, budget: float,
               *, truncate: bool = False) -> None:
    """Read the streamed body into ``resp`` (so ``.content``/``.json()`` work as usual), one
    socket read at a time so that the deadline is checked between reads: a server dripping a
    byte a second never trips a read timeout, but it trips this."""
    status = resp.status_code
    declared = resp.headers.get("Content-Length", "")
    if not truncate and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"{what}: the answer is {int(declared)} bytes, more than the "
                            f"limit of {limit} (max_response_bytes)", code="RESPONSE_TOO_LARGE",
                            http_status=status)
    chunks: list[bytes] = []
    size = 0
    raw = resp.raw
    while True:
        if time.monotonic() > ends:
            raise _past_deadline(what, budget, status, size)
        try:
            # Decoded (requests asks for gzip/deflate): the limit holds for what the body
            # decodes to, and what is scrubbed and stored is text, not compressed bytes
            # (urllib3 bounds each decoded read to about CHUNK, so a bomb cannot burst).
            chunk = raw.read1(CHUNK, decode_content=True)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise TransientError(f"{what}: the answer stopped arriving (HTTP {status})",
                                 code="READ_TIMEOUT", delivered=True) from None
        except urllib3.exceptions.DecodeError:
            raise ProtocolError(f"{what}: the answer's Content-Encoding "
                                f"{resp.headers.get('Content-Encoding', '')[:40]!r} does not "
                                f"decode (HTTP {status})", http_status=status) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise TransientError(f"{what}: connection lost while reading the answer "
                                 f"(HTTP {status}, {type(exc).__name__})",
                                 code="CONNECTION_LOST", delivered=True) from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            if truncate:
                # The rest stays unread: resp.close() must close this connection, not hand
                # it back to the pool (so _content_consumed stays False).
                chunks.append(chunk[: limit - (size - len(chunk))])
                resp._content = b"".join(chunks)  # noqa: SLF001
                return
            raise ProtocolError(f"{what}: the answer is larger than the limit of {limit} "
                                "bytes (max_response_bytes)", code="RESPONSE_TOO_LARGE",
                                http_status=status)
        chunks.append(chunk)
    resp._content = b"".join(chunks)  # noqa: SLF001 - requests' own cache of the body
    # Read to the end: resp.close() hands the connection back to the pool (keep-alive).
    resp._content_consumed = True  # noqa: SLF001


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


def snippet(resp: requests.Response, secrets: list[str]) -> str:
    """The start of the body, masked before it is cut (``redact.excerpt``): cutting first left
    the start of a secret that straddles the cut."""
    # Decoded leniently and cut in bytes first: an excerpt of a 4 MB body costs nothing. The
    # byte cut leaves room for the whole of any spelling of a secret that starts in the excerpt.
    room = 4 * max((len(s) for s in spellings(secrets)), default=0)
    text = textsafe.text((resp.content or b"")[: SNIPPET * 4 + room].decode("utf-8", "replace"))
    return excerpt(text, secrets, SNIPPET)


def parse_json(resp: requests.Response) -> Any:
    """The body as JSON; ValueError when it is not (invalid JSON or UTF-8, nested more than
    textsafe.MAX_JSON_DEPTH levels)."""
    try:
        body = json.loads(resp.content)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError:
        # Not UTF-8 JSON: the declared charset may still make it JSON (requests' own rule).
        try:
            body = json.loads(resp.text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
    if textsafe.depth(body) > textsafe.MAX_JSON_DEPTH:
        raise ValueError("nested too deeply")
    return body


def json_object(resp: requests.Response, what: str, secrets: list[str]) -> dict[str, Any]:
    """The body as a JSON object, or ProtocolError saying what came instead."""
    if not resp.content or not resp.content.strip():
        raise ProtocolError(f"{what}: empty answer (HTTP {resp.status_code})",
                            http_status=resp.status_code)
    try:
        body = parse_json(resp)
    except ValueError as exc:
        if "nested too deeply" in str(exc):
            raise ProtocolError(f"{what}: the answer is JSON nested more than "
                                f"{textsafe.MAX_JSON_DEPTH} levels deep (HTTP "
                                f"{resp.status_code})", http_status=resp.status_code) from None
        html = "html" in resp.headers.get("Content-Type", "").lower() or \
            resp.content.lstrip().startswith(b"<")
        kind = "an HTML page, not JSON" if html else "not valid JSON"
        raise ProtocolError(f"{what}: the answer is {kind} (HTTP {resp.status_code}): "
                            f"{snippet(resp, secrets)!r}",
                            http_status=resp.status_code) from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {_json_kind(body)}",
                            http_status=resp.status_code)
    return body


def answered(status: int, what: str, read: Callable[[], T]) -> T:
    """Run ``read`` (a client's parsing of an answer that arrived with ``status``).

    Whatever goes wrong while reading an answer is a ProtocolError carrying that status, never
    a bare exception: a parser tripping over an unexpected shape (a number where a list
    belongs) must not read as a worker bug, and the delivery rule needs the status to know that
    a send reached the remote (a garbled 2xx is ``uncertain``, never sent again).
    """
    try:
        return read()
    except ProtocolError as exc:
        if exc.http_status is None:
            exc.http_status = status
        raise
    except ProviderError:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
            RecursionError) as exc:
        raise ProtocolError(f"{what}: the answer (HTTP {status}) has an unexpected shape "
                            f"({type(exc).__name__})", http_status=status) from None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def refuse_client_error(resp: requests.Response, what: str, secrets: list[str]) -> None:
    """Other 4xx answers are permanent: sending the same request again gets the same no."""
    if 400 <= resp.status_code < 500:
        raise ProviderError(f"{what}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                            code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                            response=snippet(resp, secrets))

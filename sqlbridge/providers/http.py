"""``http.request``: any HTTP call to an allowlisted host, shaped like SQL Server's
``sp_invoke_external_rest_endpoint`` so scripts moving off ``sp_OACreate`` for other APIs get a
familiar answer::

    {"response": {"status": {"http": {"code": 200, "description": "OK"}}, "headers": {…}},
     "result": <the body as JSON, or as text when it is not JSON>}

2xx succeeds; 429 and 5xx are retried (``Retry-After`` honoured); any other status (4xx, and a
30x, since redirects are not followed) fails permanently with ``HTTP_<status>`` and the same
shaped answer as its response. The host allowlist and the secret headers live in the account,
never in the request row.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from ..config import Account
from ..errors import ProviderError, TransientError
from ..redact import scrub
from ..registry import Operation
from .base import CallResult
from .transport import RETRYABLE_STATUS, Transport, retry_after

# Hop-by-hop headers say nothing about the answer; cookies are credentials.
_DROP_HEADERS = {"set-cookie", "connection", "keep-alive", "transfer-encoding"}
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


def shaped(resp: requests.Response) -> dict[str, Any]:
    """The answer as sp_invoke_external_rest_endpoint's @response would hold it."""
    try:
        result: Any = resp.json() if resp.content else None
    except ValueError:
        result = resp.text
    return {"response": {"status": {"http": {"code": resp.status_code,
                                             "description": resp.reason or ""}},
                         "headers": {k: v for k, v in resp.headers.items()
                                     if k.lower() not in _DROP_HEADERS}},
            "result": result}


def host_allowed(url: str, account: Account) -> str:
    """The URL's host, lower case, if the account allows it; else HOST_NOT_ALLOWED."""
    host = (urlsplit(url).hostname or "").lower()
    allowed = account.http.allowed_hosts
    if not host or host not in allowed:
        raise ProviderError(
            f"http.request: host '{host}' is not allowed for account '{account.name}'; add it "
            f"to accounts.{account.name}.http.allowed_hosts (allowed now: "
            f"{', '.join(allowed) or 'none'})", code="HOST_NOT_ALLOWED")
    return host


def body_and_type(payload: Any) -> tuple[bytes | None, str | None]:
    """Text goes as written (JSON text is labelled JSON, as @payload is); any other JSON value
    is serialised."""
    if payload is None:
        return None, None
    if isinstance(payload, str):
        try:
            json.loads(payload)
            kind = JSON_TYPE
        except ValueError:
            kind = TEXT_TYPE
        return payload.encode("utf-8"), kind
    return json.dumps(payload, ensure_ascii=False).encode("utf-8"), JSON_TYPE


class HttpClient:
    name = "http"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        s = account.http
        url = str(params["url"])
        host = host_allowed(url, account)
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(
            {str(k): str(v) for k, v in (params.get("headers") or {}).items()})
        data, content_type = body_and_type(params.get("payload"))
        if content_type and "Content-Type" not in headers:
            headers["Content-Type"] = content_type
        # The account's headers win over the caller's: a row must not replace a credential.
        headers.update({k: v.reveal() for k, v in s.headers.items()})
        secrets = account.secrets()
        timeout = float(params.get("timeout") or s.read_timeout)
        method = str(params.get("method") or "POST").upper()
        what = f"http.request {method} {host}"
        resp = self.transport.send(method, url, what=what, timeout=(s.connect_timeout, timeout),
                                   secrets=secrets, rate=((account.name, "http"), s.rate_limit),
                                   check_status=False, data=data, headers=headers)
        answer = scrub(shaped(resp), secrets)
        status = resp.status_code
        if 200 <= status < 300:
            return CallResult(status, answer, [])
        sentence = f"{what}: HTTP {status} {resp.reason or ''}".rstrip()
        if status in RETRYABLE_STATUS or status >= 500:
            raise TransientError(sentence, code=f"HTTP_{status}", http_status=status,
                                 retry_after=retry_after(resp), response=answer)
        if 300 <= status < 400:
            sentence += " (redirects are not followed; call the final URL)"
        raise ProviderError(sentence, code=f"HTTP_{status}", http_status=status,
                            response=answer)

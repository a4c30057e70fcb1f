"""``http.request``: any HTTP call to an allowlisted host, shaped like SQL Server's
``sp_invoke_external_rest_endpoint`` so scripts moving off ``sp_OACreate`` for other APIs have a
familiar answer: ``{"response": {"status": {"http": {"code", "description"}}, "headers"},
"result": …}``. The host allowlist and the secret headers live in the account, never in the
request row.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests

from ..config import Account
from ..errors import ProviderError
from ..redact import scrub
from ..registry import Operation
from .base import CallResult
from .transport import Transport

# Hop-by-hop and credential headers are not worth storing with a result.
_DROP_HEADERS = {"set-cookie", "connection", "keep-alive", "transfer-encoding"}


def shaped(resp: requests.Response) -> dict[str, Any]:
    try:
        result: Any = resp.json() if resp.content else None
    except ValueError:
        result = resp.text
    return {"response": {"status": {"http": {"code": resp.status_code,
                                             "description": resp.reason or ""}},
                         "headers": {k: v for k, v in resp.headers.items()
                                     if k.lower() not in _DROP_HEADERS}},
            "result": result}


class HttpClient:
    name = "http"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        s = account.http
        url = params["url"]
        host = (urlsplit(url).hostname or "").lower()
        if host not in s.allowed_hosts:
            raise ProviderError(
                f"http.request: host '{host}' is not allowed for account '{account.name}'; "
                f"add it to accounts.{account.name}.http.allowed_hosts "
                f"(allowed now: {', '.join(s.allowed_hosts) or 'none'})",
                code="HOST_NOT_ALLOWED")
        headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
        headers.update({k: v.reveal() for k, v in s.headers.items()})
        payload = params.get("payload")
        data: Any = None
        if payload is not None:
            if isinstance(payload, str):
                data = payload.encode("utf-8")
            else:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                headers.setdefault("Content-Type", "application/json; charset=utf-8")
        secrets = account.secrets()
        timeout = float(params.get("timeout") or s.read_timeout)
        method = params.get("method", "POST")
        resp = self.transport.send(method, url, what=f"http.request {method} {host}",
                                   timeout=(s.connect_timeout, timeout), secrets=secrets,
                                   rate=((account.name, "http"), s.rate_limit), data=data,
                                   headers=headers)
        answer = scrub(shaped(resp), secrets)
        if resp.status_code >= 400:
            raise ProviderError(f"http.request: HTTP {resp.status_code} {resp.reason or ''} "
                                f"from {host}".replace("  ", " "),
                                code=f"HTTP_{resp.status_code}", http_status=resp.status_code,
                                response=answer)
        return CallResult(resp.status_code, answer, [])

"""``http.request``: any HTTP call to an allowlisted host, shaped like SQL Server's
``sp_invoke_external_rest_endpoint`` so scripts moving off ``sp_OACreate`` for other APIs get a
familiar answer::

    {"response": {"status": {"http": {"code": 200, "description": "OK"}}, "headers": {…}},
     "result": <the body as JSON, or as text when it is not JSON>}

2xx succeeds; 429 and 5xx are retried (``Retry-After`` honoured); any other status (4xx, and a
30x, since redirects are not followed) fails permanently with ``HTTP_<status>`` and the same
shaped answer as its response. The host allowlist and the secret headers live in the account,
never in the request row.

Before anything is sent (see README "Security of http.request"): the URL is read once the way
the HTTP client reads it and refused (INCORRECT_URL) when it is ambiguous
(``sqlbridge.allowlist``); its scheme, host and port must match an entry of the account's
allowlist; every address the host resolves to must be public unless the entry allows private
ones; and the connection goes to the checked address (``netguard``). Each refusal is
permanent (INCORRECT_URL for the URL, HOST_NOT_ALLOWED for the rest), with nothing sent; a
host outside the allowlist is not even resolved.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.structures import CaseInsensitiveDict

from ..allowlist import Entry, Target, UrlRefused, find_entry, parse_target
from ..config import Account
from ..errors import ProviderError, TransientError
from ..redact import excerpt, scrub
from ..registry import Operation
from .base import CallResult
from .netguard import Pin, checked_address, pinned
from .session import request_options
from .transport import RETRYABLE_STATUS, Transport, parse_json, retry_after

# Hop-by-hop headers say nothing about the answer; cookies are credentials.
_DROP_HEADERS = {"set-cookie", "connection", "keep-alive", "transfer-encoding"}
# Caller headers that would change how the message is framed or how the connection is used:
# with requests' own Content-Length, a Transfer-Encoding makes one row two requests to a server
# that honours it (the second to any virtual host, its answer left on the pooled connection for
# the next row); a proxy drops whatever Connection names, Host included. The client sets these.
_REFUSED_HEADERS = ("connection", "content-length", "keep-alive", "proxy-authorization",
                    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


def shaped(resp: requests.Response) -> dict[str, Any]:
    """The answer as sp_invoke_external_rest_endpoint's @response would hold it."""
    try:
        result: Any = parse_json(resp) if resp.content else None
    except ValueError:
        result = resp.text
    return {"response": {"status": {"http": {"code": resp.status_code,
                                             "description": resp.reason or ""}},
                         "headers": {k: v for k, v in resp.headers.items()
                                     if k.lower() not in _DROP_HEADERS}},
            "result": result}


def target_of(url: str, secrets: list[str] | None = None) -> Target:
    """Where ``url`` leads, or INCORRECT_URL saying why it cannot be read unambiguously."""
    try:
        return parse_target(url)
    except UrlRefused as exc:
        # Masked before it is cut: a secret straddling the cut would leave its start behind.
        shown = excerpt(url, secrets or [], 100, "")
        shown = shown if len(shown) < 100 else shown[:97] + "..."
        raise ProviderError(f"http.request: the URL {shown!r} is refused: {exc}",
                            code="INCORRECT_URL") from None


def allowlisted(url: str, account: Account) -> tuple[Target, Entry]:
    """The target of ``url`` and the account's allowlist entry that allows it; else
    INCORRECT_URL or HOST_NOT_ALLOWED. No I/O: the CLI asks this at enqueue too."""
    target = target_of(url, account.secrets())
    s = account.http
    entry = find_entry(target, s.allowed_hosts)
    if entry is None:
        setting = f"accounts.{account.name}.http.allowed_hosts"
        allowed = ", ".join(str(e) for e in s.allowed_hosts) or "none"
        raise ProviderError(
            f"http.request: host '{target.host}' ({target.origin}) is not allowed for account "
            f"'{account.name}'; add '{target.origin}' to {setting} (allowed now: {allowed})",
            code="HOST_NOT_ALLOWED")
    return target, entry


def host_allowed(url: str, account: Account) -> Pin:
    """Where to connect for ``url``: its target and the checked address, if the account's
    allowlist allows both; else INCORRECT_URL or HOST_NOT_ALLOWED, before anything is sent."""
    target, entry = allowlisted(url, account)
    s = account.http
    setting = f"accounts.{account.name}.http.allowed_hosts"
    if s.proxy and target.ip is None:
        # The proxy resolves the name and connects; the allowlist has been applied.
        return Pin(target, None)
    address = checked_address(target, allow_private=entry.allow_private or s.allow_private,
                              setting=setting, timeout=s.connect_timeout)
    return Pin(target, address)


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


def with_credential(url: str, headers: CaseInsensitiveDict[str], name: Any,
                    account: Account) -> str:
    """Apply the account credential a request names (its ``credential`` parameter): its headers
    replace the caller's, its query-string values replace same-named ones in the URL. Returns
    the URL to call; the row keeps the URL without the secret. An unknown name fails the request
    (UNKNOWN_CREDENTIAL), never sends it without the credential it asked for."""
    if name is None or name == "":
        return url
    cred = account.http.credentials.get(str(name))
    if cred is None:
        known = ", ".join(sorted(account.http.credentials)) or "none"
        raise ProviderError(
            f"http.request: credential '{str(name)[:100]}' is not configured for account "
            f"'{account.name}'; add [accounts.{account.name}.http.credentials.NAME] with "
            f"headers or query (configured now: {known})", code="UNKNOWN_CREDENTIAL")
    headers.update({k: v.reveal() for k, v in cred.headers.items()})
    if not cred.query:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in cred.query]
    query = urlencode(kept + [(k, v.reveal()) for k, v in cred.query.items()])
    return urlunsplit(parts._replace(query=query))


class HttpClient:
    name = "http"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        s = account.http
        pin = host_allowed(str(params["url"]), account)
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(
            {str(k): str(v) for k, v in (params.get("headers") or {}).items()})
        odd = sorted(k for k in headers if not _TOKEN.fullmatch(k))
        if odd:
            raise ProviderError(f"http.request: the header name {odd[0]!r} is not a valid HTTP "
                                "field name (letters, digits and !#$%&'*+-.^_`|~ only; servers "
                                "read anything else differently); not sent",
                                code="INVALID_REQUEST")
        refused = sorted(k for k in headers if k.lower() in _REFUSED_HEADERS)
        if refused:
            raise ProviderError(f"http.request: the header {refused[0]!r} cannot be set by a "
                                f"request (the HTTP client sets {', '.join(_REFUSED_HEADERS)}); "
                                "not sent", code="INVALID_REQUEST")
        # CGI/WSGI servers read "X_Api_Key" as "X-Api-Key": a caller's header that a server
        # may take for one of the account's would let a row replace its credential.
        own = {k.lower().replace("_", "-") for k in s.headers}
        clash = sorted(k for k in headers if k.lower().replace("_", "-") in own
                       and k.lower() not in {a.lower() for a in s.headers})
        if clash:
            raise ProviderError(f"http.request: the header {clash[0]!r} may be read by the "
                                "server as one the account sets; not sent",
                                code="INVALID_REQUEST")
        data, content_type = body_and_type(params.get("payload"))
        if content_type and "Content-Type" not in headers:
            headers["Content-Type"] = content_type
        # The account's headers win over the caller's: a row must not replace a credential.
        headers.update({k: v.reveal() for k, v in s.headers.items()})
        url = with_credential(pin.target.url, headers, params.get("credential"), account)
        secrets = account.secrets()
        timeout = float(params.get("timeout") or s.read_timeout)
        method = str(params.get("method") or "POST").upper()
        what = f"http.request {method} {pin.target.host}"
        with pinned(pin):
            resp = self.transport.send(
                method, url, what=what, timeout=(s.connect_timeout, timeout),
                secrets=secrets, rate=((account.name, "http"), s.rate_limit), check_status=False,
                data=data, headers=headers, max_bytes=s.max_response_bytes,
                deadline=s.total_timeout, **request_options(s, environment_proxies=False))
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

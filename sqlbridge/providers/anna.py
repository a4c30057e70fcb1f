"""AnnA Corporate User V3 client: one cached token per account, JSON POSTs, scrubbed answers.

The token comes from ``REST/Credentials/GetToken`` and is reused until shortly before it
expires, fetched by one thread at a time per account while the others wait for it. The vendor
leaves ``ExpiresIn`` unspecified, so seconds (number or text), a Unix time, an ISO date-time and
``YYYYMMDDhhmmss`` are all read, and anything else falls back to the account's
``token_lifetime``. A 401 drops the token and repeats the call once with a fresh one (a token
revoked early, or clocks that disagree); a 401 with a token fetched a moment ago is permanent.

A refusal is ``{"success": false, "message": "…"}`` in Portuguese. Its code is derived from
the message so callers can branch on it; all are permanent (the same request gets the same
answer) and the message is kept, scrubbed (the vendor echoes the company hash, a secret here):

| code                      | when the message says                         |
| ------------------------- | --------------------------------------------- |
| USER_INACTIVE             | "… está inativo"                              |
| USER_NOT_FOUND            | "Usuário … não encontrado"                    |
| COMPANY_NOT_FOUND         | "Empresa não encontrada" (wrong company hash) |
| ANNA_INVALID_PARAM        | "… inválido/inválida …"                       |
| ANNA_MISSING_PARAM        | "Informe …"                                   |
| ANNA_ERROR                | anything else                                 |
| ANNA_AUTH_FAILED          | GetToken refused the account's credentials    |
| ANNA_UNAUTHORIZED         | HTTP 401 even with a fresh token              |
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any

import requests

from .. import delivery
from ..config import Account
from ..errors import ConfigError, ProtocolError, ProviderError, TransientError
from ..redact import excerpt, scrub
from ..registry import Operation
from .base import CallResult
from .session import request_options
from .transport import Transport, answered, json_object, refuse_client_error

TOKEN_PATH = "REST/Credentials/GetToken"
# Renew this long before the stated expiry: a token that dies in flight costs a 401 round trip.
EARLY_RENEWAL = 30.0
IDENTITY_KEYS = ("userId", "userDocType", "userDocValue")
FILTER_KEYS = ("departmentAlias", "channelAlias", "dataIni", "dataFim", "status", "pendentes")
_EPOCH_MIN = 1_000_000_000  # a number this large is a Unix time, not a lifetime


def token_lifetime(expires_in: Any, fallback: float) -> float:
    """Seconds a token lives, from whatever GetToken said (``fallback`` when unreadable)."""
    now = time.time()
    if isinstance(expires_in, bool):
        return fallback
    number: float | None = None
    if isinstance(expires_in, int | float):
        number = float(expires_in)
    text = str(expires_in or "").strip()
    if number is None and re.fullmatch(r"\d+(\.\d+)?", text) and len(text) != 14:
        number = float(text)
    if number is not None:
        left = number - now if number >= _EPOCH_MIN else number
        return left if left > 0 else fallback
    for fmt in ("%Y%m%d%H%M%S", None):
        try:
            when = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
        except ValueError:
            continue
        if when.tzinfo is None:  # the vendor's other timestamps are UTC
            when = when.replace(tzinfo=UTC)
        left = when.timestamp() - now
        return left if left > 0 else fallback
    return fallback


def renew_after(lifetime: float) -> float:
    """Seconds until a token of ``lifetime`` seconds is replaced: EARLY_RENEWAL before it
    expires, or at 80% of a lifetime too short for that."""
    return lifetime - EARLY_RENEWAL if lifetime > 2 * EARLY_RENEWAL else lifetime * 0.8


def field(d: Any, key: str) -> Any:
    """``d[key]`` matched case-insensitively: the vendor writes ``Token``, ``accessData``,
    ``Hash`` and ``success`` side by side."""
    if not isinstance(d, dict):
        return None
    if key in d:
        return d[key]
    lowered = key.lower()
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def user_key(params: dict[str, Any]) -> str:
    """How inbox rows name the user: userId, or "docType:docValue"."""
    if params.get("userId"):
        return str(params["userId"])
    return f"{params.get('userDocType')}:{params.get('userDocValue')}"


def filters_key(params: dict[str, Any]) -> str:
    """The non-empty messengerFilters as canonical JSON ('{}' for none), so the same question
    asked twice lands on the same alert-counter row."""
    given = params.get("messengerFilters") or {}
    return json.dumps({k: v for k, v in given.items() if v not in (None, "")}, sort_keys=True,
                      ensure_ascii=False)


def _expires(text: Any) -> datetime | None:
    try:
        return datetime.strptime(str(text).strip(), "%Y%m%d%H%M%S")  # UTC, naive
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _pending(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    return str(value).strip().upper() in ("S", "SIM", "TRUE", "1", "Y")


def body_for(op: Operation, params: dict[str, Any], company_hash: str) -> dict[str, Any]:
    """The JSON the vendor takes: ``hash`` from the account, then the params. Identity and
    filter keys are all sent, "" where unused, as in the vendor's own examples."""
    body: dict[str, Any] = {"hash": company_hash}
    rest = {k: v for k, v in params.items() if k not in IDENTITY_KEYS + ("messengerFilters",)}
    if op.needs_user_identity:
        body.update({k: "" if params.get(k) is None else params[k] for k in IDENTITY_KEYS})
        if op.param("dataIni") is not None:
            given = params.get("messengerFilters") or {}
            body["messengerFilters"] = {k: "" if given.get(k) is None else given[k]
                                        for k in FILTER_KEYS}
    else:
        rest = dict(params)
    body.update(rest)
    body["hash"] = company_hash  # a param can never replace the account's company
    return body


def records(op: Operation, params: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the inbox writer named by ``op.lands_in``."""
    what = f"{op.name} (AnnA)"
    if op.lands_in == "anna_user_hash":
        data = field(body, "accessData")
        if not isinstance(data, dict) or not field(data, "Hash"):
            raise ProtocolError(f"{what}: the answer has no accessData.Hash")
        return [{"user_id": str(params["userId"]), "hash": _text(field(data, "Hash")),
                 "chat_url": _text(field(data, "ChatURL")),
                 "embedded_url": _text(field(data, "EmbeddedURL")),
                 "expires_at": _expires(field(data, "Expires"))}]
    if op.lands_in == "anna_structure":
        departments = field(field(body, "structure"), "Departments")
        if not isinstance(departments, list) or not all(isinstance(d, dict)
                                                        for d in departments):
            raise ProtocolError(f"{what}: 'structure.Departments' is not a list of objects")
        out: list[dict[str, Any]] = []
        for d in departments:
            alias = _text(field(d, "Alias") or field(d, "Name"))
            if not alias:
                raise ProtocolError(f"{what}: a department has neither Alias nor Name")
            out.append({"kind": "department", "alias": alias, "name": _text(field(d, "Name"))})
            channels = field(d, "Channels") or []
            if not isinstance(channels, list):
                raise ProtocolError(f"{what}: 'Channels' of department {alias} is not a list")
            for c in channels:
                c_alias = _text(field(c, "Alias") or field(c, "Name"))
                if not c_alias:
                    raise ProtocolError(f"{what}: a channel of {alias} has neither Alias nor Name")
                out.append({"kind": "channel", "department_alias": alias, "alias": c_alias,
                            "name": _text(field(c, "Name"))})
        return out
    if op.lands_in == "anna_user_request":
        items = field(body, "userRequests")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ProtocolError(f"{what}: 'userRequests' is not a list of objects")
        key = user_key(params)
        rows = []
        for i in items:
            if field(i, "Protocol") in (None, ""):
                raise ProtocolError(f"{what}: a request has no Protocol")
            rows.append({"user_key": key, "protocol": str(field(i, "Protocol")),
                         "department": _text(field(i, "Department")),
                         "channel": _text(field(i, "Channel")),
                         "description": _text(field(i, "Description")),
                         "opened": _text(field(i, "OpenDate")), "status": _text(field(i, "Status")),
                         "pending": _pending(field(i, "Pending")), "link": _text(field(i, "Link"))})
        return rows
    if op.lands_in == "anna_alert_counter":
        count = field(body, "alertCounter")
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) \
                or not 0 <= count <= 2_147_483_647:  # the column is an INT
            raise ProtocolError(f"{what}: 'alertCounter' is not a whole number from 0 to "
                                "2147483647")
        return [{"user_key": user_key(params), "filters": filters_key(params),
                 "alert_counter": count}]
    return []


def refusal_code(message: str) -> str:
    """A stable code for a ``success: false`` message (see the table above)."""
    plain = unicodedata.normalize("NFKD", message.lower()).encode("ascii", "ignore").decode()
    if "inativo" in plain:
        return "USER_INACTIVE"
    if "empresa" in plain and "nao encontrad" in plain:
        return "COMPANY_NOT_FOUND"
    if "usuario" in plain and ("nao encontrad" in plain or "not found" in plain):
        return "USER_NOT_FOUND"
    if "invalid" in plain:
        return "ANNA_INVALID_PARAM"
    if plain.startswith("informe"):
        return "ANNA_MISSING_PARAM"
    return "ANNA_ERROR"


def _succeeded(body: dict[str, Any], what: str) -> bool:
    flag = field(body, "success")
    if isinstance(flag, str):
        flag = {"true": True, "false": False}.get(flag.strip().lower(), flag)
    if not isinstance(flag, bool):
        raise ProtocolError(f"{what}: the answer has no true/false 'success'")
    return flag


class AnnaClient:
    name = "anna"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        # (token, monotonic renewal time) per account and credentials: an account whose
        # settings change (a reload, a test's copy) never reuses another's token.
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        with self._guard:
            self._tokens.clear()

    @staticmethod
    def _settings(account: Account) -> tuple[str, str, str, str]:
        s = account.anna
        values = []
        for setting in ("url", "company_hash", "user", "password"):
            value = getattr(s, setting)
            if not value:
                env = f" or SQLBRIDGE_ANNA_{setting.upper()}" if account.name == "default" else ""
                raise ConfigError(f"account '{account.name}' has no AnnA {setting}: set "
                                  f"accounts.{account.name}.anna.{setting}{env}")
            values.append(value if isinstance(value, str) else value.reveal())
        return values[0], values[1], values[2], values[3]

    @staticmethod
    def _cache_key(account: Account, settings: tuple[str, str, str, str]) -> str:
        return account.name + ":" + hashlib.sha256("\0".join(settings).encode()).hexdigest()

    def _token(self, account: Account, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one the vendor just refused and must not be reused."""
        settings = self._settings(account)
        key = self._cache_key(account, settings)
        with self._guard:
            cached = self._tokens.get(key)
            if cached and cached[0] != stale and cached[1] > time.monotonic():
                return cached[0]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one GetToken at a time per account; the others wait and reuse it
            with self._guard:
                cached = self._tokens.get(key)
            if cached and cached[0] != stale and cached[1] > time.monotonic():
                return cached[0]
            token, lifetime = self._fetch_token(account, settings)
            with self._guard:
                self._tokens[key] = (token, time.monotonic() + max(0.5, renew_after(lifetime)))
            return token

    def _fetch_token(self, account: Account,
                     settings: tuple[str, str, str, str]) -> tuple[str, float]:
        url, company, user, password = settings
        s = account.anna
        secrets = account.secrets()
        what = "GetToken (AnnA)"
        resp = self.transport.send(
            "POST", url + TOKEN_PATH, what=what, timeout=(s.connect_timeout, s.read_timeout),
            secrets=secrets, rate=((account.name, "anna"), s.rate_limit),
            json={"hash": company, "user": user, "pass": password}, max_bytes=s.max_response_bytes,
            deadline=s.total_timeout, **request_options(s))
        if resp.status_code in (401, 403):
            raise ProviderError(f"{what}: HTTP {resp.status_code}: the account's AnnA "
                                "credentials were refused", code="ANNA_AUTH_FAILED",
                                http_status=resp.status_code)
        refuse_client_error(resp, what, secrets)
        body = json_object(resp, what, secrets)
        data = field(body, "data")
        token = field(data, "Token")
        if not _succeeded(body, what) or not token:
            reason = field(body, "message") or "no token in the answer"
            raise ProviderError(scrub(f"{what}: the account's AnnA credentials were refused: "
                                      f"{excerpt(str(reason), secrets, 200, '')}", secrets),
                                code="ANNA_AUTH_FAILED", http_status=resp.status_code)
        return str(token), token_lifetime(field(data, "ExpiresIn"), s.token_lifetime)

    def _token_before_sending(self, account: Account, stale: str | None = None) -> str:
        """A token for a call about to be made. Trouble fetching it happened before the call
        itself left, so it is reported as "not sent" (a send stays safe to retry) unless the
        credentials were refused (permanent)."""
        try:
            return self._token(account, stale)
        except TransientError as exc:
            if exc.http_status is not None and delivery.reach_of_status(exc.http_status) \
                    is delivery.Reach.NOT_DONE:
                raise
            raise TransientError(f"{exc} (getting a token; the call itself was not sent)",
                                 code=exc.code, retry_after=exc.retry_after,
                                 delivered=False) from None
        except ProtocolError as exc:
            raise TransientError(f"{exc} (getting a token; the call itself was not sent)",
                                 code=exc.code, delivered=False) from None

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        url, company, _, _ = self._settings(account)
        body = body_for(op, params, company)
        s = account.anna
        secrets = account.secrets()
        what = f"{op.name} (AnnA)"
        token = self._token_before_sending(account)
        for first in (True, False):
            resp = self.transport.send(
                "POST", url + str(op.path), what=what,
                timeout=(s.connect_timeout, s.read_timeout), secrets=secrets,
                rate=((account.name, "anna"), s.rate_limit), json=body,
                headers={"Authorization": f"Bearer {token}"},
                max_bytes=s.max_response_bytes, deadline=s.total_timeout,
                **request_options(s))
            if resp.status_code != 401 or not first:
                break
            token = self._token_before_sending(account, stale=token)
        return self.read_response(op, params, resp, secrets)

    @classmethod
    def read_response(cls, op: Operation, params: dict[str, Any], resp: requests.Response,
                      secrets: list[str]) -> CallResult:
        """What an answer that arrived says: a CallResult, or ProviderError (the vendor's no,
        HTTP 4xx) / ProtocolError (anything unreadable, with the answer's HTTP status)."""
        what = f"{op.name} (AnnA)"
        if resp.status_code == 401:
            raise ProviderError(f"{what}: HTTP 401 even with a fresh token",
                                code="ANNA_UNAUTHORIZED", http_status=401)
        refuse_client_error(resp, what, secrets)
        return answered(resp.status_code, what, lambda: cls._read_answer(
            op, params, json_object(resp, what, secrets), resp.status_code, secrets))

    @staticmethod
    def _read_answer(op: Operation, params: dict[str, Any], answer: dict[str, Any],
                     status: int, secrets: list[str]) -> CallResult:
        clean = scrub(answer, secrets)
        if not _succeeded(answer, f"{op.name} (AnnA)"):
            message = excerpt(str(field(answer, "message") or "no message"), secrets, 500, "")
            raise ProviderError(scrub(f"{op.name}: {message}", secrets),
                                code=refusal_code(message), http_status=status,
                                response=clean)
        return CallResult(status, clean, scrub(records(op, params, answer), secrets))

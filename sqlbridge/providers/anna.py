"""AnnA Corporate User V3 client: one cached token per account, JSON POSTs, scrubbed answers.

The token comes from ``REST/Credentials/GetToken`` and is reused until shortly before it
expires. The vendor leaves ``ExpiresIn`` unspecified, so seconds, an ISO date-time and
``YYYYMMDDhhmmss`` are all read, and anything else falls back to the account's
``token_lifetime``. A 401 drops the token and repeats the call once with a fresh one (a token
revoked early, or a clock that disagrees); a second 401 is a permanent failure.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

from ..config import Account
from ..errors import ConfigError, ProtocolError, ProviderError
from ..redact import scrub
from ..registry import Operation
from .base import CallResult
from .transport import Transport, json_object, refuse_client_error

TOKEN_PATH = "REST/Credentials/GetToken"
# Renew this long before the stated expiry: a token that dies in flight costs a 401 round trip.
EARLY_RENEWAL = 30.0
IDENTITY_KEYS = ("userId", "userDocType", "userDocValue")
FILTER_KEYS = ("departmentAlias", "channelAlias", "dataIni", "dataFim", "status", "pendentes")


def token_lifetime(expires_in: Any, fallback: float) -> float:
    """Seconds a token lives, from whatever GetToken said."""
    if isinstance(expires_in, int | float) and expires_in > 0:
        return float(expires_in)
    text = str(expires_in or "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", text) and len(text) < 10:
        return float(text)
    for fmt in ("%Y%m%d%H%M%S", None):
        try:
            when = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        left = (when - datetime.now(UTC)).total_seconds()
        if left > 0:
            return left
    return fallback


def _get(d: dict[str, Any], key: str) -> Any:
    """The vendor's casing varies (``Token``, ``accessData``, ``Hash``): match loosely."""
    if key in d:
        return d[key]
    lowered = key.lower()
    for k, v in d.items():
        if k.lower() == lowered:
            return v
    return None


def user_key(params: dict[str, Any]) -> str:
    if params.get("userId"):
        return str(params["userId"])
    return f"{params.get('userDocType')}:{params.get('userDocValue')}"


def _expires(text: Any) -> datetime | None:
    try:
        return datetime.strptime(str(text), "%Y%m%d%H%M%S")
    except ValueError:
        return None


def records(op: Operation, params: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    what = f"{op.name} (AnnA)"
    if op.lands_in == "anna_user_hash":
        data = _get(body, "accessData") or {}
        return [{"user_id": str(params["userId"]), "hash": _get(data, "Hash"),
                 "chat_url": _get(data, "ChatURL"), "embedded_url": _get(data, "EmbeddedURL"),
                 "expires_at": _expires(_get(data, "Expires"))}]
    if op.lands_in == "anna_structure":
        structure = _get(body, "structure") or {}
        departments = _get(structure, "Departments") or []
        if not isinstance(departments, list):
            raise ProtocolError(f"{what}: 'Departments' is not a list")
        out: list[dict[str, Any]] = []
        for d in departments:
            alias = str(_get(d, "Alias") or _get(d, "Name"))
            out.append({"kind": "department", "alias": alias, "name": _get(d, "Name")})
            for c in _get(d, "Channels") or []:
                out.append({"kind": "channel", "department_alias": alias,
                            "alias": str(_get(c, "Alias") or _get(c, "Name")),
                            "name": _get(c, "Name")})
        return out
    if op.lands_in == "anna_user_request":
        items = _get(body, "userRequests")
        if not isinstance(items, list):
            raise ProtocolError(f"{what}: 'userRequests' is not a list")
        key = user_key(params)
        return [{"user_key": key, "protocol": str(_get(i, "Protocol")),
                 "department": _get(i, "Department"), "channel": _get(i, "Channel"),
                 "description": _get(i, "Description"), "opened": _get(i, "OpenDate"),
                 "status": _get(i, "Status"),
                 "pending": None if _get(i, "Pending") is None
                 else str(_get(i, "Pending")).upper() == "S",
                 "link": _get(i, "Link")} for i in items]
    if op.lands_in == "anna_alert_counter":
        count = _get(body, "alertCounter")
        if not isinstance(count, int):
            raise ProtocolError(f"{what}: 'alertCounter' is not a number")
        filters = params.get("messengerFilters") or {}
        return [{"user_key": user_key(params),
                 "filters": json.dumps(filters, sort_keys=True, ensure_ascii=False),
                 "alert_counter": count}]
    return []


class AnnaClient:
    name = "anna"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
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

    def _token(self, account: Account, stale: str | None = None) -> str:
        with self._guard:
            lock = self._locks.setdefault(account.name, threading.Lock())
        with lock:  # one GetToken at a time per account; the others wait and reuse it
            cached = self._tokens.get(account.name)
            if cached and cached[0] != stale and cached[1] > time.monotonic():
                return cached[0]
            url, company, user, password = self._settings(account)
            s = account.anna
            secrets = account.secrets()
            what = "GetToken (AnnA)"
            resp = self.transport.send(
                "POST", url + TOKEN_PATH, what=what,
                timeout=(s.connect_timeout, s.read_timeout), secrets=secrets,
                json={"hash": company, "user": user, "pass": password})
            refuse_client_error(resp, what, secrets)
            body = json_object(resp, what, secrets)
            data = _get(body, "data") or {}
            token = _get(data, "Token") if isinstance(data, dict) else None
            if _get(body, "success") is not True or not token:
                raise ProviderError(
                    scrub(f"AnnA refused the account's credentials: "
                          f"{_get(body, 'message') or 'no token in the answer'}", secrets),
                    code="ANNA_AUTH_FAILED", http_status=resp.status_code)
            life = token_lifetime(_get(data, "ExpiresIn"), s.token_lifetime)
            self._tokens[account.name] = (str(token),
                                          time.monotonic() + max(1.0, life - EARLY_RENEWAL
                                                                 if life > 2 * EARLY_RENEWAL
                                                                 else life * 0.8))
            return str(token)

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        url, company, _, _ = self._settings(account)
        body: dict[str, Any] = {"hash": company}
        if op.needs_user_identity:
            # As the vendor's own examples: every identity and filter key, "" where unused.
            body.update({k: params.get(k, "") for k in IDENTITY_KEYS})
            if op.param("dataIni") is not None:
                given = params.get("messengerFilters") or {}
                body["messengerFilters"] = {k: given.get(k, "") for k in FILTER_KEYS}
        else:
            body.update(params)
        s = account.anna
        secrets = account.secrets()
        what = f"{op.name} (AnnA)"
        token = self._token(account)
        for first in (True, False):
            resp = self.transport.send(
                "POST", url + str(op.path), what=what,
                timeout=(s.connect_timeout, s.read_timeout), secrets=secrets,
                rate=((account.name, "anna"), s.rate_limit), json=body,
                headers={"Authorization": f"Bearer {token}"})
            if resp.status_code != 401 or not first:
                break
            token = self._token(account, stale=token)
        if resp.status_code == 401:
            raise ProviderError(f"{what}: HTTP 401 even with a fresh token",
                                code="ANNA_UNAUTHORIZED", http_status=401)
        refuse_client_error(resp, what, secrets)
        answer = json_object(resp, what, secrets)
        clean = scrub(answer, secrets)
        if _get(answer, "success") is not True:
            message = str(_get(answer, "message") or "no message")
            code = "USER_INACTIVE" if "inativ" in message.lower() and "inativado" not in \
                message.lower() else "ANNA_ERROR"
            raise ProviderError(scrub(f"{op.name}: {message}", secrets), code=code,
                                http_status=resp.status_code, response=clean)
        return CallResult(resp.status_code, clean, records(op, params, answer))

"""Afilnet HTTP API client (class ``chat``, and the passthrough for any other class).

Always a POST of a UTF-8 form, never a GET: the seed's GET URLs put the password into proxy and
server logs and broke on ``&``, ``#``, ``%`` and ``+``. With ``auth = "post"`` the credentials
travel in the form body (``/api/http/``); with ``auth = "basic"`` only in the
``Authorization`` header (``/api/basic/``), and the body holds class, method and parameters.

Answers are ``{"status": "SUCCESS", "result": …}`` or ``{"status": "ERROR", "error": CODE}``,
always HTTP 200, with ``status`` in either case. Where a list is expected it may be
``result: […]`` or ``result: {"list": […]}`` (undocumented): both are read, anything else is a
ProtocolError.

Error codes (the seed's tables, in English). Every documented code is permanent: each names
something wrong with the request or the account, so sending the same request again gets the
same answer, and repeating a wrong password only risks locking the account.

| code                     | meaning                                   | retried |
| ------------------------ | ----------------------------------------- | ------- |
| MISSING_USER             | the user or e-mail was not sent           | no      |
| MISSING_PASSWORD         | the password was not sent                 | no      |
| MISSING_CLASS            | the class was not sent                    | no      |
| MISSING_METHOD           | the method was not sent                   | no      |
| MISSING_COMPULSORY_PARAM | a mandatory parameter is missing          | no      |
| INCORRECT_USER_PASSWORD  | wrong user or password                    | no      |
| INCORRECT_CLASS          | no such class                             | no      |
| INCORRECT_METHOD         | no such method                            | no      |
| CHANNEL_NOT_FOUND        | the channel does not exist                | no      |
| CHAT_NOT_FOUND           | the chat does not exist                   | no      |
| INCORRECT_FILETYPE       | the file type is not one of those allowed | no      |
| INCORRECT_FILEURL        | the file URL is not valid                 | no      |
| INCORRECT_THUMBURL       | the thumbnail URL is not valid            | no      |
| any other code           | undocumented; kept as the vendor sent it  | no      |
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from ..config import Account
from ..errors import ConfigError, ProtocolError, ProviderError
from ..redact import excerpt, scrub
from ..registry import Operation
from .base import CallResult
from .session import request_options
from .transport import Transport, answered, json_object, refuse_client_error

ERRORS: dict[str, str] = {
    "MISSING_USER": "the user or e-mail was not sent",
    "MISSING_PASSWORD": "the password was not sent",
    "MISSING_CLASS": "the class was not sent",
    "MISSING_METHOD": "the method was not sent",
    "MISSING_COMPULSORY_PARAM": "a mandatory parameter is missing",
    "INCORRECT_USER_PASSWORD": "wrong user or password",
    "INCORRECT_CLASS": "no such class",
    "INCORRECT_METHOD": "no such method",
    "CHANNEL_NOT_FOUND": "the channel does not exist",
    "CHAT_NOT_FOUND": "the chat does not exist",
    "INCORRECT_FILETYPE": "the file type is not one of those allowed",
    "INCORRECT_FILEURL": "the file URL is not valid",
    "INCORRECT_THUMBURL": "the thumbnail URL is not valid",
}
UNDOCUMENTED = "an error code the vendor does not document"
_CODE = re.compile(r"[A-Z0-9_]{1,60}")
# Natural-key fields each record must carry; an item without them cannot be stored.
_KEYS = {"chat_channel": ("platform", "platformid"),
         "chat": ("platform", "platformid", "destination"),
         "chat_message": ("platform", "platformid", "messageid")}


def describe(operation: str, code: str) -> str:
    """The sentence a caller sees, e.g. ``chat.sendmessage: CHANNEL_NOT_FOUND (the channel
    does not exist)``."""
    return f"{operation}: {code} ({ERRORS.get(code, UNDOCUMENTED)})"


def _text(value: Any) -> str | None:
    # platformid and messageid may arrive as numbers; the tables hold text.
    return None if value is None else str(value)


def _flag(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    return str(value).strip().lower() in ("1", "true", "yes", "s", "y")


def result_list(result: Any, what: str) -> list[dict[str, Any]]:
    """The items of a list answer, bare or under ``list``."""
    items = result.get("list") if isinstance(result, dict) and "list" in result else result
    if not isinstance(items, list):
        got = "nothing" if result is None else type(result).__name__
        raise ProtocolError(f"{what}: expected a list in 'result' (or 'result.list'), got {got}")
    if not all(isinstance(i, dict) for i in items):
        raise ProtocolError(f"{what}: expected a list of objects in 'result'")
    return items


def records(lands_in: str | None, result: Any, params: dict[str, Any],
            what: str) -> list[dict[str, Any]]:
    """Rows for the inbox writer named by ``lands_in``, every value as text (flags as bool)."""
    if lands_in is None:
        return []
    out: list[dict[str, Any]] = []
    for item in result_list(result, what):
        # Items normally repeat the channel; if one does not, it is the one asked about.
        def get(key: str, item: dict[str, Any] = item) -> str | None:
            return _text(item.get(key, params.get(key) if key != "messageid" else None))

        if lands_in == "chat_channel":
            row: dict[str, Any] = {"platform": get("platform"), "platformid": get("platformid"),
                                   "name": get("name")}
        elif lands_in == "chat":
            row = {"platform": get("platform"), "platformid": get("platformid"),
                   "destination": get("destination"), "last_messageid": get("messageid"),
                   "last_message": get("message"), "last_sent": _flag(item.get("sent")),
                   "last_status": get("status"), "last_datetime": get("datetime")}
        else:  # chat_message, chat_message_unread: getunreadmessages says "issent"
            row = {"platform": get("platform"), "platformid": get("platformid"),
                   "messageid": get("messageid"), "destination": get("destination"),
                   "message": get("message"),
                   "sent": _flag(item["issent"] if "issent" in item else item.get("sent")),
                   "status": get("status"), "datetime": get("datetime")}
        missing = [k for k in _KEYS.get(lands_in, _KEYS["chat_message"]) if not row.get(k)]
        if missing:
            raise ProtocolError(f"{what}: a list item has no {', '.join(missing)}")
        out.append(row)
    return out


def credentials_missing(account: Account, setting: str) -> ConfigError:
    env = f" or SQLBRIDGE_AFILNET_{setting.upper()}" if account.name == "default" else ""
    return ConfigError(f"account '{account.name}' has no Afilnet {setting}: set "
                       f"accounts.{account.name}.afilnet.{setting}{env}")


class AfilnetClient:
    name = "afilnet"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        s = account.afilnet
        if not s.user:
            raise credentials_missing(account, "user")
        if not s.password:
            raise credentials_missing(account, "password")
        form: dict[str, Any] = {"class": op.vendor_class, "method": op.vendor_method}
        form.update({k: _form_value(v) for k, v in params.items() if v is not None})
        auth = None
        if s.auth == "basic":
            auth = (s.user.reveal(), s.password.reveal())
        else:
            form.update(user=s.user.reveal(), password=s.password.reveal())
        secrets = account.secrets()
        what = f"{op.name} (Afilnet)"
        resp = self.transport.send(
            "POST", s.url, what=what, timeout=(s.connect_timeout, s.read_timeout),
            secrets=secrets, rate=((account.name, "afilnet"), s.rate_limit),
            data={k: str(v).encode("utf-8") for k, v in form.items()}, auth=auth,
            max_bytes=s.max_response_bytes,
            deadline=s.total_timeout, **request_options(s))
        return read_response(op, params, resp, secrets)


def read_response(op: Operation, params: dict[str, Any], resp: requests.Response,
                  secrets: list[str]) -> CallResult:
    """What an answer that arrived says: a CallResult, or ProviderError (the vendor's no, HTTP
    4xx) / ProtocolError (anything unreadable, with the answer's HTTP status)."""
    what = f"{op.name} (Afilnet)"
    refuse_client_error(resp, what, secrets)
    return answered(resp.status_code, what, lambda: _read_answer(
        op, params, json_object(resp, what, secrets), resp.status_code, secrets))


def _read_answer(op: Operation, params: dict[str, Any], body: dict[str, Any], status_code: int,
                 secrets: list[str]) -> CallResult:
    what = f"{op.name} (Afilnet)"
    status = str(body.get("status") or "").strip().lower()
    clean = scrub(body, secrets)
    if status == "error":
        given = str(body.get("error") or "UNKNOWN_ERROR").strip().upper()
        # The vendor's code becomes outbox.error_code: keep it only if it looks like one.
        code = given if _CODE.fullmatch(given) else "UNKNOWN_ERROR"
        text = describe(op.name, code) if code == given else \
            f"{op.name}: an unreadable error code {excerpt(given, secrets, 80, '')!r}"
        raise ProviderError(scrub(text, secrets), code=code, http_status=status_code,
                            response=clean)
    if status != "success":
        shown = excerpt(str(body.get("status")), secrets, 50, "")
        raise ProtocolError(f"{what}: 'status' is {shown!r}, neither success nor error",
                            http_status=status_code, response=clean)
    rows = records(op.lands_in, body.get("result"), params, what)
    return CallResult(status_code, clean, scrub(rows, secrets))


def _form_value(value: Any) -> Any:
    # Forms carry text: booleans as the vendor's 1/0, objects (a passthrough's) as JSON.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value

"""Afilnet HTTP API client (class ``chat`` and the passthrough for any other class).

Always a POST of a UTF-8 form: the seed's GET URLs leaked the password into logs and broke on
``&``, ``#`` and ``%``. With ``auth = "post"`` the credentials travel in the form body (to
``/api/http/``); with ``auth = "basic"`` only in the ``Authorization`` header (``/api/basic/``).

Every documented error code is permanent: each names something wrong with the request or the
account (a missing or wrong parameter, a wrong password, a channel or chat that does not
exist), so sending it again would get the same answer, and repeating a wrong password only
risks locking the account.

``ERRORS`` below lists each code with its meaning (the seed's table, in English).
"""

from __future__ import annotations

from typing import Any

from ..config import Account
from ..errors import ConfigError, ProtocolError, ProviderError
from ..redact import scrub
from ..registry import Operation
from .base import CallResult
from .transport import Transport, json_object, refuse_client_error

ERRORS: dict[str, str] = {
    "MISSING_USER": "user or e-mail not included",
    "MISSING_PASSWORD": "password not included",
    "MISSING_CLASS": "class not included",
    "MISSING_METHOD": "method not included",
    "MISSING_COMPULSORY_PARAM": "a mandatory parameter is missing",
    "INCORRECT_USER_PASSWORD": "wrong user or password",
    "INCORRECT_CLASS": "wrong class",
    "INCORRECT_METHOD": "wrong method",
    "CHANNEL_NOT_FOUND": "the channel does not exist",
    "CHAT_NOT_FOUND": "the chat does not exist",
    "INCORRECT_FILETYPE": "wrong file type",
    "INCORRECT_FILEURL": "the file URL is not valid",
    "INCORRECT_THUMBURL": "the thumbnail URL is not valid",
}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _flag(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    return str(value).strip().lower() in ("1", "true", "yes", "s")


def _list(result: Any, what: str) -> list[dict[str, Any]]:
    # Undocumented whether a list comes bare or as {"list": [...]}: accept both.
    items = result.get("list") if isinstance(result, dict) else result
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ProtocolError(f"{what}: expected a list of objects in 'result', got "
                            f"{type(items).__name__}")
    return items


def records(lands_in: str | None, result: Any, what: str) -> list[dict[str, Any]]:
    if lands_in is None:
        return []
    items = _list(result, what)
    if lands_in == "chat_channel":
        return [{"platform": _text(i.get("platform")), "platformid": _text(i.get("platformid")),
                 "name": _text(i.get("name"))} for i in items]
    if lands_in == "chat":
        return [{"platform": _text(i.get("platform")), "platformid": _text(i.get("platformid")),
                 "destination": _text(i.get("destination")),
                 "last_messageid": _text(i.get("messageid")),
                 "last_message": _text(i.get("message")), "last_sent": _flag(i.get("sent")),
                 "last_status": _text(i.get("status")),
                 "last_datetime": _text(i.get("datetime"))} for i in items]
    # chat_message / chat_message_unread: getunreadmessages says "issent", the rest "sent".
    return [{"platform": _text(i.get("platform")), "platformid": _text(i.get("platformid")),
             "messageid": _text(i.get("messageid")), "destination": _text(i.get("destination")),
             "message": _text(i.get("message")),
             "sent": _flag(i["issent"] if "issent" in i else i.get("sent")),
             "status": _text(i.get("status")), "datetime": _text(i.get("datetime"))}
            for i in items]


class AfilnetClient:
    name = "afilnet"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        s = account.afilnet
        for setting in ("user", "password"):
            if not getattr(s, setting):
                raise ConfigError(
                    f"account '{account.name}' has no Afilnet {setting}: set "
                    f"accounts.{account.name}.afilnet.{setting}"
                    + (f" or SQLBRIDGE_AFILNET_{setting.upper()}"
                       if account.name == "default" else ""))
        assert s.user is not None and s.password is not None
        form: dict[str, Any] = {"class": op.vendor_class, "method": op.vendor_method, **params}
        auth = None
        if s.auth == "basic":
            auth = (s.user.reveal(), s.password.reveal())
        else:
            form.update(user=s.user.reveal(), password=s.password.reveal())
        secrets = account.secrets()
        what = f"{op.name} (Afilnet)"
        resp = self.transport.send(
            "POST", s.url, what=what, timeout=(s.connect_timeout, s.read_timeout),
            secrets=secrets, rate=((account.name, "afilnet"), s.rate_limit), data=form,
            auth=auth)
        refuse_client_error(resp, what, secrets)
        body = json_object(resp, what, secrets)
        status = str(body.get("status", "")).lower()
        clean = scrub(body, secrets)
        if status == "error":
            code = str(body.get("error") or "UNKNOWN_ERROR")
            meaning = ERRORS.get(code, "an error code the vendor does not document")
            raise ProviderError(scrub(f"{op.name}: {code} ({meaning})", secrets), code=code,
                                http_status=resp.status_code, response=clean)
        if status != "success":
            raise ProtocolError(f"{what}: 'status' is {body.get('status')!r}, neither success "
                                "nor error", http_status=resp.status_code)
        return CallResult(resp.status_code, clean,
                          records(op.lands_in, body.get("result"), what))

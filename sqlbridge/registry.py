"""Every operation sqlbridge can perform, declared once.

The T-SQL procedure generator, the CLI, the sandbox and the worker all read these declarations,
so a parameter rule (required, allowed values, length, date format) is written here and nowhere
else. ``validate`` is the single check: the enqueue path calls it so a caller sees bad input at
once, and the worker calls it again for rows that were ``INSERT``ed straight into the outbox, so
both paths fail with the same code and the same sentence.

Parameter names are the vendors' own (``platformid``, ``userId``, ``messengerFilters``); params
that the vendor nests (AnnA's ``messengerFilters``) are declared with ``group`` and may be given
either nested or flat, and are always stored nested, in the shape the vendor's body takes.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from .allowlist import url_problem
from .errors import ValidationError

ParamType = Literal["str", "int", "bool", "date", "url", "object", "json"]
Delivery = Literal["read", "send", "by_method"]

PLATFORMS = ("webchat", "whatsapp", "telegram", "operator")
FILE_TYPES = ("image", "video", "audio", "voice", "document", "contact")
# The seed lists file types in Portuguese; callers porting those scripts may keep them.
FILE_TYPE_ALIASES = {
    "imagem": "image",
    "vídeo": "video",
    "video": "video",
    "áudio": "audio",
    "audio": "audio",
    "voz": "voice",
    "documento": "document",
    "contato": "contact",
}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
READ_METHODS = ("GET", "HEAD")

# Error codes a request can be refused with before it is sent, with the THROW number the T-SQL
# procedures use for each. The vendor's own codes (MISSING_COMPULSORY_PARAM, INCORRECT_*) keep
# their names so callers porting the seed scripts can match on them.
ERROR_NUMBERS: dict[str, int] = {
    "UNKNOWN_OPERATION": 51000,
    "MISSING_COMPULSORY_PARAM": 51001,
    "INVALID_PARAM_VALUE": 51002,
    "INCORRECT_FILETYPE": 51003,
    "INCORRECT_FILEURL": 51004,
    "INCORRECT_THUMBURL": 51005,
    "INVALID_PARAM_TYPE": 51006,
    "PARAM_TOO_LONG": 51007,
    "UNKNOWN_PARAM": 51008,
    "INVALID_DATE": 51009,
    "MISSING_USER_IDENTITY": 51010,
    "INVALID_PARAMS_JSON": 51011,
    "INVALID_ARGUMENT": 51012,
    "INCORRECT_URL": 51013,
    "IDEMPOTENCY_CONFLICT": 51014,
    "REQUEST_NOT_FOUND": 51020,
    "INVALID_STATE": 51021,
    "WAIT_IN_TRANSACTION": 51022,
}

# Sentences, with the placeholders the T-SQL generator fills from its own variables. Keep them
# free of anything but these placeholders so the procedures can build the very same text.
_URL_MESSAGE = "{operation}: parameter '{param}' must be an http:// or https:// URL; got '{got}'"
MESSAGES: dict[str, str] = {
    "MISSING_COMPULSORY_PARAM": "{operation}: parameter '{param}' is required",
    "INVALID_PARAM_VALUE": "{operation}: parameter '{param}' must be one of {allowed}; got '{got}'",
    "INCORRECT_FILETYPE": "{operation}: parameter '{param}' must be one of {allowed}; got '{got}'",
    "INCORRECT_FILEURL": _URL_MESSAGE,
    "INCORRECT_THUMBURL": _URL_MESSAGE,
    "INCORRECT_URL": _URL_MESSAGE,
    "PARAM_TOO_LONG": "{operation}: parameter '{param}' is longer than {max_length} characters",
    "INVALID_PARAM_TYPE": "{operation}: parameter '{param}' must be {type_desc}",
    "INVALID_DATE":
        "{operation}: parameter '{param}' must be a date written dd/MM/yyyy; got '{got}'",
    "UNKNOWN_PARAM": "{operation}: unknown parameter '{param}'; allowed: {allowed}",
    "MISSING_USER_IDENTITY":
        "{operation}: give either 'userId' or both 'userDocType' and 'userDocValue'",
    "UNKNOWN_OPERATION": "unknown operation '{operation}'; known operations: {allowed}",
    "INVALID_PARAMS_JSON": "{operation}: params must be a JSON object",
    # idempotency.check and the procedures' same-request check (tsql.same_request_sql).
    "IDEMPOTENCY_CONFLICT":
        "request_key '{key}' is already used by {where} ({operation}, account {account}); "
        "this request differs in {differs}: use a new key, or send the same request to get "
        "that id back",
}

TYPE_DESCRIPTIONS: dict[str, str] = {
    "str": "text",
    "int": "a whole number",
    "bool": "true or false",
    "date": "a date written dd/MM/yyyy",
    "url": "an http:// or https:// URL",
    "object": "a JSON object",
    "json": "any JSON value",
}

_GOT_LIMIT = 100


def message(code: str, **values: object) -> str:
    return MESSAGES[code].format(**values)


def shorten(value: object) -> str:
    text = str(value)
    return text if len(text) <= _GOT_LIMIT else text[: _GOT_LIMIT - 3] + "..."


@dataclass(frozen=True)
class Param:
    """One parameter of an operation, as the vendor names it."""

    name: str
    type: ParamType = "str"
    required: bool = False
    allowed: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    max_length: int | None = None
    min_value: int | None = None
    max_value: int | None = None
    # Code used when the value is not allowed; the vendor has specific ones for some params.
    error_code: str = "INVALID_PARAM_VALUE"
    # Vendor body nests this param under that key (AnnA's messengerFilters).
    group: str | None = None
    default: Any = None
    description: str = ""

    @property
    def sql_name(self) -> str:
        return "@" + self.name

    @property
    def path(self) -> str:
        return f"{self.group}.{self.name}" if self.group else self.name


@dataclass(frozen=True)
class Operation:
    """One remote operation: what the T-SQL procedure, CLI and worker all agree on."""

    provider: Literal["afilnet", "anna", "http"]
    name: str
    params: tuple[Param, ...] = ()
    # "send" operations are not idempotent: when their outcome is unknown they become
    # `uncertain` instead of being sent again.
    delivery: Delivery = "read"
    # Which inbox writer stores the fetched data (see sqlbridge.inbox), if any.
    lands_in: str | None = None
    # AnnA endpoint path, relative to the account's base URL.
    path: str | None = None
    # AnnA messenger endpoints identify the user by userId or by userDocType + userDocValue.
    needs_user_identity: bool = False
    passthrough: bool = False
    description: str = ""

    @property
    def vendor_class(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def vendor_method(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def procedure(self) -> str:
        """Name of the T-SQL procedure (in schema ``sqlbridge``) that enqueues this operation."""
        if self.provider == "http":
            return "invoke_external_rest_endpoint"
        return f"{self.provider}_{self.name.replace('.', '_')}"

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def is_send(self, params: Mapping[str, Any]) -> bool:
        if self.delivery == "by_method":
            return str(params.get("method", "POST")).upper() not in READ_METHODS
        return self.delivery == "send"


# -- the declarations -----------------------------------------------------------------------

_platform = Param(
    "platform",
    required=True,
    allowed=PLATFORMS,
    max_length=20,
    description="Platform the chat runs on",
)
_platformid = Param("platformid", required=True, max_length=100, description="Platform identifier")
_destination = Param("destination", required=True, max_length=100, description="Chat recipient")

_user_identity = (
    Param("userId", max_length=100, description="User id in the company"),
    Param("userDocType", max_length=50, description="Unique document type identifying the user"),
    Param("userDocValue", max_length=100, description="Unique document value identifying the user"),
)
_messenger_filters = (
    Param("departmentAlias", group="messengerFilters", max_length=100),
    Param("channelAlias", group="messengerFilters", max_length=100),
    Param("dataIni", type="date", group="messengerFilters", description="From date, dd/MM/yyyy"),
    Param("dataFim", type="date", group="messengerFilters", description="To date, dd/MM/yyyy"),
    Param("status", group="messengerFilters", allowed=("A", "E"), description="A open, E closed"),
    Param(
        "pendentes",
        group="messengerFilters",
        allowed=("S", "N"),
        description="S awaiting the user's answer, N not",
    ),
)


def _afilnet(name: str, *params: Param, delivery: Delivery = "read", lands_in: str | None = None,
             description: str = "") -> Operation:
    return Operation("afilnet", name, params, delivery=delivery, lands_in=lands_in,
                     description=description)


def _anna(name: str, path: str, *params: Param, delivery: Delivery = "read",
          lands_in: str | None = None, needs_user_identity: bool = False,
          description: str = "") -> Operation:
    return Operation("anna", name, params, delivery=delivery, lands_in=lands_in, path=path,
                     needs_user_identity=needs_user_identity, description=description)


_DECLARED: tuple[Operation, ...] = (
    _afilnet("chat.getchatchannels", lands_in="chat_channel",
             description="List the account's active chat channels"),
    _afilnet("chat.sendmessage", _platform, _platformid, _destination,
             Param("message", required=True, description="Message text"),
             delivery="send", description="Send a chat message"),
    _afilnet("chat.sendfile", _platform, _platformid, _destination,
             Param("type", required=True, allowed=FILE_TYPES, aliases=FILE_TYPE_ALIASES,
                   error_code="INCORRECT_FILETYPE", description="File type"),
             Param("fileurl", type="url", required=True, max_length=2000,
                   error_code="INCORRECT_FILEURL", description="URL of the file to send"),
             Param("thumburl", type="url", max_length=2000, error_code="INCORRECT_THUMBURL",
                   description="URL of a thumbnail image"),
             Param("message", description="Text sent with the file"),
             delivery="send", description="Send a file in a chat"),
    _afilnet("chat.getchats", _platform, _platformid, lands_in="chat",
             description="List the chats of a channel"),
    _afilnet("chat.getmessages", _platform, _platformid, _destination, lands_in="chat_message",
             description="List the messages of a chat"),
    _afilnet("chat.getunreadmessages", _platform, _platformid, _destination,
             lands_in="chat_message_unread", description="List the unread messages of a chat"),
    _anna("user.userhash", "REST/AnnACorporate/User/UserHash",
          Param("userId", required=True, max_length=100),
          Param("startService", max_length=100,
                description="Service to run when AnnA Chat opens"),
          lands_in="anna_user_hash", description="Generate an access hash for a user"),
    _anna("user.userhashforced", "REST/AnnACorporate/User/UserHashForced",
          Param("userId", required=True, max_length=100),
          Param("userName", required=True, max_length=200),
          Param("startService", max_length=100),
          delivery="send", lands_in="anna_user_hash",
          description="Create or update a user, then generate its access hash"),
    _anna("user.inactivate", "REST/AnnACorporate/User/Inactivate",
          Param("userId", required=True, max_length=100),
          delivery="send", description="Inactivate a user"),
    _anna("messenger.structure", "REST/AnnACorporate/Messenger/Structure",
          lands_in="anna_structure", description="Departments and their channels"),
    _anna("messenger.alertcounter", "REST/AnnACorporate/Messenger/AlertCounter",
          *_user_identity, *_messenger_filters, needs_user_identity=True,
          lands_in="anna_alert_counter", description="Open requests awaiting the user"),
    _anna("messenger.requests", "REST/AnnACorporate/Messenger/Requests",
          *_user_identity, *_messenger_filters, needs_user_identity=True,
          lands_in="anna_user_request", description="The user's requests"),
    _anna("messenger.link", "REST/AnnACorporate/Messenger/Link",
          *_user_identity, needs_user_identity=True,
          description="Link to the user's request in the messenger"),
    Operation(
        "http",
        "http.request",
        (
            Param("url", type="url", required=True, max_length=2048, error_code="INCORRECT_URL",
                  description="Absolute URL; its host must be allowed by the account"),
            Param("method", allowed=HTTP_METHODS, default="POST",
                  aliases={m.lower(): m for m in HTTP_METHODS}),
            Param("headers", type="object", description="Extra request headers"),
            Param("payload", type="json", description="Request body (text or JSON)"),
            Param("timeout", type="int", min_value=1, max_value=230,
                  description="Seconds to wait for the answer"),
            # A name, never a secret: the worker adds the headers / query string the account's
            # [accounts.X.http.credentials.NAME] holds (like the native DATABASE SCOPED
            # CREDENTIAL of sp_invoke_external_rest_endpoint).
            Param("credential", max_length=128,
                  description="Name of a credential in the worker's account configuration"),
        ),
        delivery="by_method",
        description="Any HTTP call to an allowlisted host (like sp_invoke_external_rest_endpoint)",
    ),
)

OPERATIONS: dict[str, Operation] = {op.name: op for op in _DECLARED}
PROVIDERS = ("afilnet", "anna", "http")

_PASSTHROUGH_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_PASSTHROUGH_PARAM = re.compile(r"^[a-z][a-z0-9_]*$", re.IGNORECASE)
# Filled in from the account; a caller must never pass them (they would end up in the outbox).
RESERVED_AFILNET_PARAMS = ("class", "method", "user", "password")
_SEND_PREFIXES = ("send", "create", "add", "delete", "remove", "update", "cancel", "set", "buy")


def passthrough(name: str) -> Operation:
    """An Afilnet class/method this registry does not declare, sent with free parameters.

    Treated as a send (never repeated when its outcome is unknown) unless the method only reads
    (``get…``, ``check…``), since nothing says a foreign method is idempotent.
    """
    method = name.split(".", 1)[1]
    reads = method.startswith(("get", "check", "list"))
    return Operation("afilnet", name, (), delivery="read" if reads else "send", passthrough=True,
                     description="Afilnet passthrough")


# Classes declared here (for AnnA) that Afilnet also has, with methods this registry does not
# declare (``user.getbalance``): their undeclared methods stay Afilnet passthrough.
AFILNET_OPEN_CLASSES = ("user",)


def _refuse_undeclared_method(name: str) -> None:
    """A declared class's methods are all declared: ``chat.sendmesage`` is a typo, not a
    passthrough (it would otherwise really be sent to the vendor). Classes the registry does
    not declare (``sms``, ``user`` methods other than AnnA's) stay passthrough."""
    cls = name.split(".", 1)[0]
    siblings = sorted(n for n, o in OPERATIONS.items() if o.vendor_class == cls)
    if not siblings or cls in AFILNET_OPEN_CLASSES:
        return
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValidationError(
        f"unknown operation '{shorten(name)}'; {hint}{cls} methods are: {', '.join(siblings)}",
        code="UNKNOWN_OPERATION")


def resolve(name: str, provider: str | None = None) -> Operation:
    """The declared operation called ``name``, or an Afilnet passthrough for any other
    ``class.method`` (when the provider is unset or ``afilnet``)."""
    op = OPERATIONS.get(name)
    if op is not None and provider in (None, "", op.provider):
        return op
    if provider in (None, "", "afilnet") and _PASSTHROUGH_NAME.match(name or ""):
        _refuse_undeclared_method(name)
        return passthrough(name)
    known = ", ".join(sorted(OPERATIONS)) + ", or any Afilnet class.method"
    if provider not in (None, "") and provider not in PROVIDERS:
        raise ValidationError(
            f"unknown provider '{shorten(provider)}'; allowed: {', '.join(PROVIDERS)}",
            code="UNKNOWN_OPERATION",
        )
    raise ValidationError(
        message("UNKNOWN_OPERATION", operation=shorten(name), allowed=known),
        code="UNKNOWN_OPERATION",
    )


def parse_params(raw: str | Mapping[str, Any] | None, operation: str = "?") -> dict[str, Any]:
    """Decode the outbox ``params`` column (JSON text) into a dict, or refuse clearly."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise ValidationError(message("INVALID_PARAMS_JSON", operation=operation),
                              code="INVALID_PARAMS_JSON", param="params")
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _check_value(op: Operation, p: Param, value: Any) -> Any:
    def fail(code: str, **extra: object) -> ValidationError:
        return ValidationError(
            message(code, operation=op.name, param=p.name, **extra), code=code, param=p.name
        )

    if p.type in ("str", "url", "date"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS[p.type])
        if isinstance(value, float) and not math.isfinite(value):
            # JSON's 1e400 reads as inf and NaN as nan: sent as the text "inf"/"nan", never
            # what anyone meant.
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS[p.type])
        value = str(value) if not isinstance(value, str) else value
        value = value.strip() if p.type != "str" else value
    elif p.type == "int":
        if isinstance(value, bool):
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS["int"])
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            value = int(value)
        if not isinstance(value, int):
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS["int"])
        if (p.min_value is not None and value < p.min_value) or (
            p.max_value is not None and value > p.max_value
        ):
            raise fail("INVALID_PARAM_TYPE",
                       type_desc=f"a whole number from {p.min_value} to {p.max_value}")
        return value
    elif p.type == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            value = value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS["bool"])
        return value
    elif p.type == "object":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS["object"]) from None
        if not isinstance(value, dict):
            raise fail("INVALID_PARAM_TYPE", type_desc=TYPE_DESCRIPTIONS["object"])
        return value
    else:  # json: anything goes
        return value

    if p.aliases:
        value = p.aliases.get(value, p.aliases.get(value.lower(), value))
    if p.allowed:
        # Case-insensitive, like SQL Server's default collation: 'WhatsApp' means whatsapp.
        value = {a.lower(): a for a in p.allowed}.get(value.lower(), value)
    if p.allowed and value not in p.allowed:
        raise fail(p.error_code, allowed=", ".join(p.allowed), got=shorten(value))
    if p.max_length is not None and len(value) > p.max_length:
        raise fail("PARAM_TOO_LONG", max_length=p.max_length)
    if p.type == "url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise fail(p.error_code if p.error_code != "INVALID_PARAM_VALUE" else "INCORRECT_URL",
                       got=shorten(value))
        if op.provider == "http":
            # The URL http.request will call must read the same to every parser (allowlist.py).
            problem = url_problem(value)
            if problem:
                error = fail(p.error_code, got=shorten(value))
                raise ValidationError(f"{error}: {problem}", code=p.error_code, param=p.name)
    if p.type == "date":
        try:
            if not re.fullmatch(r"\d{2}/\d{2}/\d{4}", value):
                raise ValueError
            datetime.strptime(value, "%d/%m/%Y")
        except ValueError:
            raise fail("INVALID_DATE", got=shorten(value)) from None
    return value


def validate(operation: str | Operation, params: str | Mapping[str, Any] | None,
             provider: str | None = None) -> tuple[Operation, dict[str, Any]]:
    """Check ``params`` against the operation's rules; return it in the vendor's shape.

    Empty strings count as absent, because T-SQL callers pass ``''`` or ``NULL`` for parameters
    they do not use (the vendor's own examples send ``""`` for unused filters).
    """
    op = operation if isinstance(operation, Operation) else resolve(operation, provider)
    given = parse_params(params, op.name)

    if op.passthrough:
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key.lower() in RESERVED_AFILNET_PARAMS or not _PASSTHROUGH_PARAM.match(key):
                raise ValidationError(
                    f"{op.name}: parameter '{shorten(key)}' is not allowed; passthrough "
                    "parameters are plain names, and class, method, user and password come "
                    "from the operation and the account",
                    code="UNKNOWN_PARAM", param=key)
            if isinstance(value, dict | list):
                raise ValidationError(f"{op.name}: parameter '{key}' must be text or a number",
                                      code="INVALID_PARAM_TYPE", param=key)
            if not _empty(value):
                out[key] = value if isinstance(value, str) else json.dumps(value)
        return op, out

    # Flatten groups so both {"messengerFilters": {...}} and flat names are accepted.
    flat: dict[str, Any] = {}
    groups = {p.group for p in op.params if p.group}
    for key, value in given.items():
        if key in groups and isinstance(value, Mapping):
            for k, v in value.items():
                flat[k] = v
        elif key in groups and _empty(value):
            continue
        else:
            flat[key] = value

    allowed_names = [p.name for p in op.params]
    for key in flat:
        if op.param(key) is None:
            raise ValidationError(
                message("UNKNOWN_PARAM", operation=op.name, param=shorten(key),
                        allowed=", ".join(allowed_names) or "none"),
                code="UNKNOWN_PARAM", param=key)

    out = {}
    for p in op.params:
        value = flat.get(p.name)
        if _empty(value):
            if p.required:
                raise ValidationError(message("MISSING_COMPULSORY_PARAM", operation=op.name,
                                              param=p.name),
                                      code="MISSING_COMPULSORY_PARAM", param=p.name)
            if p.default is None:
                continue
            value = p.default
        value = _check_value(op, p, value)
        if p.group:
            out.setdefault(p.group, {})[p.name] = value
        else:
            out[p.name] = value

    if op.needs_user_identity and not (
        out.get("userId") or (out.get("userDocType") and out.get("userDocValue"))
    ):
        raise ValidationError(message("MISSING_USER_IDENTITY", operation=op.name),
                              code="MISSING_USER_IDENTITY", param="userId")
    return op, out


def operations_for(provider: str) -> list[Operation]:
    return [op for op in _DECLARED if op.provider == provider]

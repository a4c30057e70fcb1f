"""One exception hierarchy for the whole package.

The worker and the CLI decide what to do with a failure by its class alone (fail now, retry
later, mark uncertain, stop with a clear line), so every module raises one of these and never a
bare library exception across a module boundary.
"""

from __future__ import annotations


class SqlbridgeError(Exception):
    """Base of every error sqlbridge raises on purpose.

    ``code`` is a stable machine-readable name (stored in ``outbox.error_code``); ``str(e)`` is
    the human sentence. Messages must never contain a secret.
    """

    code = "SQLBRIDGE_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SqlbridgeError):
    """A setting is missing or wrong; the message names the setting and what is allowed."""

    code = "CONFIG_ERROR"


class ValidationError(SqlbridgeError):
    """Request parameters break the operation's declared rules.

    Raised at enqueue time (the caller's transaction sees it) and again by the worker for rows
    inserted directly into the outbox, with the same code and message either way.
    """

    code = "INVALID_PARAM_VALUE"

    def __init__(self, message: str, *, code: str = "INVALID_PARAM_VALUE",
                 param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class RequestNotFound(SqlbridgeError):
    code = "REQUEST_NOT_FOUND"


class InvalidState(SqlbridgeError):
    """An operator asked for a transition the request's current status does not allow."""

    code = "INVALID_STATE"


class ProviderError(SqlbridgeError):
    """The remote API answered and said no (``{"status":"error","error":"CHANNEL_NOT_FOUND"}``,
    ``{"success": false, ...}``). Permanent unless ``retryable`` is set: sending the same request
    again would get the same answer."""

    code = "PROVIDER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str = "PROVIDER_ERROR",
        http_status: int | None = None,
        response: object | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.response = response
        self.retryable = retryable


class ProtocolError(ProviderError):
    """The remote answered with something the vendor's contract does not allow (HTML, an empty
    body, a list where an object belongs). Retryable: such answers come from proxies and
    overloaded front ends far more often than from a changed API."""

    code = "PROTOCOL_ERROR"

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs.setdefault("code", "PROTOCOL_ERROR")
        kwargs.setdefault("retryable", True)
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class TransientError(SqlbridgeError):
    """The call failed in a way worth trying again (HTTP 429/5xx, network error, timeout).

    ``delivered`` says whether the request may have reached the remote end: ``False`` only when
    it provably never left (connection refused, DNS failure, connect timeout). The worker uses it
    to turn a non-idempotent send into ``uncertain`` instead of sending it twice.
    """

    code = "TRANSIENT_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str = "TRANSIENT_ERROR",
        http_status: int | None = None,
        retry_after: float | None = None,
        delivered: bool = True,
        response: object | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.retry_after = retry_after
        self.delivered = delivered
        self.response = response

"""One attempt at one claimed request: validate, call the provider, decide what happens next.

This is where the delivery rules live, in one function, so they can be read in one place:

- bad parameters (a row ``INSERT``ed straight into the outbox) fail at once, with the very code
  and sentence the enqueue procedure would have raised;
- the remote said no (``ProviderError``): fail, no retry, unless the error is marked retryable;
- HTTP 429/5xx, network errors, timeouts: retry with backoff until ``max_attempts``;
- a *send* whose outcome is unknown (the request went out and no answer came back) becomes
  ``uncertain`` instead of being sent twice, unless the account allows resending. An HTTP error
  status is an answer: the remote refused the request, so a retry cannot duplicate it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from . import backoff, registry
from .config import Settings
from .errors import ConfigError, ProtocolError, ProviderError, TransientError, ValidationError
from .queue import Claimed, Completion
from .redact import scrub

MAX_ERROR_MESSAGE = 4000

Caller = Callable[[registry.Operation, dict[str, Any], Any], Any]
Followups = Callable[[Claimed, registry.Operation, dict[str, Any], Any], list[dict[str, Any]]]


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def run(claim: Claimed, *, settings: Settings, call: Caller, worker: str,
        followups: Followups | None = None) -> Completion:
    """Perform the claimed request once and say what became of it. Never raises for a
    request-level problem: one bad row must not stop a worker."""
    started = datetime.now(UTC).replace(tzinfo=None)
    t0 = time.monotonic()
    secrets = settings.secrets()

    def done(status: str, **fields: Any) -> Completion:
        message = fields.pop("error_message", None)
        if message is not None:
            message = scrub(str(message), secrets)[:MAX_ERROR_MESSAGE]
        response = fields.pop("response", None)
        return Completion(
            id=claim.id, lease_token=claim.lease_token, attempt=claim.attempts, status=status,
            started_at=started, duration_ms=int((time.monotonic() - t0) * 1000), worker=worker,
            error_message=message, response=_dump(scrub(response, secrets)), **fields)

    try:
        op, params = registry.validate(claim.operation, claim.params, claim.provider)
        account = settings.account(claim.account)
    except (ValidationError, ConfigError) as exc:
        return done("failed", error_code=exc.code, error_message=str(exc))

    sending = op.is_send(params)
    resend_ok = getattr(getattr(account, op.provider), "allow_resend", False)

    def retry_or(final_status: str, exc: TransientError | ProviderError) -> Completion:
        common = {"provider": op.provider, "http_status": getattr(exc, "http_status", None),
                  "error_code": exc.code, "error_message": str(exc),
                  "response": getattr(exc, "response", None)}
        if claim.attempts >= claim.max_attempts:
            common["error_message"] = (f"{exc} (gave up after {claim.attempts} attempts)")
            return done(final_status, **common)
        wait = backoff.delay(claim.attempts, base=settings.worker.backoff_base,
                             cap=settings.worker.backoff_max,
                             retry_after=getattr(exc, "retry_after", None))
        return done("queued", retry_in=wait, **common)

    try:
        result = call(op, params, account)
    except TransientError as exc:
        unknown_outcome = exc.delivered and exc.http_status is None
        if sending and unknown_outcome and not resend_ok:
            return done("uncertain", provider=op.provider, error_code=exc.code,
                        error_message=f"{exc}; the request may have been delivered, so it was "
                        f"not sent again (check, then 'sqlbridge retry {claim.id}')")
        return retry_or("failed", exc)
    except ProtocolError as exc:
        # A garbled 200 after a send may still mean the message went out.
        if sending and not resend_ok and exc.http_status is not None and exc.http_status < 300:
            return done("uncertain", provider=op.provider, http_status=exc.http_status,
                        error_code=exc.code, error_message=f"{exc}; the request may have been "
                        "delivered, so it was not sent again")
        return retry_or("failed", exc)
    except ProviderError as exc:
        if exc.retryable:
            return retry_or("failed", exc)
        return done("failed", provider=op.provider, http_status=exc.http_status,
                    error_code=exc.code, error_message=str(exc), response=exc.response)
    except ConfigError as exc:
        return done("failed", provider=op.provider, error_code=exc.code, error_message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one call must not kill the worker
        return done("failed", provider=op.provider, error_code="INTERNAL_ERROR",
                    error_message=f"{type(exc).__name__}: {exc}")

    children = followups(claim, op, params, result) if followups else []
    inbox = (op.lands_in, claim.account, params, result.records) if op.lands_in else None
    return done("succeeded", provider=op.provider, http_status=result.http_status,
                response=result.response, inbox=inbox, followups=children)

"""One attempt at one claimed request: validate, call the provider, decide what happens next.

The delivery rule itself ("may this have been delivered, may it be sent again?") lives in
``delivery``, shared with lease recovery and the transport; this module maps what a call raised
onto it:

- bad parameters or an unknown account (rows ``INSERT``ed straight into the outbox) fail at
  once, with the very code and sentence the enqueue procedure would have raised;
- the remote said no (``ProviderError``, HTTP 4xx): fail, no retry;
- "not done" (HTTP 429, 503) or never sent (connection refused, DNS, connect timeout): retry
  with backoff until ``max_attempts``;
- the request left and no usable answer came back (read timeout, dropped connection, the call's
  deadline, any other 5xx, a 2xx whose body cannot be read or is too large): a read is retried,
  a *send* becomes ``uncertain`` instead of being sent twice, unless the account allows resending.

Nothing raises out of ``run``, and every text it returns is storable (``textsafe``): one bad row
or answer fails its own request and nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from . import backoff, breaker, delivery, registry, textsafe
from .config import Settings
from .delivery import Reach, Verdict
from .errors import ConfigError, ProtocolError, ProviderError, TransientError, ValidationError
from .queue import Claimed, Completion
from .redact import scrub

MAX_ERROR_MESSAGE = 4000

Caller = Callable[[registry.Operation, dict[str, Any], Any], Any]
Followups = Callable[[Claimed, registry.Operation, dict[str, Any], Any], list[dict[str, Any]]]


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
            message = textsafe.text(scrub(str(message), secrets))[:MAX_ERROR_MESSAGE]
        response = fields.pop("response", None)
        inbox = fields.pop("inbox", None)
        if inbox is not None:  # records hold the remote's text: make it storable too
            inbox = tuple(textsafe.storable(list(inbox)))
        if fields.get("error_code") is not None:  # a column of 100 characters
            fields["error_code"] = textsafe.text(str(fields["error_code"]))[:100]
        if fields.get("followups"):
            fields["followups"] = textsafe.storable(fields["followups"])
        return Completion(
            id=claim.id, lease_token=claim.lease_token, attempt=claim.attempts, status=status,
            started_at=started, duration_ms=int((time.monotonic() - t0) * 1000), worker=worker,
            error_message=message, response=textsafe.dump(scrub(response, secrets)),
            inbox=inbox, claim=claim, **fields)

    try:
        return _run(claim, settings, call, followups, done)
    except Exception as exc:  # noqa: BLE001 - a bug in one call must not kill the worker
        return done("failed", error_code="INTERNAL_ERROR",
                    error_message=f"{type(exc).__name__}: {exc}")


def _run(claim: Claimed, settings: Settings, call: Caller, followups: Followups | None,
         done: Callable[..., Completion]) -> Completion:
    try:
        row = delivery.prepare(claim.operation, claim.params, claim.provider, claim.account,
                               settings)
    except (ValidationError, ConfigError) as exc:
        return done("failed", error_code=exc.code, error_message=str(exc))
    op, params, account = row.op, row.params, row.account

    def settle(reach: Reach, exc: TransientError | ProviderError) -> Completion:
        rule = delivery.verdict(reach, sending=row.sending, resend_ok=row.resend_ok)
        common = {"provider": op.provider, "http_status": getattr(exc, "http_status", None),
                  "error_code": exc.code, "error_message": str(exc),
                  "response": getattr(exc, "response", None),
                  "api_signal": breaker.signal(reach, rule, exc.code)}
        if rule is Verdict.FAIL:
            return done("failed", **common)
        if rule is Verdict.UNCERTAIN:
            common["error_message"] = (
                f"{exc}; the request may have been delivered, so it was not sent again "
                f"(check with the recipient, then 'sqlbridge retry {claim.id}')")
            return done("uncertain", **common)
        if claim.attempts >= claim.max_attempts:
            common["error_message"] = f"{exc} (gave up after {claim.attempts} attempts)"
            return done("failed", **common)
        asked = getattr(exc, "retry_after", None)
        cap = settings.worker.backoff_max
        wait = backoff.delay(claim.attempts, base=settings.worker.backoff_base, cap=cap,
                             retry_after=asked)
        note = backoff.clamp_note(asked, cap)
        if note:
            common["error_message"] = f"{exc}; {note}"
        return done("queued", retry_in=wait, **common)

    try:
        result = call(op, params, account)
    except TransientError as exc:
        return settle(delivery.reach_of_failure(delivered=exc.delivered,
                                                http_status=exc.http_status), exc)
    except ProtocolError as exc:
        # An answer came that cannot be read (garbled 2xx, HTML, too large, nested too deep):
        # the request reached the remote, which may have done the work.
        return settle(Reach.MAYBE, exc)
    except ProviderError as exc:
        return settle(Reach.MAYBE if exc.retryable else Reach.REFUSED, exc)
    except ConfigError as exc:
        return done("failed", provider=op.provider, error_code=exc.code, error_message=str(exc))
    except RecursionError as exc:
        # Belt and braces: a parser deeper than textsafe's depth check is still an unreadable
        # answer, not a bug.
        return settle(Reach.MAYBE, ProtocolError(f"{op.name}: the answer is nested too deeply "
                                                 f"({type(exc).__name__})"))

    children = followups(claim, op, params, result) if followups else []
    inbox = (op.lands_in, claim.account, params, result.records) if op.lands_in else None
    return done("succeeded", provider=op.provider, http_status=result.http_status,
                response=result.response, inbox=inbox, followups=children,
                api_signal=breaker.signal(None, None, None))

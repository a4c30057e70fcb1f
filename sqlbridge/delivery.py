"""The one statement of "may this request have been delivered, and may it be sent again?".

Three places must answer that question the same way: the transport (what a failure on the wire
means), ``attempt.run`` (what to do with the row after a failed call) and lease recovery (what to
do with a row whose worker died mid-call). They all go through this module, so they cannot
disagree.

What we know about a call is one of five ``Reach`` values:

- ``NOT_SENT``: it never left (refused connection, DNS, TLS handshake, connect timeout).
  Read: retry. Send: retry.
- ``NOT_DONE``: the answer says "not done, try later" (HTTP 429, 503). Read: retry. Send: retry.
- ``REFUSED``: the answer says no (HTTP 4xx, the vendor's error answer). Both: fail.
- ``MAYBE``: it left and no usable answer came back (read timeout, dropped connection, the
  call's deadline, any other 5xx since a gateway's 502/504 can follow the work, a 2xx whose body
  cannot be read or is too large, the worker died mid-call). Read: retry. Send: ``uncertain``
  (retry only if the account sets ``allow_resend``).

A retry is still bounded by ``max_attempts`` (then ``failed``). Rows whose parameters or account
are refused by ``prepare`` were never sent by any worker running these rules, so they fail with
the refusal's code wherever they are found (a worker or lease recovery).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from . import registry
from .config import Account, Settings

# Answers that say "the request was not carried out; try later". Any other 5xx may come from a
# gateway after the backend did the work (502 and 504 in particular), so for a send it is MAYBE.
NOT_DONE_STATUS = (429, 503)


class Reach(enum.Enum):
    NOT_SENT = "not_sent"
    NOT_DONE = "not_done"
    REFUSED = "refused"
    MAYBE = "maybe"


class Verdict(enum.Enum):
    RETRY = "retry"  # queue again (``failed`` once max_attempts is used up)
    FAIL = "fail"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Prepared:
    """A row that passed the worker's checks: what it is and how it may be repeated."""

    op: registry.Operation
    params: dict[str, Any]
    account: Account
    sending: bool
    resend_ok: bool


def prepare(operation: str, params: Any, provider: str | None, account: str,
            settings: Settings) -> Prepared:
    """Validate a row exactly as the worker does before calling anyone.

    Raises ``ValidationError`` or ``ConfigError`` (unknown account) when the row can never be
    sent; both the worker and lease recovery then fail it with that code.
    """
    op, clean = registry.validate(operation, params, provider)
    acct = settings.account(account)
    section = getattr(acct, op.provider, None)
    return Prepared(op, clean, acct, op.is_send(clean),
                    bool(getattr(section, "allow_resend", False)))


def reach_of_status(status: int) -> Reach:
    """What an HTTP status (other than 2xx) says about whether the request was carried out."""
    if status in NOT_DONE_STATUS:
        return Reach.NOT_DONE
    if 400 <= status < 500:
        return Reach.REFUSED
    return Reach.MAYBE  # 5xx other than 503; a 1xx/3xx where it does not belong


def reach_of_failure(*, delivered: bool, http_status: int | None) -> Reach:
    """The reach of a TransientError: by its status when it carries one, else by whether the
    request may have left (``delivered``)."""
    if http_status is not None:
        if 200 <= http_status < 300:
            return Reach.MAYBE
        return reach_of_status(http_status)
    return Reach.MAYBE if delivered else Reach.NOT_SENT


def verdict(reach: Reach, *, sending: bool, resend_ok: bool) -> Verdict:
    """The delivery rule itself (see the table in the module docstring)."""
    if reach is Reach.REFUSED:
        return Verdict.FAIL
    if reach is Reach.MAYBE and sending and not resend_ok:
        return Verdict.UNCERTAIN
    return Verdict.RETRY

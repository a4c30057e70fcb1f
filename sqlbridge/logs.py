"""What operators read: one log line per finished attempt, as text or JSON, never a secret.

The worker calls ``attempts_written`` once per batch it wrote (``Worker._flush``). Each line
carries the same fields in both formats: id, operation, account, attempt, outcome, http
status, error code, duration. ``uncertain`` results and dead letters (failed after the last
allowed attempt) are WARNING, everything else INFO. Parameters and responses are never
logged; error messages are already scrubbed by the attempt, and every line is scrubbed again
against the configured secrets by the handler's filter.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from .redact import scrub

log = logging.getLogger("sqlbridge.attempt")

FIELDS = ("request_id", "operation", "account", "attempt", "outcome", "http_status",
          "error_code", "duration_ms")
_OUTCOMES = {"queued": "retry"}


def _outcome(completion: Any, fenced: bool) -> str:
    return "lost_lease" if fenced else _OUTCOMES.get(completion.status, completion.status)


def attempt_fields(completion: Any, *, fenced: bool = False) -> dict[str, Any]:
    claim = getattr(completion, "claim", None)
    return {
        "request_id": completion.id,
        "operation": getattr(claim, "operation", None),
        "account": getattr(claim, "account", None),
        "attempt": completion.attempt,
        "outcome": _outcome(completion, fenced),
        "http_status": completion.http_status,
        "error_code": completion.error_code,
        "duration_ms": completion.duration_ms,
    }


def is_dead_letter(completion: Any) -> bool:
    claim = getattr(completion, "claim", None)
    return completion.status == "failed" and claim is not None \
        and completion.attempt >= claim.max_attempts


def attempts_written(completions: Iterable[Any], fenced: Sequence[int] = ()) -> None:
    """Log one line per attempt the worker just wrote (or lost to a newer lease holder)."""
    for c in completions:
        lost = c.id in fenced
        dead = is_dead_letter(c)
        level = logging.WARNING if (c.status == "uncertain" or lost or dead) else logging.INFO
        if not log.isEnabledFor(level):
            continue  # (--log-level warning): no line, so none is built
        fields = attempt_fields(c, fenced=lost)
        if dead:
            fields["dead_letter"] = True
        text = " ".join(f"{k}={'-' if fields[k] is None else fields[k]}" for k in FIELDS)
        if fields.get("dead_letter"):
            text += " dead_letter=true"
        log.log(level, "attempt finished: %s", text, extra={"fields": fields})


class _Scrub(logging.Filter):
    """Last line of defence: no configured secret leaves through a log line."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = scrub(record.getMessage(), self.secrets)
            record.args = ()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601 UTC, ``Z``), level, logger, message, and the
    record's ``fields`` (the attempt fields) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text", *, secrets: Sequence[str] = (),
              stream: Any = None) -> logging.Handler:
    """Set up the root logger for a worker process; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_Scrub(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def stats_sentence(stats: Any) -> str:
    """The worker's stop line: a sentence, not a dataclass repr."""
    recovered = ", ".join(f"{n} {k}" for k, n in sorted(stats.recovered.items()) if n)
    parts = [f"{stats.claimed} claimed", f"{stats.succeeded} succeeded",
             f"{stats.failed} failed", f"{stats.retried} to retry",
             f"{stats.uncertain} uncertain"]
    if stats.released:
        parts.append(f"{stats.released} released unstarted")
    if stats.fenced:
        parts.append(f"{stats.fenced} lost to an expired lease")
    if recovered:
        parts.append(f"recovered from dead workers: {recovered}")
    if stats.db_errors:
        parts.append(f"{stats.db_errors} database errors ridden out")
    return ", ".join(parts)

"""``sqlbridge enqueue --file requests.jsonl``: many requests from a JSON Lines file.

One JSON object per line, with the fields of ``Queue.request_row`` (``operation`` and
``params``, optionally ``account``, ``priority``, ``request_key``, ``correlation``,
``not_before``, ``max_attempts``, ``provider``); blank lines are skipped.

The file is read twice. The first pass checks every line (JSON, fields, the operation's
parameter rules) and, if any line is bad, reports each bad line by number and queues nothing.
The second pass queues the lines through ``Queue.enqueue_many``, in transactions of
``chunk`` rows. Should the database fail during the second pass, the transactions already
committed stay: give every line a ``request_key`` and running the file again is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ValidationError
from .queue import BULK_CHUNK, Queue

Check = Callable[[dict[str, Any]], None]
# A line longer than this is refused without being held in memory.
MAX_LINE_BYTES = 4 * 1024 * 1024
# The first pass stops reporting after this many bad lines (and says how many there were).
MAX_REPORTED = 20


@dataclass
class FileResult:
    lines: int = 0  # requests read (non-blank lines)
    created: int = 0
    existing: int = 0  # request_key matched a request already queued
    first_id: int | None = None
    last_id: int | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) for every line; ``None`` for a line over MAX_LINE_BYTES, whose
    bytes are skipped without being kept."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(MAX_LINE_BYTES)
            yield number, None
            continue
        yield number, line


def parse_line(raw: bytes | None, number: int) -> dict[str, Any] | None:
    """One line as a request mapping (None for a blank line), or ValidationError saying what
    is wrong with it."""
    if raw is None:
        raise ValidationError(f"line {number} is longer than {MAX_LINE_BYTES // 1024 // 1024} "
                              "MB; one request per line, at most that long",
                              code="INVALID_ARGUMENT")
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark, as some Windows editors write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"line {number} is not valid UTF-8 (byte {exc.start + 1}); "
                              "save the file as UTF-8", code="INVALID_ARGUMENT") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValidationError(f"line {number} is nested too deeply to read",
                              code="INVALID_ARGUMENT") from None
    except ValueError as exc:
        raise ValidationError(f"line {number} is not JSON ({str(exc)[:120]}); each line "
                              "must be one JSON object", code="INVALID_ARGUMENT") from None
    if not isinstance(value, dict):
        raise ValidationError(f"line {number} is a JSON {type(value).__name__}, not an "
                              'object such as {"operation": "...", "params": {...}}',
                              code="INVALID_ARGUMENT")
    return value


def check_file(queue: Queue, path: Path, check: Check | None = None
               ) -> tuple[int, list[str]]:
    """First pass: (requests read, one message per bad line, at most MAX_REPORTED).
    ``check(request)``: the caller's own test of each request (the CLI's account check)."""
    count, errors, bad = 0, [], 0
    with path.open("rb") as stream:
        for number, raw in _lines(stream):
            try:
                request = parse_line(raw, number)
                if request is None:
                    continue
                count += 1
                queue.request_row(request)
                if check is not None:
                    check(request)
            except ValidationError as exc:
                bad += 1
                message = str(exc)
                if len(errors) < MAX_REPORTED:
                    errors.append(message if message.startswith(f"line {number} ")
                                  else f"line {number}: {message}")
            except RecursionError:
                bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(f"line {number}: params are nested too deeply")
    if bad > len(errors):
        errors.append(f"... and {bad - len(errors)} more bad lines")
    return count, errors


def enqueue_file(queue: Queue, path: Path, chunk: int = BULK_CHUNK,
                 check: Check | None = None) -> FileResult:
    """Check the whole file, then queue it (see the module docstring). Raises
    ValidationError listing the bad lines when any line is bad; nothing is queued then."""
    count, errors = check_file(queue, path, check)
    if errors:
        raise ValidationError(f"{path}: nothing was queued; fix these lines:\n  "
                              + "\n  ".join(errors), code="INVALID_ARGUMENT")
    result = FileResult(lines=count)

    def requests() -> Iterator[dict[str, Any]]:
        with path.open("rb") as stream:
            for number, raw in _lines(stream):
                request = parse_line(raw, number)
                if request is not None:
                    yield request

    for part in queue.enqueue_chunks(requests(), chunk=chunk):
        for r in part:
            if r.created:
                result.created += 1
                result.first_id = r.id if result.first_id is None else min(result.first_id,
                                                                            r.id)
                result.last_id = r.id if result.last_id is None else max(result.last_id, r.id)
            else:
                result.existing += 1
    return result

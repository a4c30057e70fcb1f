"""Is a request enqueued under a used ``request_key`` the same request again?

The one rule, for every entry point: the same operation and account, exactly (case and spaces
count), and parameters that are the same JSON *value*, whatever their spelling. The stored
text and the new one are compared, not what they mean to a vendor: Python stores parameters
validated (``{"n": 1}`` of a passthrough becomes ``{"n": "1"}``), the T-SQL procedures store
them as given, so one request sent once through each path may differ.

What "the same JSON value" means, written once here and generated as T-SQL by
``tsql.same_request_sql`` (a test runs the same pairs through both):

- identical texts are the same; otherwise both must be JSON objects (after spaces) that
  parse as RFC 8259 JSON (no ``NaN``/``Infinity``);
- objects: the same keys (exact) with the same values, in any order; an object that repeats
  a key is never the same as another text (Python keeps the last value, SQL Server both);
- arrays: the same values in the same order; strings: the same characters after escapes are
  decoded (``"\\/"`` is ``"/"``, ``"\\u00e9"`` is ``"é"``); ``true``/``false``/``null`` only
  equal themselves: ``true`` is not ``1``;
- numbers: the same when they are the same decimal number, exactly: ``1``, ``1.0``, ``1e0``
  and ``10E-1`` are the same, ``0.1`` and ``0.10000000000000001`` are not, and no number is
  ever rounded to a float first. A number with more than 131072 digits before the decimal
  point or more than 16383 after it (as written, with its exponent applied: PostgreSQL's
  ``numeric`` limits, which Babelfish's JSON functions enforce) is never the same as a text
  spelled differently;
- values nested deeper than ``MAX_DEPTH`` containers are never the same as a text spelled
  differently.

Anything the rule cannot decide counts as different: a refusal can be retried with a new key,
a request wrongly taken for an earlier one is lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from . import registry
from .errors import ValidationError

# Containers deeper than this are not compared (the T-SQL half expands one level per loop).
MAX_DEPTH = 32
# PostgreSQL numeric: digits before the decimal point, and after it (as written).
MAX_WHOLE_DIGITS = 131072
MAX_SCALE = 16383
# The names a conflict message lists, in this order, for what differs.
FIELDS = ("operation", "account", "parameters")

_EXPONENT = re.compile("[eE]")
_INT = (-2_147_483_648, 2_147_483_647)  # T-SQL reads the exponent as INT


class _Undecidable(Exception):
    """The rule cannot compare this text: it counts as different."""


def number_key(text: str) -> str | None:
    """The JSON number ``text`` as ``[-]DIGITSeN`` (the value 0.DIGITS × 10^N, DIGITS without
    leading or trailing zeros; ``0`` for zero): equal keys, equal numbers. None when the
    number is beyond the limits above. ``tsql.number_key_sql`` is this, step for step."""
    negative = text.startswith("-")
    unsigned = text[1:] if negative else text
    found = _EXPONENT.search(unsigned)
    mantissa = unsigned[:found.start()] if found else unsigned
    exponent = int(unsigned[found.end():]) if found else 0
    if not _INT[0] <= exponent <= _INT[1]:
        return None
    dot = mantissa.find(".")
    whole = dot if dot >= 0 else len(mantissa)
    fraction = len(mantissa) - dot - 1 if dot >= 0 else 0
    digits = mantissa.replace(".", "")
    if fraction - exponent > MAX_SCALE:
        return None
    significant = digits.strip("0")
    if not significant:
        return "0"
    point = whole + exponent - (len(digits) - len(digits.lstrip("0")))
    if point > MAX_WHOLE_DIGITS:
        return None
    return f"{'-' if negative else ''}{significant}e{point}"


class _Number:
    __slots__ = ("key",)

    def __init__(self, text: str) -> None:
        key = number_key(text)
        if key is None:
            raise _Undecidable
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Undecidable
    return out


def _refuse_constant(_: str) -> Any:
    raise _Undecidable  # NaN, Infinity: not JSON


def _tagged(value: Any, depth: int) -> Any:
    """``value`` as nested tuples/dicts whose equality is the rule's (``True != 1``)."""
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        raise _Undecidable
    if isinstance(value, dict):
        return ("object", {k: _tagged(v, depth + 1) for k, v in value.items()})
    if isinstance(value, list):
        return ("array", tuple(_tagged(v, depth + 1) for v in value))
    if isinstance(value, _Number):
        return ("number", value.key)
    if isinstance(value, bool):
        return ("boolean", value)
    if value is None:
        return ("null",)
    return ("string", value)


def _value(text: str) -> Any:
    if not text.lstrip(" ").startswith("{"):
        raise _Undecidable  # the procedures store only objects; so does Python
    try:
        parsed = json.loads(text, object_pairs_hook=_no_repeats, parse_float=_Number,
                            parse_int=_Number, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise _Undecidable from None
    return _tagged(parsed, 0)


def _text(params: str | None) -> str:
    """Stored params: NULL or only spaces mean ``{}``, as in the procedures."""
    return "{}" if params is None or not params.strip(" ") else params


def same_params(stored: str | None, new: str | None) -> bool:
    """Whether two params texts are the same JSON value, by the rule above."""
    a, b = _text(stored), _text(new)
    if a == b:
        return True
    try:
        return _value(a) == _value(b)
    except _Undecidable:
        return False


def differences(stored: Sequence[Any], new: Sequence[Any]) -> list[str]:
    """What differs between two (operation, account, params): names from FIELDS."""
    (op, account, params), (new_op, new_account, new_params) = stored, new
    return [name for name, differs in zip(FIELDS, (
        op != new_op, account != new_account, not same_params(params, new_params)),
        strict=True) if differs]


def check(key: str, stored: Sequence[Any], new: Sequence[Any], where: str) -> None:
    """Raise IDEMPOTENCY_CONFLICT when ``new`` (operation, account, params) is not the
    request ``stored`` under ``key`` (``where`` names it: "request 12")."""
    differ = differences(stored, new)
    if differ:
        raise ValidationError(registry.message(
            "IDEMPOTENCY_CONFLICT", key=registry.shorten(key), where=where,
            operation=registry.shorten(stored[0]), account=registry.shorten(stored[1]),
            differs=", ".join(differ)), code="IDEMPOTENCY_CONFLICT", param="request_key")

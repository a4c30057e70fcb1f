"""JSON values and the many ways to spell them, for the same-request rule's tests.

``spell`` writes a value as JSON text the way some other writer might (FOR JSON, another
json library, a person): keys in any order, any escape for any character, any exponent and
any number of trailing zeros, blanks between tokens. ``changed`` returns a value that is not
the same by the rule. Values are plain Python: dicts, lists, str, bool, None and numbers as
their decimal text (``Num``), so no number is ever rounded through a float here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Num:
    """A JSON number given by its text (any valid JSON spelling)."""

    text: str


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t"}


def _char(c: str, rnd: random.Random) -> str:
    code = ord(c)
    if code > 0xFFFF:  # a surrogate pair, escaped or not
        if rnd.random() < 0.5:
            return c
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        return f"\\u{high:04x}\\u{low:04X}"
    must = c in _SHORT or code < 0x20
    pick = rnd.random()
    if must:
        return _SHORT[c] if c in _SHORT and pick < 0.5 else f"\\u{code:04x}"
    if c == "/" and pick < 0.5:
        return "\\/"
    return f"\\u{code:04X}" if pick < 0.3 else c


def _string(s: str, rnd: random.Random) -> str:
    return '"' + "".join(_char(c, rnd) for c in s) + '"'


def respell(text: str, rnd: random.Random) -> str:
    """Another spelling of the JSON number ``text``: the same decimal value, exactly."""
    sign, digits, exp = Decimal(text).as_tuple()
    assert isinstance(exp, int)
    minus = "-" if sign else ""
    if not any(digits):
        zero = rnd.choice(["0", "0.0", "0e5", "0.00E-3", "0E+0"])
        return (minus if rnd.random() < 0.3 else "") + zero
    # digits × 10^exp, with up to two zeros appended (value unchanged).
    extra = rnd.randint(0, 2)
    ds = "".join(map(str, digits)).lstrip("0") + "0" * extra
    exp -= extra
    form = rnd.random()
    if form < 0.2:  # 0.000DIGITS × 10^e
        lead = rnd.randint(0, 2)
        return f"{minus}0.{'0' * lead}{ds}e{exp + len(ds) + lead}"
    point = rnd.randint(1, len(ds))  # the decimal point after ``point`` digits
    mantissa = ds[:point] + ("." + ds[point:] if point < len(ds) else "")
    e = exp + len(ds) - point
    if e == 0 and rnd.random() < 0.5:
        return minus + mantissa
    letter = rnd.choice("eE")
    plus = "+" if e >= 0 and rnd.random() < 0.5 else ""
    return f"{minus}{mantissa}{letter}{plus}{e}"


def spell(value: Any, rnd: random.Random, *, same_numbers: bool = True) -> str:
    """``value`` as JSON text, spelled at random (``same_numbers``: respell numbers too)."""
    def blank() -> str:
        return rnd.choice(["", "", " ", "\n", " \t"])

    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        inner = ",".join(f"{blank()}{_string(k, rnd)}{blank()}:{blank()}"
                         f"{spell(v, rnd, same_numbers=same_numbers)}" for k, v in items)
        return "{" + inner + blank() + "}"
    if isinstance(value, list):
        return "[" + ",".join(blank() + spell(v, rnd, same_numbers=same_numbers)
                              for v in value) + blank() + "]"
    if isinstance(value, Num):
        return respell(value.text, rnd) if same_numbers else value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return _string(value, rnd)


def changed(value: Any, rnd: random.Random, *, float_safe: bool = False) -> Any:
    """A value that is not the same as ``value``: one leaf or one member changed.
    ``float_safe``: numbers change so that reading them as floats still differs."""
    if isinstance(value, dict):
        if value and rnd.random() < 0.7:
            key = rnd.choice(sorted(value))
            return {**value, key: changed(value[key], rnd, float_safe=float_safe)}
        extra = "\u00e9xtra"
        while extra in value:
            extra += "+"
        return {**value, extra: None}
    if isinstance(value, list):
        if value and rnd.random() < 0.7:
            i = rnd.randrange(len(value))
            return value[:i] + [changed(value[i], rnd, float_safe=float_safe)] + value[i + 1:]
        return [*value, None]
    if isinstance(value, Num):
        number = Decimal(value.text)
        if float_safe:
            return Num(str(-number)) if number else Num("1")
        step = Decimal(1).scaleb(number.adjusted() - 30) if rnd.random() < 0.5 else Decimal(1)
        with localcontext() as exact:
            exact.prec = 2000  # enough for any float plus one: nothing is rounded
            return Num(str(number + step))
    if isinstance(value, bool):
        return rnd.choice([not value, Num("1" if value else "0"), str(value).lower()])
    if value is None:
        return rnd.choice([False, Num("0"), "", "null"])
    return rnd.choice([value + " ", value.upper() if value.upper() != value else value + "x",
                       Num("0") if value else "x"])


def numbers(*, floats_only: bool = False) -> st.SearchStrategy[Num]:
    """Numbers as text: whole numbers (beyond 2**53 too) and floats' shortest spellings."""
    floats = st.floats(allow_nan=False, allow_infinity=False, width=64).map(
        lambda f: Num(repr(f)))
    if floats_only:
        return floats
    return st.integers(min_value=-(10 ** 25), max_value=10 ** 25).map(
        lambda n: Num(str(n))) | floats


def json_values(text: st.SearchStrategy[str], num: st.SearchStrategy[Num] | None = None
                ) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | (numbers() if num is None else num) | text
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(text, inner, max_size=3), max_leaves=8)


def json_objects(text: st.SearchStrategy[str], num: st.SearchStrategy[Num] | None = None
                 ) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(text, json_values(text, num), max_size=4)

"""Text a worker writes is storable by construction, whatever a remote server sent.

Python strings may hold lone surrogates (``json.loads('"\\ud800"')`` gives one); no database
driver can encode them, and one such string in a batch used to make ``Queue.finish`` raise and
leave the whole batch ``processing``. Everything a worker stores passes through ``storable``:
lone surrogates become U+FFFD, the rest is unchanged. JSON values are checked for depth without
recursion, so a hostile answer nested thousands of levels deep is refused before any recursive
code (scrubbing, serialising) touches it.
"""

from __future__ import annotations

import json
from typing import Any

REPLACEMENT = "\ufffd"
# Deeper answers are refused (PROTOCOL_ERROR): no vendor answer comes near it, and recursive
# code (json, scrubbing) must stay far from Python's recursion limit.
MAX_JSON_DEPTH = 100
# Longest ``response`` stored in the outbox, in characters; a longer one is replaced by a JSON
# note holding its first STORED_HEAD characters (see docs/reliability.md).
MAX_STORED_RESPONSE = 1_000_000
STORED_HEAD = 65_536


def text(value: str) -> str:
    """``value`` with every lone surrogate replaced by U+FFFD (a fast path for clean text)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)


def storable(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, scalars) whose every string, keys
    included, can be encoded; iterative, so depth cannot exhaust the stack."""
    if isinstance(value, str):
        return text(value)
    if not isinstance(value, dict | list | tuple):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        src, parent, slot = stack.pop()
        if isinstance(src, str):
            parent[slot] = text(src)
        elif isinstance(src, dict):
            out: dict[Any, Any] = {}
            parent[slot] = out
            for k, v in src.items():
                key = text(k) if isinstance(k, str) else k
                out[key] = None
                stack.append((v, out, key))
        elif isinstance(src, list | tuple):
            items: list[Any] = [None] * len(src)
            parent[slot] = items
            stack.extend((v, items, i) for i, v in enumerate(src))
        else:
            parent[slot] = src
    return root[0]


def depth(value: Any) -> int:
    """Nesting depth of a JSON-like value (a scalar is 0), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list | tuple):
            d += 1
            deepest = max(deepest, d)
            stack.extend((x, d) for x in v)
    return deepest


def dump(value: Any) -> str | None:
    """The text stored in ``outbox.response``: JSON for structures, capped at
    MAX_STORED_RESPONSE characters (longer: a note with the head), always encodable."""
    if value is None:
        return None
    out = value if isinstance(value, str) else json.dumps(
        storable(value), ensure_ascii=False, default=str)
    out = text(out)
    if len(out) > MAX_STORED_RESPONSE:
        out = json.dumps({"sqlbridge_truncated": (
            f"the response was {len(out)} characters; only the first {STORED_HEAD} are kept "
            f"(limit {MAX_STORED_RESPONSE})"), "head": out[:STORED_HEAD]}, ensure_ascii=False)
    return out

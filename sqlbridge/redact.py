"""Remove secrets from anything about to be stored, logged or raised.

Two rules. A value under a key that names a credential (``Token``, ``password``,
``Authorization``, …) is blanked whatever it looks like, since a token the vendor issued is not
in the account's list of secrets. And every known secret string is replaced wherever it appears,
also in its URL-encoded and JSON-escaped spellings, since vendors echo what they were sent: AnnA
puts the company hash in its own error messages and in Structure's ``CompaniesHash``, and an
echoed form body carries ``demo%40example.com``, not ``demo@example.com``. Each secret is also
masked in base64 (standard and URL-safe, padded or not, and at any byte alignment inside a
longer encoded blob), the form Basic auth sends and servers echo back; URL encodings are matched
with upper- and lower-case hex, JSON escapes in the forms PHP and .NET write; a number whose
digits are a secret is masked too. ``credential_parts`` gives the parts of a header value that
are credentials by themselves (``tok`` of ``Bearer tok``), which ``Account.secrets()`` adds.

All spellings of all secrets are matched by one regular expression built as a trie (cached per
list of secrets), so the cost grows with the size of the answer, not with answer size times the
number of spellings; ``excerpt`` masks before it cuts.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
CREDENTIAL_KEYS = frozenset({
    "token", "pass", "password", "authorization", "proxy-authorization", "cookie",
    "set-cookie", "x-api-key", "api_key", "apikey", "secret", "companieshash", "hash_company",
})
# Shorter strings would mask ordinary words and numbers all over a response.
MIN_SECRET_LENGTH = 3
# A base64 run this long is masked even when it is only the middle of a secret's encoding.
MIN_BASE64_MIDDLE = 6
_URLSAFE = str.maketrans("+/", "-_")
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")
_TRIE_DEPTH = 3
_NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# name=value or name="value" inside a header value
_PARAMETER = re.compile(r'[A-Za-z0-9_-]+=(?:"([^"]*)"|([^\s,;"=]+))')
# An escape that spells one ASCII character: JSON \\uXXXX (below U+0080), JSON \\/, URL %XX.
_ESCAPE = re.compile(r"\\u(00[0-7][0-9a-fA-F])|%([0-7][0-9a-fA-F])|\\/")


def credential_parts(value: str) -> list[str]:
    """A header value and each part of it that is a credential on its own: after an auth
    scheme word (``Bearer tok`` gives ``tok``; ``Basic`` also gives the decoded ``user:password``,
    the user and the password)."""
    parts = [value]
    words = value.split()
    if len(words) >= 2 and words[0].isalpha() and len(words[0]) <= 20:
        # Only what follows the scheme word, whole: masking each word of a longer value would
        # mask ordinary words all over every response.
        parts.append(value.split(None, 1)[1].strip())
        if words[0].lower() == "basic" and len(words) == 2:
            try:
                decoded = base64.b64decode(words[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if decoded:
                parts.extend([decoded, *decoded.split(":", 1)])
    # Parameters (``key="…"``, ``Signature=…`` of a Digest, AWS or custom scheme): a value
    # that looks like a key (letters and digits, 8 or more characters) is one on its own.
    for m in _PARAMETER.finditer(value):
        v = m.group(1) or m.group(2)
        if len(v) >= 8 and any(c.isdigit() for c in v) and any(c.isalpha() for c in v):
            parts.append(v)
    return list(dict.fromkeys(p for p in parts if p))


def _base64_forms(secret: str) -> set[str]:
    """The secret's base64 (standard and URL-safe, padded or not), and the part of it that is
    the same wherever the secret sits inside a longer encoded text: base64 works on 3-byte
    groups, so a secret at byte offset 1 or 2 of a blob (a server echoing a raw request, a
    header line) encodes to other characters than the secret alone, and the last characters
    of any alignment depend on what follows."""
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {base64.b64encode(raw).decode("ascii"), base64.urlsafe_b64encode(raw).decode("ascii")}
    forms |= {f.rstrip("=") for f in forms}
    for shift in (0, 1, 2):
        encoded = base64.b64encode(bytes(shift) + raw).decode("ascii")
        # Characters made only of the secret's bits: skip those holding the shift's zero
        # bytes, stop before the one that mixes in what follows.
        middle = encoded[-(-8 * shift // 6):(8 * (shift + len(raw))) // 6]
        if len(middle) >= MIN_BASE64_MIDDLE:
            forms |= {middle, middle.translate(_URLSAFE)}
    return forms


def _escaped_forms(s: str) -> set[str]:
    """``s`` as URL encoders (upper- and lower-case hex, ``+`` for space) and JSON encoders
    (``\\u00e9`` or ``\\u00E9``, PHP's ``\\/``) write it."""
    raw = s.encode("utf-8", "surrogatepass")  # a secret read from a hostile env var
    urls = {quote(raw, safe=""), quote_plus(raw)}
    urls |= {_PERCENT.sub(lambda m: m.group().lower(), u) for u in urls}
    escaped = json.dumps(s)[1:-1]
    jsons = {escaped, _UNICODE_ESCAPE.sub(lambda m: m.group().upper().replace("\\U", "\\u"),
                                          escaped)}
    jsons |= {j.replace("/", "\\/") for j in jsons}
    return {s} | urls | jsons


def spellings(secrets: Iterable[str]) -> list[str]:
    """Every way each secret may come back in text (as is, in base64, and each of those
    URL-encoded and JSON-escaped), longest first so that a secret containing another one is
    masked whole."""
    found: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            continue
        # Read back as ISO-8859-1 (header values; text/* without a charset, to requests), a
        # UTF-8 secret is "pÃ¤ss…": the secret to whoever decodes it again.
        # A server that normalises Unicode (NFC, NFD) echoes other code points.
        for written in {secret} | {unicodedata.normalize(f, secret) for f in _NORMAL_FORMS}:
            latin1 = written.encode("utf-8", "surrogatepass").decode("latin-1")
            for s in {written, latin1} | _base64_forms(written):
                found |= _escaped_forms(s)
    return sorted(found, key=len, reverse=True)


def _trie(words: Iterable[str], depth: int = 0) -> str:
    """One regular expression matching any of ``words``, longest first at each position, as a
    trie for the first few characters: the regex engine then tries only the words that share
    the text's next characters, not every word at every position."""
    groups: dict[str, list[str]] = {}
    ends = False
    for w in words:
        if not w:
            ends = True
        else:
            groups.setdefault(w[0], []).append(w[1:])
    if depth >= _TRIE_DEPTH:
        rests = {ch + r for ch, rs in groups.items() for r in rs}
        alternatives = [re.escape(r) for r in sorted(rests, key=len, reverse=True)]
    else:
        alternatives = [re.escape(ch) + _trie(rest, depth + 1)
                        for ch, rest in sorted(groups.items())]
    if not alternatives:
        return ""
    body = "(?:" + "|".join(alternatives) + ")"
    return body + "?" if ends else body


@lru_cache(maxsize=256)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    found = spellings(secrets)
    # Case-insensitive: a vendor that upper-cases what it echoes (Afilnet's error codes are
    # read upper-cased) must not turn a password into text no exact match recognises.
    # Masking a base64 look-alike that differs only in case is the safe side.
    return re.compile(_trie(found), re.IGNORECASE) if found else None


def _spans(v: str, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Where any spelling occurs in ``v``, overlapping occurrences merged into one span (a
    secret overlapping another is masked whole too)."""
    spans: list[tuple[int, int]] = []
    match = pattern.search(v)
    while match is not None:
        start, end = match.span()
        if spans and start <= spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
        elif end > start:
            spans.append((start, end))
        # A later match that could reach past this span starts after this match's start;
        # the first one that reaches past it is what extends the span.
        match = pattern.search(v, start + 1)
    return spans


def _escape_table() -> dict[str, str]:
    """Each escape ``_ESCAPE`` matches and the character it stands for."""
    table = {"\\/": "/"}
    for code in range(0x80):
        for hexa in {f"{code:02x}", f"{code:02X}"}:  # the first digit is 0-7: no case
            table[f"%{hexa}"] = table[f"\\u00{hexa}"] = chr(code)
    return table


_UNESCAPED = _escape_table()


def _unescape(m: re.Match[str]) -> str:
    return _UNESCAPED[m.group()]


def _unescaped_spans(v: str, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Spans of ``v`` that hold a secret once its escapes are decoded: a server may write any
    character of a secret as a JSON ``\\uXXXX`` or ``\\/`` escape or a needless ``%XX``,
    and whoever decodes the text reads the secret. A match in the decoded copy masks the
    escapes and characters it was read from. Memory: the decoded copy only; the positions
    are mapped back in one pass over the escapes, and only when something matched."""
    decoded = _ESCAPE.sub(_unescape, v)
    if len(decoded) == len(v):
        return []
    found = _spans(decoded, pattern)
    if not found:
        return []
    points = sorted({p for a, b in found for p in (a, b - 1)})
    where: dict[int, tuple[int, int]] = {}
    shift = 0  # original index minus decoded index, for characters before the next escape
    k = 0
    for m in _ESCAPE.finditer(v):
        if k == len(points):
            break
        at = m.start() - shift  # the decoded index of this escape's character
        while k < len(points) and points[k] < at:
            where[points[k]] = (points[k] + shift, points[k] + shift + 1)
            k += 1
        if k < len(points) and points[k] == at:
            where[at] = m.span()
            k += 1
        shift += m.end() - m.start() - 1
    for p in points[k:]:
        where[p] = (p + shift, p + shift + 1)
    return [(where[a][0], where[b - 1][1]) for a, b in found]


def _mask_text(v: str, pattern: re.Pattern[str]) -> str:
    """``v`` with every span that any spelling covers masked, overlapping spans merged (a
    later secret overlapping an earlier one is masked whole too)."""
    found = _spans(v, pattern)
    if "\\" in v or "%" in v:
        found += _unescaped_spans(v, pattern)
    if not found:
        return v
    merged: list[list[int]] = []
    for start, end in sorted(found):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out += [v[last:start], MASK]
        last = end
    out.append(v[last:])
    return "".join(out)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of ``value`` (str, dict, list, tuple or scalar) with every secret masked; the
    original is left untouched. A number whose digits are a secret (a PIN echoed as a JSON
    number) becomes the mask."""
    pattern = _pattern(tuple(dict.fromkeys(secrets)))

    def text(v: str) -> str:
        return v if pattern is None else _mask_text(v, pattern)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {walk(k): (MASK if isinstance(k, str) and k.lower() in CREDENTIAL_KEYS
                              and x not in (None, "") else walk(x)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        if isinstance(v, int | float) and not isinstance(v, bool) and pattern is not None:
            try:
                shown = json.dumps(v)
            except ValueError:  # an int too long to print
                return v
            return MASK if text(shown) != shown else v
        return v

    return walk(value)


def excerpt(text: str, secrets: Iterable[str], limit: int, ellipsis: str = "…") -> str:
    """``text`` masked, then cut to ``limit`` characters: cutting first would leave the start
    of a secret that straddles the cut unmasked, since only whole spellings are recognised."""
    clean = scrub(text, secrets)
    return clean if len(clean) <= limit else clean[:limit] + ellipsis

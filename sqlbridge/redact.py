"""Remove secrets from anything about to be stored, logged or raised.

Two rules. A value under a key that names a credential (``Token``, ``password``,
``Authorization``, …) is blanked whatever it looks like, since a token the vendor issued is not
in the account's list of secrets. And every known secret string is replaced wherever it appears,
also in its URL-encoded and JSON-escaped spellings, since vendors echo what they were sent: AnnA
puts the company hash in its own error messages and in Structure's ``CompaniesHash``, and an
echoed form body carries ``demo%40example.com``, not ``demo@example.com``. Each secret is also
masked in base64 (standard and URL-safe, padded or not), the form Basic auth sends and servers
echo back; ``credential_parts`` gives the parts of a header value that are credentials by
themselves (``tok`` of ``Bearer tok``), which ``Account.secrets()`` adds to the list.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
CREDENTIAL_KEYS = frozenset({
    "token", "pass", "password", "authorization", "proxy-authorization", "cookie",
    "set-cookie", "x-api-key", "api_key", "apikey", "secret", "companieshash", "hash_company",
})
# Shorter strings would mask ordinary words and numbers all over a response.
MIN_SECRET_LENGTH = 3


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
    return list(dict.fromkeys(p for p in parts if p))


def _base64_forms(secret: str) -> set[str]:
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {base64.b64encode(raw).decode("ascii"), base64.urlsafe_b64encode(raw).decode("ascii")}
    return forms | {f.rstrip("=") for f in forms}


def spellings(secrets: Iterable[str]) -> list[str]:
    """Every way each secret may come back in text (as is, in base64, and each of those
    URL-encoded and JSON-escaped), longest first so that a secret containing another one is
    masked whole."""
    found: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            continue
        for s in {secret} | _base64_forms(secret):
            raw = s.encode("utf-8", "surrogatepass")  # a secret read from a hostile env var
            found.update({s, quote(raw, safe=""), quote_plus(raw), json.dumps(s)[1:-1]})
    return sorted(found, key=len, reverse=True)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of ``value`` (str, dict, list, tuple or scalar) with every secret masked; the
    original is left untouched."""
    found = spellings(secrets)

    def text(v: str) -> str:
        for s in found:
            if s in v:
                v = v.replace(s, MASK)
        return v

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {walk(k): (MASK if isinstance(k, str) and k.lower() in CREDENTIAL_KEYS
                              and x not in (None, "") else walk(x)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(value)


def excerpt(text: str, secrets: Iterable[str], limit: int, ellipsis: str = "…") -> str:
    """``text`` masked, then cut to ``limit`` characters: cutting first would leave the start
    of a secret that straddles the cut unmasked, since only whole spellings are recognised."""
    clean = scrub(text, secrets)
    return clean if len(clean) <= limit else clean[:limit] + ellipsis

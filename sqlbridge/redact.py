"""Remove secrets from anything about to be stored, logged or raised.

Two rules. A value under a key that names a credential (``Token``, ``password``,
``Authorization``, …) is blanked whatever it looks like, since a token the vendor issued is not
in the account's list of secrets. And every known secret string is replaced wherever it appears,
also in its URL-encoded and JSON-escaped spellings, since vendors echo what they were sent: AnnA
puts the company hash in its own error messages and in Structure's ``CompaniesHash``, and an
echoed form body carries ``demo%40example.com``, not ``demo@example.com``.
"""

from __future__ import annotations

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


def spellings(secrets: Iterable[str]) -> list[str]:
    """Every way each secret may come back in text, longest first so that a secret containing
    another one is masked whole."""
    found: set[str] = set()
    for s in secrets:
        if not s or len(s) < MIN_SECRET_LENGTH:
            continue
        found.update({s, quote(s, safe=""), quote_plus(s), json.dumps(s)[1:-1]})
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

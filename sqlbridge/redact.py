"""Remove secrets from anything about to be stored, logged or raised.

Two rules: a value under a key that names a credential is blanked whatever it looks like, and
every known secret string is replaced wherever it appears (vendors echo them: AnnA puts the
company hash in its own error messages and in Structure's ``CompaniesHash``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"
CREDENTIAL_KEYS = frozenset({"token", "pass", "password", "authorization", "companieshash",
                             "hash_company", "secret", "api_key", "apikey"})


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of ``value`` (str, dict, list or scalar) with every secret masked."""
    found = sorted({s for s in secrets if s}, key=len, reverse=True)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for s in found:
                if s in v:
                    v = v.replace(s, MASK)
            return v
        if isinstance(v, dict):
            return {walk(k): (MASK if str(k).lower() in CREDENTIAL_KEYS and v_ is not None
                              else walk(v_)) for k, v_ in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(value)

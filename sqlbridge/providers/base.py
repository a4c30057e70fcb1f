"""What every provider client gives the worker.

A provider turns (operation, validated params, account) into one ``CallResult`` or raises one of
the ``sqlbridge.errors`` classes: ``ProviderError`` (the remote said no: fail, no retry unless
``retryable``), ``TransientError`` (retry; ``delivered`` says whether a send may have arrived),
``ConfigError`` (the account lacks a setting). It never touches the database: the worker hands
``records`` to ``sqlbridge.inbox`` in the same transaction that finishes the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Account
from ..registry import Operation


@dataclass
class CallResult:
    http_status: int | None
    # The decoded response body, with every secret of the account already removed.
    response: Any
    # Rows for the inbox writer named by ``Operation.lands_in``, in the shape that writer takes.
    records: list[dict[str, Any]] = field(default_factory=list)


class Provider(Protocol):
    name: str

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult: ...

    def close(self) -> None: ...

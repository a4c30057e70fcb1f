"""Provider clients: (operation, validated params, account) in, ``CallResult`` out.

One ``Providers`` per worker: one pooled keep-alive session and one rate limiter shared by the
three clients and by every thread of the worker's pool (all of it is thread-safe).
"""

from __future__ import annotations

from typing import Any

from ..config import Account
from ..errors import ConfigError
from ..registry import PROVIDERS, Operation
from .afilnet import AfilnetClient
from .anna import AnnaClient
from .base import CallResult, Provider
from .http import HttpClient
from .transport import Transport


class Providers:
    """The clients of one worker; safe to call from its whole thread pool."""

    def __init__(self, pool_size: int = 8) -> None:
        self.transport = Transport(pool_size)
        self.clients: dict[str, Provider] = {
            "afilnet": AfilnetClient(self.transport),
            "anna": AnnaClient(self.transport),
            "http": HttpClient(self.transport),
        }

    def get(self, name: str) -> Provider:
        try:
            return self.clients[name]
        except KeyError:
            raise ConfigError(f"unknown provider '{name}'; known: {', '.join(PROVIDERS)}",
                              code="UNKNOWN_OPERATION") from None

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        """One HTTP exchange (two for AnnA when the token is renewed); raises ProviderError,
        ProtocolError, TransientError or ConfigError, every message scrubbed."""
        return self.get(op.provider).call(op, params, account)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.transport.close()


def build_providers(pool_size: int = 8) -> Providers:
    """The worker's clients, with ``pool_size`` keep-alive connections per host (use the
    worker's concurrency)."""
    return Providers(pool_size)


__all__ = ["CallResult", "Provider", "Providers", "build_providers"]

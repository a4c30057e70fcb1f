"""Provider clients: HTTP in, ``CallResult`` out. One pooled session shared by all three."""

from __future__ import annotations

from typing import Any

from ..config import Account
from ..registry import Operation
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
        return self.clients[name]

    def call(self, op: Operation, params: dict[str, Any], account: Account) -> CallResult:
        return self.clients[op.provider].call(op, params, account)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.transport.close()


def build_providers(pool_size: int = 8) -> Providers:
    return Providers(pool_size)


__all__ = ["CallResult", "Provider", "Providers", "build_providers"]

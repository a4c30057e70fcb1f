"""A local stand-in for the Afilnet chat and AnnA V3 APIs, with state and fault injection.

The demo, the tests and the benchmarks run against it over real HTTP on 127.0.0.1; nothing in
the project calls the real services unless an account is configured to.
"""

from .faults import KINDS, Faults
from .server import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
    SANDBOX_ANNA_USER,
    Sandbox,
    serve,
)
from .state import State

__all__ = [
    "KINDS", "SANDBOX_AFILNET_PASSWORD", "SANDBOX_AFILNET_USER", "SANDBOX_ANNA_COMPANY_HASH",
    "SANDBOX_ANNA_PASSWORD", "SANDBOX_ANNA_USER", "Faults", "Sandbox", "State", "serve",
]

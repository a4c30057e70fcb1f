"""The one HTTP session a worker shares between its threads and all three clients.

Pooled keep-alive connections are what make many small vendor calls cheap (a TLS handshake
costs more than a chat message). urllib3's own retries are off (``max_retries=0``): the queue
retries, with backoff, a ``Retry-After`` it can honour and an audit row per attempt, and a
silent library retry of a send would deliver a chat message twice.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

from .. import __version__

USER_AGENT = f"sqlbridge/{__version__}"
# Distinct hosts whose pools are kept: the two vendors plus a few http.request hosts.
POOL_CONNECTIONS = 16


def make_session(pool_size: int = 8) -> requests.Session:
    """A session with ``pool_size`` keep-alive connections per host (the worker's concurrency,
    so no thread waits for a connection and none is opened just to be thrown away)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=POOL_CONNECTIONS, pool_maxsize=max(1, pool_size),
                          max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # One session serves every account: a cookie set by an answer for one account must never
    # ride along on another account's request to the same host.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session

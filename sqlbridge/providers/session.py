"""The one HTTP session a worker shares between its threads and all three clients.

Pooled keep-alive connections are what make many small vendor calls cheap (a TLS handshake
costs more than a chat message). urllib3's own retries are off (``max_retries=0``): the queue
retries, with backoff, a ``Retry-After`` it can honour and an audit row per attempt, and a
silent library retry of a send would deliver a chat message twice.

The adapter is ``netguard.GuardedAdapter``: inside ``netguard.pinned()`` (``http.request``) it
connects to the address that passed the allowlist's address check and nowhere else; outside, it
is requests' own adapter. ``request_options`` turns an account's TLS and proxy settings into the
keyword arguments every provider passes to ``Transport.send``. ``trust_env`` is off: what the
environment says (``HTTP(S)_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) is added by the
transport from ``environment.Environment``, read once per URL instead of on every call.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests

from .. import __version__
from ..config import Transport as TransportSettings
from . import watchdog
from .netguard import GuardedAdapter

USER_AGENT = f"sqlbridge/{__version__}"
# Distinct hosts whose pools are kept: the two vendors plus a few http.request hosts.
POOL_CONNECTIONS = 16


def make_session(pool_size: int = 8) -> requests.Session:
    """A session with ``pool_size`` keep-alive connections per host (the worker's concurrency,
    so no thread waits for a connection and none is opened just to be thrown away)."""
    session = requests.Session()
    adapter = GuardedAdapter(pool_connections=POOL_CONNECTIONS, pool_maxsize=max(1, pool_size),
                          max_retries=0)
    # Connections report to the call's deadline watchdog (headers have no clock of their own).
    adapter.poolmanager.pool_classes_by_scheme = watchdog.POOL_CLASSES
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # The environment (proxies, CA bundle) is read once per URL by ``environment.Environment``,
    # not by requests on every call; netrc is never read (credentials come from accounts).
    session.trust_env = False
    # One session serves every account: a cookie set by an answer for one account must never
    # ride along on another account's request to the same host.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


def request_options(settings: TransportSettings, *, environment_proxies: bool = True
                    ) -> dict[str, Any]:
    """``verify`` and ``proxies`` for ``Transport.send`` from a provider section's settings.

    Certificates are checked unless ``verify_tls = false`` (against ``ca_bundle`` when set, else
    requests' bundle). A configured ``proxy`` carries both schemes. Without one, requests would
    take ``HTTP(S)_PROXY`` from the environment; ``environment_proxies=False`` (http.request)
    refuses that, because the address check and the pinned connection hold only when sqlbridge
    itself connects, or goes through a proxy the account names; it also keeps netrc
    credentials out of the request (belt and braces: the session does not read netrc).
    """
    options: dict[str, Any] = {
        "verify": (settings.ca_bundle or True) if settings.verify_tls else False}
    if settings.proxy:
        proxy = settings.proxy.reveal()
        options["proxies"] = {"http": proxy, "https": proxy}
    elif not environment_proxies:
        # None values are dropped after requests merged the environment in: no proxy at all.
        options["proxies"] = {"http": None, "https": None, "all": None}
    if not environment_proxies:
        # Nor credentials from ~/.netrc or $NETRC, which requests adds to a request without
        # auth: a "default" entry would go to every allowlisted host, unknown to the scrubber.
        options["auth"] = _no_auth
    return options


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth that adds nothing; being set, it keeps requests from reading netrc."""
    return request

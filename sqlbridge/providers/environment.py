"""What requests would read from the process environment on every call, read once per URL.

With ``trust_env`` on (requests' default), every ``Session.request`` walks the whole
environment twice for ``*_proxy`` variables (``getproxies`` and ``proxy_bypass``: cost grows
with the environment, and a Kubernetes pod carries a ``*_SERVICE_*`` variable per service),
matches the host against ``NO_PROXY``, and looks for ``~/.netrc``. A worker's environment does
not change while it runs, so the shared session turns ``trust_env`` off (``session.py``) and the
transport asks this object instead, which gives the same answer from a cache:

- ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` with ``NO_PROXY``, as requests itself reads
  them (``requests.utils.get_environ_proxies``, once per URL), for a call that names no proxy
  of its own: the Afilnet and AnnA clients. ``http.request`` always names its proxies (the
  account's, or none), so the environment never reaches it (``request_options``);
- ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` when certificates are checked against the default
  bundle (an explicit ``ca_bundle`` or ``verify_tls = false`` wins, as before);
- netrc credentials are no longer read at all: credentials come only from the accounts.
"""

from __future__ import annotations

import os
from typing import Any

from requests.utils import get_environ_proxies

# Distinct URLs remembered (the vendors' endpoints are a handful per account); past this the
# cache starts again rather than grow.
MAX_URLS = 1024


class Environment:
    """The proxies and CA bundle the environment gives each URL; thread-safe (a race only
    computes the same answer twice)."""

    def __init__(self) -> None:
        self._proxies: dict[str, dict[str, str]] = {}
        self.ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or \
            os.environ.get("CURL_CA_BUNDLE") or None

    def proxies(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url`` ({} when ``NO_PROXY`` covers its host)."""
        found = self._proxies.get(url)
        if found is None:
            # "no" is NO_PROXY itself, already applied: only scheme keys go to the adapter.
            found = {k: v for k, v in get_environ_proxies(url).items() if k != "no"}
            if len(self._proxies) >= MAX_URLS:
                self._proxies.clear()
            self._proxies[url] = found
        return found

    def apply(self, url: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` for ``Session.request`` with what the environment adds: its proxies
        unless the call names its own, its CA bundle where the default one would be used."""
        if "proxies" not in options:
            options["proxies"] = self.proxies(url)
        if self.ca_bundle and options.get("verify", True) is True:
            options["verify"] = self.ca_bundle
        return options

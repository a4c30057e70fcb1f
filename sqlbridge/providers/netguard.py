"""Where ``http.request`` may connect: the address check and the pinned connection.

After the URL has passed the allowlist (``sqlbridge.allowlist``), its host is resolved once
here and every address it resolves to must be public: loopback, link-local (169.254.0.0/16, where
cloud metadata services live), private, unique-local, carrier-grade NAT, multicast, unspecified,
reserved and documentation ranges are refused, also when hidden in an IPv4-mapped, 6to4 or
Teredo IPv6 address, unless the entry (or the account) sets ``allow_private = true``.

The connection then goes to the address that was checked, never to a second lookup a rebinding
DNS answer could change: ``pinned()`` tells the session's ``GuardedAdapter`` which address to
use for this thread's next request, and the adapter opens the socket to that address while TLS
still sends the host name (SNI) and checks the certificate against it, and ``Host`` still
names the host. The adapter also refuses a request whose URL does not lead to the pinned host,
so the check and the connection can never be about two different places.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3 import HTTPConnectionPool

from ..allowlist import DEFAULT_PORTS, Target
from ..errors import ProviderError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address ("a loopback address", …), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            inner = address_kind(embedded)
            if inner:
                return f"{inner} inside the IPv6 address"
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("reserved", ip.is_reserved), ("unique-local", ip in _UNIQUE_LOCAL),
              ("private", ip.is_private or ip in _CGNAT),
              ("non-public", not ip.is_global))
    for kind, hit in checks:
        if hit:
            return f"a {kind} address"
    return None


def _getaddrinfo(host: str, port: int, timeout: float) -> list[Any]:
    """getaddrinfo, which has no timeout of its own, bounded by ``timeout``: it runs in a
    daemon thread, so a resolver that never answers costs the call its connect timeout and
    cannot hold up the worker's exit."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="sqlbridge-dns", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return list(box["infos"])


def resolve(target: Target, timeout: float = 30.0) -> list[IPAddress]:
    """Every address ``target.host`` resolves to (the address itself for an IP host), IPv4
    first: the first one is the one connected to, and IPv4 is the path most hosts keep working.
    """
    if target.ip is not None:
        return [target.ip]
    try:
        infos = _getaddrinfo(target.host, target.port, timeout)
    except TimeoutError:
        raise TransientError(f"http.request: no DNS answer for {target.host} within "
                             f"{timeout:g}s", code="CONNECT_TIMEOUT", delivered=False) from None
    except (OSError, UnicodeError) as exc:
        raise TransientError(f"http.request: could not resolve {target.host} "
                             f"({type(exc).__name__})", code="CONNECTION_FAILED",
                             delivered=False) from None
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone (fe80::1%eth0); the address is what counts.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    out.sort(key=lambda ip: ip.version)  # stable: the resolver's order within each family
    if not out:
        raise TransientError(f"http.request: {target.host} has no address",
                             code="CONNECTION_FAILED", delivered=False)
    return out


def checked_address(target: Target, *, allow_private: bool, setting: str,
                    timeout: float = 30.0) -> IPAddress:
    """The address to connect to: the first one ``target.host`` resolves to, when every one of
    them may be called; else HOST_NOT_ALLOWED naming the host, the address and the setting."""
    addresses = resolve(target, timeout)
    if not allow_private:
        for ip in addresses:
            kind = address_kind(ip)
            if kind:
                raise ProviderError(
                    f"http.request: host '{target.host}' resolves to {ip}, {kind}; only public "
                    f"addresses are called unless the allowlist entry for {target.origin} sets "
                    f"allow_private = true ({setting})", code="HOST_NOT_ALLOWED")
    return addresses[0]


@dataclass(frozen=True)
class Pin:
    """Connect ``target`` (scheme, host, port) to ``address`` and nothing else; no address:
    only through the account's proxy, which resolves the name itself."""

    target: Target
    address: IPAddress | None


_PIN: ContextVar[Pin | None] = ContextVar("sqlbridge_pin", default=None)


@contextmanager
def pinned(pin: Pin) -> Iterator[None]:
    """Within this block, this thread's requests must go to ``pin`` (see GuardedAdapter)."""
    token = _PIN.set(pin)
    try:
        yield
    finally:
        _PIN.reset(token)


def _leads_to(url: str) -> tuple[str, str, int] | None:
    # The very reading requests' adapter makes of the prepared URL (urllib.parse.urlparse).
    try:
        parts = urlparse(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, -1)
    except ValueError:  # an unreadable port: it cannot be the checked host
        return None


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter that, inside ``pinned()``, connects to the pinned address only."""

    def get_connection_with_tls_context(self, request: PreparedRequest, verify: Any,
                                        proxies: Mapping[str, str] | None = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        pin = _PIN.get()
        if pin is None:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        t = pin.target
        if _leads_to(str(request.url)) != (t.scheme, t.host, t.port):
            raise ProviderError(f"http.request: the request for {request.url} does not lead to "
                                f"the checked host {t.origin}; not sent", code="HOST_NOT_ALLOWED")
        if select_proxy(str(request.url), dict(proxies or {})):
            # Through a configured proxy the proxy connects; the allowlist still applied.
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        if pin.address is None:
            raise ProviderError(f"http.request: no checked address for {t.origin}; not sent",
                                code="HOST_NOT_ALLOWED")
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify,
                                                                            cert)
        host_params["host"] = str(pin.address)
        if t.scheme == "https":
            # SNI and the certificate check use the name, the socket the checked address. Each
            # (address, name) pair gets its own pool: a connection is never reused for another.
            pool_kwargs["server_hostname"] = t.host
            pool_kwargs["assert_hostname"] = t.host
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)

    def add_headers(self, request: PreparedRequest, **kwargs: Any) -> None:
        pin = _PIN.get()
        if pin is not None:
            # urllib3 would otherwise name the pool's host, the bare address, in Host.
            request.headers["Host"] = pin.target.netloc

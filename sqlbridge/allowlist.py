"""Which URLs ``http.request`` may call: one strict reading of a URL, and allowlist entries.

A URL is read once, the way the HTTP client will read it (``requests`` prepares it with
urllib3's ``parse_url``; the adapter then takes the host from the prepared URL), and refused
when another common parser (``urllib.parse``) would see a different scheme, host or port, or when
it holds anything that parsers are known to disagree on: a backslash, a control, format or
whitespace character, userinfo (``@``), a ``%`` in the authority, a non-ASCII host, a number
written as a host (``2130706433``, ``0177.0.0.1``, ``0x7f.1``), or a trailing dot. What is left
has one unambiguous (scheme, host, port), which is what an allowlist entry is matched against
and what the client connects to.

Entries say scheme, host and port: ``https://api.example.com``, ``https://*.example.com`` (any
subdomain, not the name itself), ``http://intranet:8080``. A bare host (``api.example.com``)
means HTTPS on 443; plain HTTP is allowed only by an entry that says ``http://``.

This module does no I/O; resolving names and checking addresses is ``providers.netguard``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# WHATWG URL: a host whose last label is a number is an IPv4 address, in any of the forms
# inet_aton accepts (decimal, octal, hex, fewer than four parts). Only dotted-quad decimal passes.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


class UrlRefused(ValueError):
    """The URL cannot be read unambiguously; ``str()`` says why, in one sentence."""


@dataclass(frozen=True)
class Target:
    """Where a URL leads: lower-case scheme and host (no brackets), and the effective port."""

    scheme: str
    host: str
    port: int
    # The URL as requests will send it (prepared: path and query percent-encoded).
    url: str

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address when the host is written as one, else None."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def netloc(self) -> str:
        """host[:port] as a Host header says it (port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def _bad_character(url: str) -> str | None:
    for ch in url:
        if ch == "\\":
            return "a backslash"
        category = unicodedata.category(ch)
        # C*: control, format, surrogate, private use, unassigned; Z*: every kind of space.
        if category[0] in "CZ":
            return f"the character U+{ord(ch):04X} (control, format or whitespace)"
    return None


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UrlRefused(f"it cannot be parsed ({exc})") from None
    return parts


def _where(scheme: str | None, host: str | None, port: int | None) -> tuple[str, str, int]:
    scheme = (scheme or "").lower()
    host = (host or "").lower().strip("[]")
    return scheme, host, port if port is not None else DEFAULT_PORTS.get(scheme, -1)


def check_host(host: str) -> None:
    """Refuse a host (lower case, no brackets) that is not a DNS name or a canonical IP."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlRefused(f"the host [{host}] is not a valid IPv6 address") from None
        return
    if host.endswith("."):
        raise UrlRefused(f"the host '{host}' ends with a dot; write it without the dot")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            raise UrlRefused(f"the host '{host}' is a number but not a dotted-quad IPv4 address "
                             "(write addresses as four decimal parts, such as 192.0.2.10)")
        return
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UrlRefused(f"the host '{host}' is not a valid host name")


def parse_target(url: str) -> Target:
    """The one (scheme, host, port) ``url`` leads to, or UrlRefused saying what is wrong."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("it is empty")
    bad = _bad_character(url)
    if bad:
        raise UrlRefused(f"it holds {bad}")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise UrlRefused("it is not valid Unicode text") from None
    parts = _split(url)
    if parts.scheme.lower() not in SCHEMES or not url.lower().startswith(
            f"{parts.scheme.lower()}://"):
        raise UrlRefused("only http:// and https:// URLs can be called")
    authority = parts.netloc
    if not authority:
        raise UrlRefused("it has no host")
    if not authority.isascii():
        raise UrlRefused("its host is not ASCII (write an internationalised name in its "
                         "xn-- form)")
    if "@" in authority:
        raise UrlRefused("it holds a user name or password (userinfo before '@'); put "
                         "credentials in the account's http.headers instead")
    if "%" in authority:
        raise UrlRefused("its host holds a percent-encoded character")
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        assert prepared.url is not None
        readings = {_where(p.scheme, p.hostname, p.port) for p in (parts, _split(prepared.url))}
        readings |= {_where(p.scheme, p.host, p.port)
                     for p in (parse_url(url), parse_url(prepared.url))}
    except (requests.RequestException, LocationParseError, UnicodeError, ValueError) as exc:
        if isinstance(exc, UrlRefused):
            raise
        raise UrlRefused(f"it cannot be parsed ({type(exc).__name__})") from None
    if len(readings) != 1:
        raise UrlRefused("URL parsers disagree about its host or port")
    scheme, host, port = readings.pop()
    if not host:
        raise UrlRefused("it has no host")
    if not 0 < port < 65536:
        raise UrlRefused(f"its port {port} is out of range")
    check_host(host)
    return Target(scheme, host, port, prepared.url)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be called (one sentence fragment), or None when it can be read."""
    try:
        parse_target(url)
    except UrlRefused as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Entry:
    """One allowlist entry: a scheme, a host or ``*.domain``, a port."""

    scheme: str
    host: str  # lower case; "*.example.com" for a wildcard
    port: int
    # Let this entry reach loopback, private, link-local… addresses (an intranet service).
    allow_private: bool = False

    def matches(self, target: Target) -> bool:
        if (target.scheme, target.port) != (self.scheme, self.port):
            return False
        if self.host.startswith("*."):
            return target.ip is None and target.host.endswith(self.host[1:])
        return target.host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def parse_entry(text: str, allow_private: bool = False) -> Entry:
    """An entry from its text; ValueError (one sentence) when it is not scheme://host[:port]."""
    raw = text.strip()
    spelled = raw if "://" in raw else f"https://{raw}"
    wildcard = False
    probe = spelled
    head, sep, rest = spelled.partition("://*.")
    if sep:
        wildcard, probe = True, f"{head}://{rest}"
    try:
        target = parse_target(probe)
    except UrlRefused as exc:
        raise ValueError(f"allowlist entry '{text}' is not scheme://host[:port]: {exc}") from None
    after = _split(probe)
    if after.path not in ("", "/") or after.query or after.fragment:
        raise ValueError(f"allowlist entry '{text}' must be scheme://host[:port] without a path "
                         "or query (https://api.example.com, https://*.example.com, "
                         "http://intranet:8080)")
    if wildcard and (target.ip is not None or "." not in target.host):
        raise ValueError(f"allowlist entry '{text}': a wildcard needs a domain with a dot after "
                         "'*.' (https://*.example.com)")
    host = f"*.{target.host}" if wildcard else target.host
    return Entry(target.scheme, host, target.port, allow_private)


def find_entry(target: Target, entries: tuple[Entry, ...]) -> Entry | None:
    """The first entry allowing ``target``, or None."""
    return next((e for e in entries if e.matches(target)), None)

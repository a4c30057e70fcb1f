"""``http.request`` calls only what the allowlist allows.

Capture servers on loopback record every connection they accept: ``allowed`` is the one the
account's allowlist names (``http://127.0.0.1:PORT`` with ``allow_private``), ``forbidden`` (and
its IPv6 twin on ``[::1]``) must never see a connection, whatever the URL tries, with and without
the account's secret headers. The allowed path still works over real HTTP.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select

from sqlbridge import registry
from sqlbridge.allowlist import UrlRefused, parse_entry, parse_target
from sqlbridge.config import Account, HttpSettings, Secret, Settings
from sqlbridge.errors import ProviderError, TransientError, ValidationError
from sqlbridge.providers import CallResult, Providers
from sqlbridge.providers.netguard import Pin, address_kind, checked_address, pinned
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox
from sqlbridge.worker import Worker

from .capture import Capture, make_test_pki
from .conftest import FAST_WORKER

TOKEN = "tok-4f9a1c7e2b"
SECRET_HEADERS = {"Authorization": Secret(f"Bearer {TOKEN}"), "X-Api-Key": Secret("key-77aa91")}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = _ipv6_loopback()


@pytest.fixture(scope="module")
def allowed() -> Iterator[Capture]:
    with Capture() as c:
        yield c


@pytest.fixture(scope="module")
def forbidden() -> Iterator[Capture]:
    with Capture() as c:
        yield c


@pytest.fixture(scope="module")
def forbidden6() -> Iterator[Capture | None]:
    if not HAVE_IPV6:
        yield None
        return
    with Capture("::1") as c:
        yield c


def account(*entries: str, allow_private: bool = False, secret: bool = True,
            **http: Any) -> Account:
    http = {"read_timeout": 10, "connect_timeout": 5, **http}
    return Account("default", http=HttpSettings(
        allowed_hosts=tuple(parse_entry(e, allow_private) for e in entries),
        headers=SECRET_HEADERS if secret else {}, **http))


def call(providers: Providers, acct: Account, url: str, **params: Any) -> CallResult:
    """What the worker does with a stored row, but without the enqueue-time check, so that the
    provider's own guard is what is tested."""
    op = registry.OPERATIONS["http.request"]
    return providers.call(op, {"url": url, "method": "GET", **params}, acct)


def bypass_urls(a: int, f: int, f6: int) -> list[str]:
    """URLs that try to reach 127.0.0.1:f (or [::1]:f6) past an allowlist of 127.0.0.1:a."""
    ok = f"127.0.0.1:{a}"
    bad = f"127.0.0.1:{f}"
    return [
        f"http://{bad}\\@{ok}/", f"http://{bad}\\@api.example.com/", f"http://{bad}\\{ok}/",
        f"http://{ok}@{bad}/", f"http://api.example.com@{bad}/", f"http://u:p@{bad}/",
        f"http://{bad}#@{ok}/", f"http://{bad}?@{ok}/", f"http://{bad}/@{ok}/",
        f"http://{bad}%2F@{ok}/", f"http://{bad}%40{ok}/", f"http://{bad}%23@{ok}/",
        f"http://127.0.0.1%3A{f}/", f"http://{ok}%2F@{bad}/",
        f"http://{ok}\t@{bad}/", f"http://{bad}\t/", f"http://{bad} /", f"http://{bad}\r\n/",
        f"http://{ok}\x00@{bad}/", f"http://{bad}\u3002/",
        f"http://[::1]:{f6}/", f"http://[::1]:{a}/", f"http://[::ffff:127.0.0.1]:{f}/",
        f"http://[::ffff:127.0.0.1]:{a}/", f"http://[0:0:0:0:0:ffff:7f00:1]:{a}/",
        f"http://2130706433:{f}/", f"http://2130706433:{a}/", f"http://0177.0.0.1:{a}/",
        f"http://0x7f.0.0.1:{a}/", f"http://0x7f000001:{a}/", f"http://127.1:{a}/",
        f"http://017700000001:{a}/", f"http://127.0.0.01:{a}/", f"http://0.0.0.0:{a}/",
        f"http://127.0.0.1.:{a}/", f"http://127.0.0.1.:{f}/", f"http://localhost:{a}/",
        f"http://LOCALHOST:{f}/", f"HTTP://{bad}/", f"http://{bad}/", f"http://127.0.0.1:{a}:{f}/",
        f"http://127.0.0.1:{f}:{a}/", f"https://{ok}/", "http://127.0.0.1/",
        f"http://\uff11\uff12\uff17.0.0.1:{a}/", f"http:\\\\{bad}/", f"http:/{bad}/",
        f"http:///{bad}/", f"//{bad}/", f"ftp://{bad}/", f"gopher://{bad}/", "file:///etc/passwd",
        f"http://[::1%25lo]:{f6}/", f"http://{bad};.{ok}/", f"http://127.0.0.2:{a}/",
    ]


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:1\\@api.example.com/", "backslash"),
    ("http://api.example.com/\\x", "backslash"),
    ("http://api.example.com\t/", "U+0009"), ("http://api.example.com/a b", "U+0020"),
    ("http://api.example.com/\u200b", "U+200B"), ("http://api.example.com/\x7f", "U+007F"),
    ("http://a@api.example.com/", "user name or password"),
    ("http://api.example.com%2F@x/", "user name or password"),
    ("http://api.example.com%2f.evil.test/", "percent-encoded"),
    ("http://b\u00fccher.example/", "not ASCII"),
    ("http://2130706433/", "dotted-quad"), ("http://0177.0.0.1/", "dotted-quad"),
    ("http://0x7f.0.0.1/", "dotted-quad"), ("http://127.1/", "dotted-quad"),
    ("http://127.0.0.1./", "ends with a dot"), ("http://api.example.com./", "ends with a dot"),
    ("ftp://api.example.com/", "only http:// and https://"),
    ("http:\\\\api.example.com/", "backslash"), ("http:/api.example.com/", "only http://"),
    ("http://api.example.com:99999/", "cannot be parsed"),
    ("http://[::1/", "cannot be parsed"), ("http://a..b/", "not a valid host name"),
    ("http:///x", "no host"), ("http://\udc80/", "U+DC80"),
])
def test_each_ambiguous_url_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as e:
        parse_target(url)
    assert reason in str(e.value)


@pytest.mark.parametrize(("url", "where"), [
    ("HTTPS://API.Example.COM/x", ("https", "api.example.com", 443)),
    ("http://api.example.com:8080/x?y#z", ("http", "api.example.com", 8080)),
    ("https://[::1]:8443/", ("https", "::1", 8443)),
    ("http://192.0.2.10/", ("http", "192.0.2.10", 80)),
    ("http://evil.test#@api.example.com/", ("http", "evil.test", 80)),
    ("http://evil.test/@api.example.com/", ("http", "evil.test", 80)),
])
def test_an_unambiguous_url_leads_to_one_scheme_host_and_port(url: str,
                                                               where: tuple[str, str, int]
                                                               ) -> None:
    t = parse_target(url)
    assert (t.scheme, t.host, t.port) == where


def test_a_url_the_parsers_read_differently_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # No URL left after the character rules is known to split the parsers; this proves the
    # last check stands on its own, by making urllib.parse read every host differently.
    from sqlbridge import allowlist

    real = allowlist.urlsplit
    monkeypatch.setattr(allowlist, "urlsplit",
                        lambda u: real(u.replace("api.example.com", "evil.test", 1)))
    with pytest.raises(UrlRefused, match="parsers disagree"):
        parse_target("https://api.example.com/")


@pytest.mark.parametrize(("ip", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("10.1.2.3", "private"), ("192.168.1.1", "private"),
    ("172.16.0.1", "private"), ("100.64.0.1", "private"), ("fd00::1", "unique-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("::ffff:127.0.0.1", "loopback address inside the IPv6"),
    ("2002:7f00:1::", "loopback address inside"), ("::ffff:10.0.0.1", "private address inside"),
    ("64:ff9b::7f00:1", "reserved"), ("240.0.0.1", "reserved"), ("192.0.2.1", "private"),
])
def test_every_non_public_address_is_named(ip: str, kind: str) -> None:
    assert kind in (address_kind(ipaddress.ip_address(ip)) or "")


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "93.184.215.14"])
def test_public_addresses_pass(ip: str) -> None:
    assert address_kind(ipaddress.ip_address(ip)) is None


def _assert_untouched(forbidden: Capture, forbidden6: Capture | None,
                      before: tuple[int, int]) -> None:
    assert len(forbidden.connections) == before[0]
    assert len(forbidden6.connections if forbidden6 else []) == before[1]


@pytest.mark.parametrize("secret", [True, False], ids=["secret-headers", "no-headers"])
def test_no_bypass_form_reaches_another_host_or_port(providers: Providers, allowed: Capture,
                                                     forbidden: Capture,
                                                     forbidden6: Capture | None,
                                                     secret: bool) -> None:
    acct = account(allowed.url, "https://api.example.com", allow_private=True, secret=secret)
    f6 = forbidden6.port if forbidden6 else forbidden.port
    before = (len(forbidden.connections), len(forbidden6.connections if forbidden6 else []))
    seen_before = len(allowed.requests)
    for url in bypass_urls(allowed.port, forbidden.port, f6):
        with pytest.raises(ProviderError) as e:
            call(providers, acct, url)
        assert e.value.code in ("INCORRECT_URL", "HOST_NOT_ALLOWED"), (url, e.value)
        assert not e.value.retryable
        # The enqueuing side refuses the same URL when its shape alone is wrong.
        if e.value.code == "INCORRECT_URL":
            with pytest.raises(ValidationError) as v:
                registry.validate("http.request", {"url": url})
            assert v.value.code == "INCORRECT_URL"
    _assert_untouched(forbidden, forbidden6, before)
    assert len(allowed.requests) == seen_before  # nothing went to the allowed one either


def test_the_allowed_path_works_over_real_http_with_host_and_secrets(
        providers: Providers, allowed: Capture) -> None:
    acct = account(allowed.url, allow_private=True)
    # A caller's Host header cannot point the request at another virtual host.
    got = call(providers, acct, f"HTTP://127.0.0.1:{allowed.port}/orders?x=1#frag",
               headers={"Host": "internal.test"})
    assert got.http_status == 200
    seen = allowed.requests[-1]
    assert seen["path"] == "/orders?x=1"
    assert seen["headers"]["Host"] == f"127.0.0.1:{allowed.port}"
    assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"  # sent to the allowed host…
    assert TOKEN not in str(got.response)  # …and never stored from its echo


def test_the_adapter_refuses_a_request_that_does_not_lead_to_the_pinned_host(
        providers: Providers, allowed: Capture, forbidden: Capture) -> None:
    """The second line of defence: should the URL sent ever differ from the URL checked, the
    session's adapter refuses it instead of connecting anywhere."""
    before = len(forbidden.connections), len(allowed.connections)
    pin = Pin(parse_target(f"{allowed.url}/"), ipaddress.ip_address("127.0.0.1"))
    with pinned(pin), pytest.raises(ProviderError) as e:
        providers.transport.send("GET", f"{forbidden.url}/", what="probe", timeout=(5, 5),
                                 secrets=[])
    assert e.value.code == "HOST_NOT_ALLOWED" and "does not lead to the checked host" in str(
        e.value)
    assert (len(forbidden.connections), len(allowed.connections)) == before


def test_a_redirect_to_another_port_is_not_followed(providers: Providers, allowed: Capture,
                                                    forbidden: Capture) -> None:
    before = len(forbidden.connections)
    acct = account(allowed.url, allow_private=True)
    with pytest.raises(ProviderError) as e:
        call(providers, acct, f"{allowed.url}/redirect?to={forbidden.url}/")
    assert e.value.code == "HTTP_302" and "not followed" in str(e.value)
    assert len(forbidden.connections) == before


def test_loopback_is_refused_unless_the_entry_allows_private_addresses(
        providers: Providers, allowed: Capture) -> None:
    before = len(allowed.connections)
    with pytest.raises(ProviderError) as e:
        call(providers, account(allowed.url), f"{allowed.url}/x")
    text = str(e.value)
    assert e.value.code == "HOST_NOT_ALLOWED" and not e.value.retryable
    assert "'127.0.0.1'" in text and "loopback" in text and "allow_private = true" in text
    assert "accounts.default.http.allowed_hosts" in text
    assert len(allowed.connections) == before
    # The account-wide switch works too.
    strict = account(allowed.url)
    wide = dataclasses.replace(strict, http=dataclasses.replace(strict.http, allow_private=True))
    assert call(providers, wide, f"{allowed.url}/x").http_status == 200


def test_a_name_that_resolves_to_loopback_is_refused(providers: Providers,
                                                     allowed: Capture) -> None:
    before = len(allowed.connections)
    with pytest.raises(ProviderError) as e:
        call(providers, account(f"http://localhost:{allowed.port}"),
             f"http://localhost:{allowed.port}/x")
    assert e.value.code == "HOST_NOT_ALLOWED"
    assert "'localhost' resolves to" in str(e.value) and "loopback" in str(e.value)
    assert len(allowed.connections) == before
    got = call(providers, account(f"http://localhost:{allowed.port}", allow_private=True),
               f"http://localhost:{allowed.port}/named")
    assert got.http_status == 200
    assert allowed.requests[-1]["headers"]["Host"] == f"localhost:{allowed.port}"


def _resolver(monkeypatch: pytest.MonkeyPatch, rebind: bool) -> dict[str, Any]:
    """A resolver for the made-up names *.test: 127.0.0.1, or with ``rebind`` 127.0.0.1 for the
    first lookup of a name and 127.0.0.2 for every later one (a rebinding DNS server); other
    names resolve as usual. ``calls`` lists the *.test lookups."""
    real = socket.getaddrinfo
    state: dict[str, Any] = {"calls": []}

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".test"):
            state["calls"].append(name)
            first = state["calls"].count(name) == 1
            address = "127.0.0.1" if first or not rebind else "127.0.0.2"
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return state


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return _resolver(monkeypatch, rebind=True)


@pytest.fixture
def test_names(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return _resolver(monkeypatch, rebind=False)


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
        providers: Providers, rebinding: dict[str, Any]) -> None:
    with Capture("127.0.0.1") as first:
        try:
            second = Capture("127.0.0.2", first.port)
        except OSError:
            pytest.skip("127.0.0.2 is not a loopback address here")
        with second:
            acct = account(f"http://rebind.test:{first.port}", allow_private=True)
            for _ in range(2):
                rebinding["calls"].clear()
                got = call(providers, acct, f"http://rebind.test:{first.port}/pinned")
                assert got.http_status == 200
            assert second.connections == []
            assert first.requests[-1]["headers"]["Host"] == f"rebind.test:{first.port}"
    # One lookup per call: the one that was checked.
    assert rebinding["calls"] == ["rebind.test"]


def test_every_address_a_name_resolves_to_must_be_allowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def two(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.test":  # a public address first, then the metadata service
            return real("8.8.8.8", port, *args, **kwargs) + \
                real("169.254.169.254", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two)
    # Checked without calling, so that a broken check could not connect anywhere.
    with pytest.raises(ProviderError) as e:
        checked_address(parse_target("http://mixed.test/latest/meta-data"),
                        allow_private=False, setting="accounts.default.http.allowed_hosts")
    assert e.value.code == "HOST_NOT_ALLOWED"
    assert "169.254.169.254, a link-local address" in str(e.value)


def test_an_unresolvable_name_is_a_transient_failure_that_sent_nothing(
        providers: Providers, monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nothing)
    with pytest.raises(TransientError) as e:
        call(providers, account("https://api.example.com"), "https://api.example.com/")
    assert e.value.code == "CONNECTION_FAILED" and not e.value.delivered


def test_a_resolver_that_never_answers_costs_the_connect_timeout_only(
        providers: Providers, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def stuck(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "stuck.test":
            release.wait(60)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    try:
        with pytest.raises(TransientError) as e:
            call(providers, account("https://stuck.test", connect_timeout=0.2),
                 "https://stuck.test/")
        assert e.value.code == "CONNECT_TIMEOUT" and not e.value.delivered
        assert "no DNS answer for stuck.test" in str(e.value)
    finally:
        release.set()


def test_ipv4_addresses_are_connected_to_first(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def both(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "dual.test":
            six = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:4860::8888", port, 0, 0))]
            return six + real("8.8.8.8", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    got = checked_address(parse_target("https://dual.test/"), allow_private=False, setting="x")
    assert str(got) == "8.8.8.8"


def test_environment_proxies_are_not_used_by_http_request(
        providers: Providers, allowed: Capture, forbidden: Capture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, forbidden.url)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    before = len(forbidden.connections)
    got = call(providers, account(allowed.url, allow_private=True), f"{allowed.url}/direct")
    assert got.http_status == 200 and len(forbidden.connections) == before


def test_a_configured_proxy_carries_the_call(providers: Providers, allowed: Capture) -> None:
    with Capture() as proxy:
        acct = account("http://api.example.com", proxy=Secret(proxy.url))
        got = call(providers, acct, "http://api.example.com/via-proxy")
        assert got.http_status == 200
        assert proxy.requests[-1]["path"] == "http://api.example.com/via-proxy"
        assert proxy.requests[-1]["headers"]["Host"] == "api.example.com"


# -- HTTPS through the pinned address: SNI, certificate check, ca_bundle, verify_tls ------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for pinned.test signed by it (openssl CLI)."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), "sqlbridge test CA", "pinned.test",
                         "DNS:pinned.test")


@pytest.fixture
def tls_capture(pki: Path) -> Iterator[tuple[Capture, list[str | None]]]:
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "leaf.pem", pki / "leaf.key")
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    with Capture(tls=context) as c:
        yield c, names


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_keeps_sni_host_and_certificate_check_on_the_pinned_address(
        providers: Providers, pki: Path, tls_capture: tuple[Capture, list[str | None]],
        test_names: dict[str, Any]) -> None:
    server, names = tls_capture
    entry = f"https://pinned.test:{server.port}"
    url = f"{entry}/secure"
    got = call(providers, account(entry, allow_private=True, ca_bundle=str(pki / "ca.pem")), url)
    assert got.http_status == 200
    assert names[-1] == "pinned.test"
    assert server.requests[-1]["headers"]["Host"] == f"pinned.test:{server.port}"
    # Verification is on by default: without the private CA the handshake fails, unsent.
    with pytest.raises(TransientError) as e:
        call(providers, account(entry, allow_private=True), url)
    assert e.value.code == "TLS_ERROR" and not e.value.delivered
    # verify_tls = false is the explicit way out.
    assert call(providers, account(entry, allow_private=True, verify_tls=False),
                url).http_status == 200


def test_the_certificate_is_checked_against_the_name_not_the_address(
        providers: Providers, pki: Path, tls_capture: tuple[Capture, list[str | None]],
        test_names: dict[str, Any]) -> None:
    server, _ = tls_capture
    entry = f"https://other.test:{server.port}"  # resolves to the same server, wrong name
    with pytest.raises(TransientError) as e:
        call(providers, account(entry, allow_private=True, ca_bundle=str(pki / "ca.pem")),
             f"{entry}/x")
    assert e.value.code == "TLS_ERROR"
    assert server.requests == [] or all(r["path"] != "/x" for r in server.requests)


# -- any URL at all: allowed (and then to exactly the allowed host:port) or refused ------------

_PIECES = st.sampled_from([
    "http://", "https://", "HTTP://", "hTtP://", "http:/", "http:\\\\", "//", "ftp://", "",
    "127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0177.0.0.1",
    "0x7f.1", "127.1", "0.0.0.0", "127.0.0.1.", "api.example.com", "169.254.169.254",
    ":", "@", "\\", "#", "?", "/", "%2F", "%40", "%00", "\t", " ", "\n", "\x00", ".", "[", "]",
    "\u3002", "\uff0e", "%", "a:b@", ";", ",", "*",
])


@st.composite
def urls(draw: st.DrawFn, ports: tuple[int, int]) -> str:
    port = st.sampled_from([f":{ports[0]}", f":{ports[1]}", ":0", ":80", ":99999", ""])
    parts = draw(st.lists(st.one_of(_PIECES, port, st.text(max_size=4)), max_size=8))
    return "".join(parts)


@settings(max_examples=1500, deadline=None)
@given(url=st.one_of(st.text(max_size=200), urls((8080, 9090))))
def test_reading_any_text_as_a_url_gives_a_target_or_a_refusal(url: str) -> None:
    """No exception but UrlRefused, and what is accepted names one canonical host and port."""
    try:
        t = parse_target(url)
    except UrlRefused as e:
        assert str(e)
        return
    assert t.scheme in ("http", "https") and 0 < t.port < 65536 and t.host == t.host.lower()
    # The prepared URL that is sent reads the same again.
    again = parse_target(t.url)
    assert (again.scheme, again.host, again.port) == (t.scheme, t.host, t.port)


@pytest.fixture(scope="module")
def fuzz_providers() -> Iterator[Providers]:
    from sqlbridge.providers import build_providers

    p = build_providers(pool_size=2)
    yield p
    p.close()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_url_is_allowed_to_exactly_the_allowed_port_or_refused(
        data: st.DataObject, fuzz_providers: Providers, allowed: Capture,
        forbidden: Capture) -> None:
    a, f = allowed.port, forbidden.port
    url = data.draw(st.one_of(urls((a, f)),
                              st.sampled_from(bypass_urls(a, f, f)),
                              st.builds(lambda h, p, s: f"{h}://127.0.0.1:{a}{p}{s}",
                                        st.sampled_from(["http", "HTTP", "Http"]),
                                        st.sampled_from(["", "/", "?", "#", "/x"]),
                                        st.text(st.characters(min_codepoint=0x21,
                                                              max_codepoint=0x7E), max_size=20)
                                        | st.text(max_size=20))))
    acct = account(allowed.url, allow_private=True)
    conns, seen = len(forbidden.connections), len(allowed.requests)
    try:
        got = call(fuzz_providers, acct, url)
    except ProviderError as e:
        event(f"refused {e.code}")
        assert e.code in ("INCORRECT_URL", "HOST_NOT_ALLOWED"), (url, e)
        assert len(allowed.requests) == seen, url
    else:
        event("allowed")
        assert got.http_status == 200
        assert len(allowed.requests) == seen + 1, url
        assert allowed.requests[-1]["headers"]["Host"] == f"127.0.0.1:{a}"
    assert len(forbidden.connections) == conns, url


# -- the worker: a refused URL fails at once, nothing retried ----------------------------------


def test_the_worker_fails_a_refused_host_once_and_enqueue_refuses_a_bad_shape(
        engine: Engine, db_url: str, allowed: Capture, forbidden: Capture) -> None:
    live = Settings(database_url=db_url, worker=FAST_WORKER,
                    accounts={"default": account(allowed.url, allow_private=True)})
    queue = Queue(engine, live)
    before = len(forbidden.connections)
    refused = queue.enqueue("http.request", {"url": f"{forbidden.url}/x", "method": "GET"}).id
    fine = queue.enqueue("http.request", {"url": f"{allowed.url}/y", "method": "GET"}).id
    with pytest.raises(ValidationError) as e:
        queue.enqueue("http.request", {"url": f"{forbidden.url}\\@{allowed.url[7:]}/"})
    assert e.value.code == "INCORRECT_URL" and "backslash" in str(e.value)
    Worker(live, engine, schedules=False).run(once=True)
    row = queue.get(refused, with_attempts=True)
    assert (row["status"], row["error_code"]) == ("failed", "HOST_NOT_ALLOWED")
    assert len(row["attempt_rows"]) == 1 and str(forbidden.port) in row["error_message"]
    assert queue.get(fine)["status"] == "succeeded"
    assert len(forbidden.connections) == before


def test_a_row_inserted_directly_with_an_ambiguous_url_fails_in_the_worker(
        engine: Engine, db_url: str, allowed: Capture, forbidden: Capture) -> None:
    """What a T-SQL caller's row meets: the worker's own validation, before the provider."""
    live = Settings(database_url=db_url, worker=FAST_WORKER,
                    accounts={"default": account(allowed.url, allow_private=True)})
    queue = Queue(engine, live)
    url = f"http://127.0.0.1:{forbidden.port}\\@127.0.0.1:{allowed.port}/"
    before = len(forbidden.connections), len(allowed.requests)
    with engine.begin() as c:
        c.execute(insert(outbox).values(operation="http.request", provider="http",
                                        params=json.dumps({"url": url, "method": "GET"})))
        row_id = c.execute(select(func.max(outbox.c.id))).scalar_one()
    Worker(live, engine, schedules=False).run(once=True)
    row = queue.get(row_id, with_attempts=True)
    assert (row["status"], row["error_code"]) == ("failed", "INCORRECT_URL")
    assert "backslash" in row["error_message"] and len(row["attempt_rows"]) == 1
    assert (len(forbidden.connections), len(allowed.requests)) == before


# -- caller headers that control framing or the connection ------------------------------------


@pytest.mark.parametrize("headers", [
    {"Transfer-Encoding": "chunked"},  # with requests' Content-Length: TE.CL request smuggling
    {"transfer-encoding": "identity"}, {"Content-Length": "0"},
    {"Connection": "close, Host"},  # a proxy that drops what Connection names drops Host
    {"Keep-Alive": "timeout=600"}, {"Upgrade": "h2c"}, {"TE": "trailers"}, {"Trailer": "X"},
    {"Proxy-Connection": "keep-alive"}, {"Proxy-Authorization": "Basic eDp5"},
    # A name that is not an RFC 9110 token: "Transfer-Encoding : chunked" is framing to some
    # servers and not to others; Python's own server stopped reading headers at "X-A :".
    {"Transfer-Encoding ": "chunked"}, {"X-A ": "x"}, {"X A": "x"}, {"X-A\t": "x"},
    {"X(A)": "x"}, {"X-\u00c4": "x"},
])
def test_a_caller_header_that_controls_framing_or_the_connection_is_refused(
        providers: Providers, headers: dict[str, str]) -> None:
    # A body "0\r\n\r\nGET /internal HTTP/1.1\r\nHost: internal.test\r\n\r\n" sent with both
    # Transfer-Encoding and Content-Length is two requests to a server that honours TE (the
    # second one on any vhost, past the Host rule), and its answer is left on the pooled
    # keep-alive connection for the next row, perhaps another account's.
    with Capture() as server:
        acct = account(server.url, allow_private=True)
        smuggled = "0\r\n\r\nGET /internal HTTP/1.1\r\nHost: internal.test\r\n\r\n"
        with pytest.raises(ProviderError) as e:
            call(providers, acct, f"{server.url}/h", method="POST", headers=headers,
                 payload=smuggled)
        assert e.value.code == "INVALID_REQUEST" and not e.value.retryable
        name = next(iter(headers))
        assert repr(name).lower() in str(e.value).lower()
        assert server.connections == []


def test_concurrent_calls_to_different_hosts_keep_their_own_pin_and_host(
        providers: Providers, test_names: dict[str, Any]) -> None:
    """Threads sharing one session and its keep-alive pools, each pinned to its own host:
    no thread's pin, Host or pooled connection serves another's request."""
    with Capture() as a, Capture() as b:
        acct = account(f"http://a.test:{a.port}", f"http://b.test:{b.port}",
                       f"http://c.test:{a.port}", allow_private=True)
        errors: list[BaseException] = []

        def run(host: str, port: int) -> None:
            try:
                for i in range(25):
                    got = call(providers, acct, f"http://{host}:{port}/{host}/{i}")
                    seen = got.response["result"]
                    assert (seen["headers"]["Host"], seen["path"]) == (f"{host}:{port}",
                                                                       f"/{host}/{i}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=args) for args in
                   [("a.test", a.port), ("b.test", b.port), ("c.test", a.port)] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert {r["headers"]["Host"] for r in a.requests} == {f"a.test:{a.port}",
                                                              f"c.test:{a.port}"}
        assert {r["headers"]["Host"] for r in b.requests} == {f"b.test:{b.port}"}
        assert len(a.requests) == 150 and len(b.requests) == 75
        # Keep-alive did its job: far fewer connections than requests.
        assert len(a.connections) + len(b.connections) < 40


def test_a_percent_encoded_proxy_password_is_scrubbed_as_the_proxy_receives_it(
        providers: Providers) -> None:
    # requests decodes the proxy URL's user and password before it builds Proxy-Authorization:
    # what travels (and is echoed back by a proxy or a server it forwards to) is "p@ss/w0rd!",
    # not the "p%40ss%2Fw0rd%21" written in the URL.
    with Capture() as proxy:
        acct = account("http://api.example.com", secret=False,
                       proxy=Secret(f"http://ops%40corp:p%40ss%2Fw0rd%21@127.0.0.1:{proxy.port}"))
        got = call(providers, acct, "http://api.example.com/echo-secrets")
        sent = proxy.requests[-1]["headers"]["Proxy-Authorization"]
    assert base64.b64decode(sent.split()[1]) == b"ops@corp:p@ss/w0rd!"
    stored = json.dumps(got.response)
    for form in ("p@ss/w0rd!", sent.split()[1], "ops@corp:p@ss/w0rd!"):
        assert form not in stored, form
    assert "***" in stored


def test_a_non_ascii_secret_echoed_in_a_body_read_as_latin_1_is_scrubbed(
        providers: Providers) -> None:
    # text/* without a charset is ISO-8859-1 to requests (and header values always are): a
    # UTF-8 password comes back as "pÃ¤ss…", which is the password to anyone who re-decodes it.
    password = "pässwörd-ünïcode"
    with Capture() as server:
        acct = Account("default", http=HttpSettings(
            allowed_hosts=(parse_entry(server.url, allow_private=True),),
            headers={"X-Password": Secret(password)}, read_timeout=10, connect_timeout=5))
        got = call(providers, acct, f"{server.url}/text-echo")
    mojibake = password.encode().decode("latin-1")
    stored = json.dumps(got.response, ensure_ascii=False)
    assert password not in stored and mojibake not in stored
    assert "***" in stored


def test_netrc_credentials_are_not_sent_by_http_request(
        providers: Providers, allowed: Capture, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # requests adds Basic auth from ~/.netrc (or $NETRC) to a request without Authorization: a
    # "default" entry would go to every allowlisted host, and is not among the account's
    # secrets, so an echo of it would be stored unmasked.
    netrc = tmp_path / "netrc"
    netrc.write_text("default login netrc-user password netrc-pw-7731\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    got = call(providers, account(allowed.url, allow_private=True, secret=False),
               f"{allowed.url}/no-netrc")
    assert got.http_status == 200
    assert "Authorization" not in allowed.requests[-1]["headers"]


@pytest.mark.parametrize("name", ["X_Api_Key", "x_api_key", "X-API_KEY"])
def test_a_caller_header_that_a_server_may_read_as_an_account_header_is_refused(
        providers: Providers, name: str) -> None:
    # CGI/WSGI servers (and nginx with underscores_in_headers) read X_Api_Key and X-Api-Key as
    # the same HTTP_X_API_KEY: the caller's value could replace the account's credential.
    with Capture() as server:
        acct = account(server.url, allow_private=True)
        with pytest.raises(ProviderError) as e:
            call(providers, acct, f"{server.url}/h", headers={name: "caller-value"})
        assert e.value.code == "INVALID_REQUEST" and name in str(e.value)
        assert server.connections == []
        # A name of its own is still the caller's to set.
        got = call(providers, acct, f"{server.url}/h", headers={"X_Trace_Id": "t-1"})
        assert got.http_status == 200 and server.requests[-1]["headers"]["X_Trace_Id"] == "t-1"


def test_a_refused_url_shown_in_the_message_is_masked_before_it_is_cut(
        providers: Providers) -> None:
    # A caller that puts the account's key in a query string of a refused URL: the message
    # shows the first 97 characters, and the key straddling the cut left its start behind.
    key = SECRET_HEADERS["X-Api-Key"].reveal()
    url = "https://api.example.com/" + "p" * (97 - 24 - 7 - len("?k=")) + f"?k={key}&x=a b"
    assert url.index(key) + 6 <= 97 < url.index(key) + len(key)
    with pytest.raises(ProviderError) as e:
        call(providers, account("https://api.example.com"), url)
    assert e.value.code == "INCORRECT_URL"
    assert key[:6] not in str(e.value)

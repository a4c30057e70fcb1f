"""What the process environment gives the vendor clients (Afilnet, AnnA), now that the shared
session has ``trust_env`` off and ``providers.environment`` reads it once per URL: the same
``HTTP(S)_PROXY`` / ``NO_PROXY`` and ``REQUESTS_CA_BUNDLE`` behaviour as requests' own, a
configured ``proxy`` still first, and netrc credentials never. Real HTTP over loopback;
``http.request``'s refusal of the environment is in test_http_security.py."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlbridge import registry
from sqlbridge.config import Account, AfilnetSettings, Secret
from sqlbridge.errors import TransientError
from sqlbridge.providers import CallResult, Providers, build_providers
from sqlbridge.providers import environment as environment_module

from .capture import Capture, make_test_pki

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                   "all_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE",
                   "CURL_CA_BUNDLE", "NETRC")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fresh() -> Iterator[Providers]:
    """Providers built after the test set its environment (the CA bundle is read at start)."""
    made: list[Providers] = []

    def build() -> Providers:
        made.append(build_providers(pool_size=2))
        return made[-1]

    yield build  # type: ignore[misc]
    for p in made:
        p.close()


def afilnet(url: str, **settings: Any) -> Account:
    return Account("default", afilnet=AfilnetSettings(
        url=url, user=Secret("env-user-5521"), password=Secret("env-pw-99310"),
        read_timeout=10, connect_timeout=5, **settings))


def send(providers: Providers, account: Account) -> CallResult:
    op, params = registry.validate("chat.sendmessage", {
        "platform": "whatsapp", "platformid": "100", "destination": "34600001000",
        "message": "hello"})
    return providers.call(op, params, account)


def test_the_shared_session_does_not_read_the_environment_per_call(fresh: Any) -> None:
    assert fresh().transport.session.trust_env is False


def test_an_environment_proxy_carries_a_vendor_call(fresh: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with Capture() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        # .invalid never resolves: only the proxy can have answered.
        got = send(fresh(), afilnet("http://afilnet.invalid/afilnet-echo"))
        assert got.http_status == 200
        assert proxy.requests[-1]["path"] == "http://afilnet.invalid/afilnet-echo"
        assert proxy.requests[-1]["headers"]["Host"] == "afilnet.invalid"


def test_no_proxy_sends_a_vendor_call_direct(fresh: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with Capture() as proxy, Capture() as vendor:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
        got = send(fresh(), afilnet(f"{vendor.url}/afilnet-echo"))
        assert got.http_status == 200 and vendor.requests[-1]["path"] == "/afilnet-echo"
        assert proxy.connections == []


def test_a_configured_proxy_wins_over_the_environment(fresh: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with Capture() as configured, Capture() as from_environment:
        monkeypatch.setenv("HTTP_PROXY", from_environment.url)
        got = send(fresh(), afilnet("http://afilnet.invalid/afilnet-echo",
                                    proxy=Secret(configured.url)))
        assert got.http_status == 200
        assert configured.requests[-1]["path"] == "http://afilnet.invalid/afilnet-echo"
        assert from_environment.connections == []


def test_netrc_credentials_never_reach_a_vendor(fresh: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # requests (trust_env on) adds Basic auth from $NETRC / ~/.netrc to any call without auth:
    # credentials the operator never gave sqlbridge, which the scrubber does not know.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pw-4417\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with Capture() as vendor:
        got = send(fresh(), afilnet(f"{vendor.url}/afilnet-echo"))
        assert got.http_status == 200
        assert "Authorization" not in vendor.requests[-1]["headers"]


def test_the_environment_is_read_once_per_url(fresh: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    real = environment_module.get_environ_proxies

    def counting(url: str, *args: Any, **kwargs: Any) -> dict[str, str]:
        asked.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(environment_module, "get_environ_proxies", counting)
    providers = fresh()
    with Capture() as one, Capture() as two:
        for _ in range(3):
            send(providers, afilnet(f"{one.url}/afilnet-echo"))
            send(providers, afilnet(f"{two.url}/afilnet-echo"))
    assert asked == [f"{one.url}/afilnet-echo", f"{two.url}/afilnet-echo"]


@pytest.fixture(scope="module")
def loopback_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), "sqlbridge environment test CA",
                         "127.0.0.1", "IP:127.0.0.1")


def test_requests_ca_bundle_from_the_environment_is_still_honoured(
        fresh: Any, loopback_pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(loopback_pki / "leaf.pem", loopback_pki / "leaf.key")
    with Capture(tls=context) as vendor:
        url = f"{vendor.url}/afilnet-echo"
        with pytest.raises(TransientError) as e:  # the private CA is unknown by default
            send(fresh(), afilnet(url))
        assert e.value.code == "TLS_ERROR"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_pki / "ca.pem"))
        assert send(fresh(), afilnet(url)).http_status == 200
        # An account's own ca_bundle, or verify_tls = false, still decides for itself.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_pki / "leaf.pem"))
        with pytest.raises(TransientError):
            send(fresh(), afilnet(url))
        got = send(fresh(), afilnet(url, ca_bundle=str(loopback_pki / "ca.pem")))
        assert got.http_status == 200

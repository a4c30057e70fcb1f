"""Provider clients against the sandbox over real HTTP: what each outcome turns into."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from sqlbridge import registry
from sqlbridge.config import Account
from sqlbridge.errors import ConfigError, ProtocolError, ProviderError, TransientError
from sqlbridge.providers import Providers, build_providers
from sqlbridge.providers.anna import token_lifetime
from sqlbridge.sandbox import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    Sandbox,
)

CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000"}


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=2) as sandbox:
        yield sandbox


def call(providers: Providers, sb: Sandbox, operation: str, params: dict, **account_kw):
    op, clean = registry.validate(operation, params)
    return providers.call(op, clean, sb.account(**account_kw))


# -- Afilnet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["post", "basic"])
def test_both_afilnet_transports_send_and_read(providers: Providers, sb: Sandbox,
                                               auth: str) -> None:
    text = "Olá & até já — 100% #1 😀"
    call(providers, sb, "chat.sendmessage", {**CHAT, "message": text}, auth=auth)
    result = call(providers, sb, "chat.getmessages", CHAT, auth=auth)
    assert result.records[-1]["message"] == text and result.records[-1]["sent"] is True
    assert sb.requests_seen[-1] == ("api/basic/" if auth == "basic" else "api/http/")


def test_credentials_never_travel_in_a_url(providers: Providers, sb: Sandbox) -> None:
    call(providers, sb, "chat.getchatchannels", {})
    call(providers, sb, "chat.getchatchannels", {}, auth="basic")
    assert all("?" not in path and SANDBOX_AFILNET_PASSWORD not in path
               for path in sb.requests_seen)


def test_every_list_shape_and_status_case_is_read() -> None:
    p = build_providers()
    try:
        for case, shape in (("upper", "object"), ("lower", "array")):
            with Sandbox(status_case=case, list_shape=shape) as sb:
                got = call(p, sb, "chat.getchatchannels", {})
                assert [r["platformid"] for r in got.records] == ["100", "200", "300"]
    finally:
        p.close()


def test_an_afilnet_error_is_permanent_and_carries_its_code(providers: Providers,
                                                            sb: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sb, "chat.getmessages", {**CHAT, "destination": "nobody"})
    assert e.value.code == "CHAT_NOT_FOUND" and not e.value.retryable
    assert str(e.value) == "chat.getmessages: CHAT_NOT_FOUND (the chat does not exist)"


def test_a_wrong_password_fails_without_showing_it(providers: Providers, sb: Sandbox) -> None:
    op, params = registry.validate("chat.getchatchannels", {})
    account = sb.account()
    bad = dataclasses.replace(account, afilnet=dataclasses.replace(
        account.afilnet, password=type(account.afilnet.password)("not-the-password")))
    with pytest.raises(ProviderError) as e:
        providers.call(op, params, bad)
    assert e.value.code == "INCORRECT_USER_PASSWORD"
    assert "not-the-password" not in str(e.value) + str(e.value.response)


def test_a_missing_credential_names_the_setting(providers: Providers) -> None:
    op, params = registry.validate("chat.getchatchannels", {})
    with pytest.raises(ConfigError,
                       match="accounts.default.afilnet.user or SQLBRIDGE_AFILNET_USER"):
        providers.call(op, params, Account("default"))


@pytest.mark.parametrize(("kind", "error", "code"), [
    ("html", ProtocolError, "PROTOCOL_ERROR"),
    ("empty", ProtocolError, "PROTOCOL_ERROR"),
    ("badjson", ProtocolError, "PROTOCOL_ERROR"),
    ("503", TransientError, "HTTP_503"),
    ("502", TransientError, "HTTP_502"),
])
def test_malformed_and_failed_answers_get_a_defined_outcome(providers: Providers, sb: Sandbox,
                                                            kind, error, code) -> None:
    sb.fail_next(1, kind)
    with pytest.raises(error) as e:
        call(providers, sb, "chat.getchatchannels", {})
    assert e.value.code == code


def test_429_carries_retry_after(providers: Providers, sb: Sandbox) -> None:
    sb.fail_next(1, "429")
    with pytest.raises(TransientError) as e:
        call(providers, sb, "chat.getchatchannels", {})
    assert (e.value.http_status, e.value.retry_after) == (429, 1.0)


def test_a_timeout_may_have_delivered_a_refused_connection_did_not(providers: Providers,
                                                                   sb: Sandbox) -> None:
    account = sb.account()
    quick = dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet,
                                                                     read_timeout=0.3))
    sb.faults.timeout_seconds = 1
    sb.fail_next(1, "timeout")
    op, params = registry.validate("chat.sendmessage", {**CHAT, "message": "x"})
    with pytest.raises(TransientError) as slow:
        providers.call(op, params, quick)
    assert slow.value.delivered and slow.value.code == "READ_TIMEOUT"
    closed = dataclasses.replace(account, afilnet=dataclasses.replace(
        account.afilnet, url="http://127.0.0.1:9/api/http/"))
    with pytest.raises(TransientError) as refused:
        providers.call(op, params, closed)
    assert not refused.value.delivered and refused.value.code == "CONNECTION_FAILED"


def test_a_dropped_connection_may_have_delivered(providers: Providers, sb: Sandbox) -> None:
    sb.fail_next(1, "drop")
    with pytest.raises(TransientError) as e:
        call(providers, sb, "chat.sendmessage", {**CHAT, "message": "x"})
    assert e.value.delivered


def test_the_passthrough_reaches_any_class_method(providers: Providers, sb: Sandbox) -> None:
    got = call(providers, sb, "user.getbalance", {})
    assert got.response["result"] == {"balance": "100.00", "currency": "EUR"}


# -- AnnA ------------------------------------------------------------------------------------


def test_anna_reuses_its_token_and_renews_it_once_on_401(providers: Providers,
                                                        sb: Sandbox) -> None:
    for _ in range(3):
        call(providers, sb, "messenger.structure", {})
    assert sb.requests_seen.count("anna/REST/Credentials/GetToken") == 1
    sb.state.revoke_tokens()
    call(providers, sb, "messenger.structure", {})
    assert sb.requests_seen.count("anna/REST/Credentials/GetToken") == 2


def test_an_expired_token_is_replaced() -> None:
    p = build_providers()
    try:
        with Sandbox(token_ttl=1, expires_in_format="datetime") as sb:
            call(p, sb, "messenger.structure", {})
            time.sleep(1.1)
            assert call(p, sb, "messenger.structure", {}).http_status == 200
            assert sb.requests_seen.count("anna/REST/Credentials/GetToken") == 2
    finally:
        p.close()


def test_token_lifetime_reads_every_form_it_may_take() -> None:
    assert token_lifetime("3600", 5) == 3600 and token_lifetime(120, 5) == 120
    assert token_lifetime("garbage", 5) == 5 and token_lifetime(None, 7) == 7
    assert 3590 < token_lifetime(time.strftime("%Y%m%d%H%M%S",
                                               time.gmtime(time.time() + 3600)), 5) <= 3600


def test_anna_records_for_every_endpoint_with_data(providers: Providers, sb: Sandbox) -> None:
    h = call(providers, sb, "user.userhash", {"userId": "1001"}).records[0]
    assert h["user_id"] == "1001" and h["expires_at"].year >= 2026
    reqs = call(providers, sb, "messenger.requests", {"userId": "1001", "status": "A"}).records
    assert {r["protocol"] for r in reqs} == {"P000001", "P000002", "P000004"}
    count = call(providers, sb, "messenger.alertcounter",
                 {"userDocType": "CPF", "userDocValue": "12345678900", "status": "A"}).records
    assert count == [{"user_key": "CPF:12345678900", "filters": '{"status": "A"}',
                      "alert_counter": 2}]
    link = call(providers, sb, "messenger.link", {"userId": "1001"})
    assert link.response["messengerLink"].startswith(sb.url)
    assert call(providers, sb, "user.inactivate", {"userId": "1002"}).http_status == 200


def test_anna_refusals_keep_the_vendor_message_without_the_company_hash(
        providers: Providers, sb: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sb, "user.userhash", {"userId": "1003"})
    assert e.value.code == "USER_INACTIVE"
    assert str(e.value) == "user.userhash: Usuário ***@1003 está inativo."
    structure = call(providers, sb, "messenger.structure", {})
    assert SANDBOX_ANNA_COMPANY_HASH not in str(structure.response)
    assert SANDBOX_AFILNET_USER not in str(structure.response)


# -- http.request ----------------------------------------------------------------------------


def test_http_request_answers_like_sp_invoke_external_rest_endpoint(providers: Providers,
                                                                    sb: Sandbox) -> None:
    got = call(providers, sb, "http.request", {"url": sb.echo_url + "/orders?x=1",
                                               "method": "PUT", "headers": {"X-Tenant": "7"},
                                               "payload": {"order": "ção"}})
    assert got.response["response"]["status"]["http"] == {"code": 200, "description": "OK"}
    echoed = got.response["result"]
    assert (echoed["method"], echoed["json"], echoed["headers"]["X-Tenant"]) == (
        "PUT", {"order": "ção"}, "7")


def test_http_request_refuses_hosts_outside_the_allowlist(providers: Providers,
                                                          sb: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sb, "http.request", {"url": "http://localhost:1/x"})
    assert e.value.code == "HOST_NOT_ALLOWED" and "allowed_hosts" in str(e.value)


def test_http_request_4xx_is_permanent_and_5xx_transient(providers: Providers,
                                                         sb: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sb, "http.request", {"url": sb.url + "status/404", "method": "GET"})
    assert e.value.code == "HTTP_404" and not isinstance(e.value, ProtocolError)
    with pytest.raises(TransientError):
        call(providers, sb, "http.request", {"url": sb.url + "status/503", "method": "GET"})


def test_the_account_rate_limit_spaces_calls_across_threads(sb: Sandbox) -> None:
    import threading

    account = sb.account()
    limited = dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet,
                                                                       rate_limit=20))
    op, params = registry.validate("chat.getchatchannels", {})
    p = build_providers(pool_size=8)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(p.call(op, params, limited))
        except Exception as exc:  # noqa: BLE001 - collected, asserted on below
            results.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    p.close()
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 11 and not failures, failures
    assert elapsed >= 0.5  # 11 calls at 20/s: the last starts 0.5 s after the first

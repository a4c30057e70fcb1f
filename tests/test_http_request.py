"""``http.request`` against the sandbox's echo and status endpoints over real HTTP: the
sp_invoke_external_rest_endpoint-shaped answer, the host allowlist, secret headers, and what
each status and network failure turns into."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from sqlbridge import registry
from sqlbridge.config import Account, Secret
from sqlbridge.errors import ProtocolError, ProviderError, TransientError
from sqlbridge.providers import CallResult, Providers
from sqlbridge.sandbox import Sandbox

API_KEY = "k-secret-123456"


def call(providers: Providers, account: Account, params: dict[str, Any]) -> CallResult:
    op, clean = registry.validate("http.request", params)
    return providers.call(op, clean, account)


def http(account: Account, **changes: Any) -> Account:
    return dataclasses.replace(account, http=dataclasses.replace(account.http, **changes))


def test_the_answer_is_shaped_like_sp_invoke_external_rest_endpoint(providers: Providers,
                                                                     sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), {
        "url": sandbox.echo_url + "/orders?x=1", "method": "put",
        "headers": {"X-Tenant": "7"}, "payload": {"order": "ção 😀"}})
    assert got.http_status == 200
    assert got.response["response"]["status"] == {"http": {"code": 200, "description": "OK"}}
    assert got.response["response"]["headers"]["Content-Type"].startswith("application/json")
    echoed = got.response["result"]
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("PUT", "/echo/orders", "x=1")
    assert echoed["json"] == {"order": "ção 😀"} and echoed["headers"]["X-Tenant"] == "7"
    assert echoed["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert echoed["headers"]["User-Agent"].startswith("sqlbridge/")
    assert got.records == []


def test_post_is_the_default_and_text_payloads_go_as_written(providers: Providers,
                                                             sandbox: Sandbox) -> None:
    text = call(providers, sandbox.account(), {"url": sandbox.echo_url, "payload": "a=1&b=ç"})
    assert text.response["result"]["method"] == "POST"
    assert text.response["result"]["body"] == "a=1&b=ç"
    assert text.response["result"]["headers"]["Content-Type"].startswith("text/plain")
    as_json = call(providers, sandbox.account(), {"url": sandbox.echo_url,
                                                  "payload": '{"n": 1}'})
    assert as_json.response["result"]["json"] == {"n": 1}
    assert as_json.response["result"]["headers"]["Content-Type"].startswith("application/json")
    own = call(providers, sandbox.account(), {"url": sandbox.echo_url, "payload": "<x/>",
                                              "headers": {"content-type": "application/xml"}})
    sent = {k.lower(): v for k, v in own.response["result"]["headers"].items()}
    assert sent["content-type"] == "application/xml"  # the caller's, and only one


def test_a_body_that_is_not_json_comes_back_as_text(providers: Providers,
                                                    sandbox: Sandbox) -> None:
    sandbox.fail_next(1, "html")
    got = call(providers, sandbox.account(), {"url": sandbox.echo_url, "method": "GET"})
    assert got.response["result"].startswith("<html>")
    sandbox.fail_next(1, "empty")
    got = call(providers, sandbox.account(), {"url": sandbox.echo_url, "method": "GET"})
    assert got.response["result"] is None


def test_account_headers_are_added_win_and_never_come_back(providers: Providers,
                                                           sandbox: Sandbox) -> None:
    account = http(sandbox.account(), headers={"X-Api-Key": Secret(API_KEY),
                                               "Authorization": Secret("Bearer tok-98765")})
    got = call(providers, account, {"url": sandbox.echo_url, "method": "GET",
                                    "headers": {"authorization": "Bearer caller"}})
    echoed = got.response["result"]
    assert echoed["headers"]["X-Api-Key"] == "***"
    assert echoed["headers"]["Authorization"] == "***"
    assert API_KEY not in str(got.response) and "tok-98765" not in str(got.response)
    # The caller's header did not replace the account's: the echo saw only one, the secret.
    assert "caller" not in str(got.response)


@pytest.mark.parametrize("url", ["http://localhost:1/x", "https://example.com/",
                                 "http://127.0.0.2/x", "http://127.0.0.1.evil.test/"])
def test_hosts_outside_the_allowlist_are_refused_before_sending(
        providers: Providers, sandbox: Sandbox, url: str) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), {"url": url})
    assert e.value.code == "HOST_NOT_ALLOWED" and not e.value.retryable
    assert "accounts.default.http.allowed_hosts" in str(e.value)
    host = url.split("/")[2].split(":")[0]
    assert f"'{host}'" in str(e.value)
    assert sandbox.requests_seen == []


def test_an_empty_allowlist_allows_nothing(providers: Providers, sandbox: Sandbox) -> None:
    with pytest.raises(ProviderError, match=r"allowed now: none"):
        call(providers, http(sandbox.account(), allowed_hosts=()), {"url": sandbox.echo_url})


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_client_errors_are_permanent_with_the_shaped_answer(providers: Providers,
                                                            sandbox: Sandbox,
                                                            status: int) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), {"url": f"{sandbox.url}status/{status}",
                                            "method": "GET"})
    assert type(e.value) is ProviderError and e.value.code == f"HTTP_{status}"
    assert not e.value.retryable and e.value.http_status == status
    assert e.value.response["response"]["status"]["http"]["code"] == status
    assert e.value.response["result"] == {"status": status}


def test_a_redirect_is_not_followed(providers: Providers, sandbox: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), {"url": f"{sandbox.url}status/302", "method": "GET"})
    assert e.value.code == "HTTP_302" and "not followed" in str(e.value)


@pytest.mark.parametrize(("status", "retry_after"), [(429, 1.0), (503, 1.0), (500, None),
                                                     (502, None), (504, None)])
def test_throttling_and_server_errors_are_transient(providers: Providers, sandbox: Sandbox,
                                                    status: int,
                                                    retry_after: float | None) -> None:
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), {"url": f"{sandbox.url}status/{status}",
                                            "method": "GET"})
    assert (e.value.code, e.value.http_status) == (f"HTTP_{status}", status)
    assert e.value.retry_after == retry_after
    assert e.value.response["response"]["status"]["http"]["code"] == status


def test_the_timeout_parameter_bounds_the_wait(providers: Providers, sandbox: Sandbox) -> None:
    sandbox.faults.timeout_seconds = 2
    sandbox.fail_next(1, "timeout")
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), {"url": sandbox.echo_url, "timeout": 1})
    assert e.value.delivered and e.value.code == "READ_TIMEOUT" and "1s" in str(e.value)


def test_a_drop_may_have_delivered_a_refusal_did_not(providers: Providers,
                                                     sandbox: Sandbox) -> None:
    sandbox.fail_next(1, "drop")
    with pytest.raises(TransientError) as dropped:
        call(providers, sandbox.account(), {"url": sandbox.echo_url})
    assert dropped.value.delivered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = http(sandbox.account(), allowed_hosts=(f"http://127.0.0.1:{port}",),
                  allow_private=True)
    with pytest.raises(TransientError) as refused:
        call(providers, closed, {"url": f"http://127.0.0.1:{port}/x"})
    assert not refused.value.delivered and refused.value.code == "CONNECTION_FAILED"


def test_a_header_that_cannot_be_sent_is_a_permanent_error(providers: Providers,
                                                           sandbox: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), {"url": sandbox.echo_url,
                                            "headers": {"X-Bad": "line\r\nInjected: 1"}})
    assert e.value.code == "INVALID_REQUEST" and not isinstance(e.value, ProtocolError)
    assert sandbox.requests_seen == []

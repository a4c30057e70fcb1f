"""The AnnA client against the sandbox over real HTTP: every endpoint, its refusals, the token
cache (reuse, expiry, one renewal on 401) and the company hash kept out of everything."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from sqlbridge import registry
from sqlbridge.config import Account, Secret
from sqlbridge.errors import ConfigError, ProtocolError, ProviderError, TransientError
from sqlbridge.providers import CallResult, Providers
from sqlbridge.providers.anna import (
    FILTER_KEYS,
    body_for,
    field,
    refusal_code,
    renew_after,
    token_lifetime,
)
from sqlbridge.sandbox import (
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
    SANDBOX_ANNA_USER,
    Sandbox,
)

TOKEN = "anna/REST/Credentials/GetToken"
SECRETS = (SANDBOX_ANNA_COMPANY_HASH, SANDBOX_ANNA_PASSWORD, SANDBOX_ANNA_USER)


def call(providers: Providers, account: Account, operation: str,
         params: dict[str, Any]) -> CallResult:
    op, clean = registry.validate(operation, params)
    return providers.call(op, clean, account)


def anna(account: Account, **changes: Any) -> Account:
    return dataclasses.replace(account, anna=dataclasses.replace(account.anna, **changes))


def no_secret_in(*values: object) -> bool:
    text = " ".join(str(v) for v in values)
    return not any(s in text for s in SECRETS)


# -- every endpoint --------------------------------------------------------------------------


def test_userhash_records_the_access_data(providers: Providers, sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), "user.userhash",
               {"userId": "1001", "startService": "menu"})
    (row,) = got.records
    assert row["user_id"] == "1001" and row["hash"] and row["hash"] in row["chat_url"]
    assert row["embedded_url"].startswith(sandbox.url)
    # YYYYMMDDhhmmss, UTC, naive: about an hour ahead in the sandbox.
    assert row["expires_at"].tzinfo is None
    ahead = row["expires_at"] - datetime.utcnow()  # noqa: DTZ003 - naive UTC on purpose
    assert timedelta(minutes=58) < ahead <= timedelta(hours=1)
    assert got.response["success"] is True and no_secret_in(got.response, got.records)


def test_userhashforced_creates_the_user_and_inactivate_ends_it(providers: Providers,
                                                                 sandbox: Sandbox) -> None:
    account = sandbox.account()
    got = call(providers, account, "user.userhashforced",
               {"userId": "2001", "userName": "Dora Nunes"})
    assert got.records[0]["user_id"] == "2001"
    assert sandbox.state.anna_user("2001")["name"] == "Dora Nunes"
    done = call(providers, account, "user.inactivate", {"userId": "2001"})
    assert done.records == [] and "***@2001" in done.response["message"]
    with pytest.raises(ProviderError) as e:
        call(providers, account, "user.userhash", {"userId": "2001"})
    assert e.value.code == "USER_INACTIVE"


def test_structure_lists_departments_then_their_channels(providers: Providers,
                                                         sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), "messenger.structure", {})
    assert got.records == [
        {"kind": "department", "alias": "SUP", "name": "Suporte"},
        {"kind": "channel", "department_alias": "SUP", "alias": "TEC", "name": "Técnico"},
        {"kind": "channel", "department_alias": "SUP", "alias": "FIN", "name": "Financeiro"},
        {"kind": "department", "alias": "VEN", "name": "Vendas"},
        {"kind": "channel", "department_alias": "VEN", "alias": "NOV",
         "name": "Novos clientes"},
        {"kind": "channel", "department_alias": "VEN", "alias": "REN", "name": "Renovações"}]
    # The vendor echoes the company hash; it is a secret here.
    assert got.response["structure"]["CompaniesHash"] == "***"
    assert no_secret_in(got.response)


def test_requests_by_user_id_with_filters(providers: Providers, sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), "messenger.requests",
               {"userId": "1001", "status": "A", "dataIni": "01/01/2024",
                "dataFim": "31/10/2024"})
    assert [(r["protocol"], r["pending"]) for r in got.records] == [
        ("P000001", True), ("P000002", False)]
    first = got.records[0]
    assert first == {"user_key": "1001", "protocol": "P000001", "department": "Suporte",
                     "channel": "Técnico", "description": "Não consigo acessar",
                     "opened": "10/03/2024 14:05", "status": "A", "pending": True,
                     "link": f"{sandbox.url}messenger/?p=P000001"}


def test_alertcounter_by_document_keys_its_filters(providers: Providers,
                                                   sandbox: Sandbox) -> None:
    account = sandbox.account()
    got = call(providers, account, "messenger.alertcounter",
               {"userDocType": "CPF", "userDocValue": "12345678900",
                "departmentAlias": "SUP", "status": "A"})
    assert got.records == [{"user_key": "CPF:12345678900",
                            "filters": '{"departmentAlias": "SUP", "status": "A"}',
                            "alert_counter": 2}]
    unfiltered = call(providers, account, "messenger.alertcounter", {"userId": "1001"})
    assert unfiltered.records[0]["filters"] == "{}"


def test_link_answers_without_records(providers: Providers, sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), "messenger.link",
               {"userDocType": "CPF", "userDocValue": "12345678900"})
    assert got.records == [] and got.response["messengerLink"].endswith("?u=1001")


def test_the_body_has_every_identity_and_filter_key_as_the_vendor_example() -> None:
    op, params = registry.validate("messenger.requests", {"userId": "9", "status": "E"})
    body = body_for(op, params, "COMPANY")
    assert body == {"hash": "COMPANY", "userId": "9", "userDocType": "", "userDocValue": "",
                    "messengerFilters": {"departmentAlias": "", "channelAlias": "",
                                         "dataIni": "", "dataFim": "", "status": "E",
                                         "pendentes": ""}}
    assert tuple(body["messengerFilters"]) == FILTER_KEYS
    link, link_params = registry.validate("messenger.link", {"userId": "9"})
    assert body_for(link, link_params, "C") == {"hash": "C", "userId": "9", "userDocType": "",
                                                "userDocValue": ""}
    forced, forced_params = registry.validate("user.userhashforced",
                                              {"userId": "9", "userName": "N"})
    assert body_for(forced, forced_params, "C") == {"hash": "C", "userId": "9", "userName": "N"}


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "params", "code"), [
    ("user.userhash", {"userId": "1003"}, "USER_INACTIVE"),
    ("user.userhash", {"userId": "9999"}, "USER_NOT_FOUND"),
    ("messenger.requests", {"userId": "9999"}, "USER_NOT_FOUND"),
])
def test_refusals_are_permanent_with_the_scrubbed_vendor_message(
        providers: Providers, sandbox: Sandbox, operation: str, params: dict,
        code: str) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), operation, params)
    assert e.value.code == code and not e.value.retryable
    assert str(e.value).startswith(f"{operation}: Usuário")
    assert e.value.response["success"] is False
    assert no_secret_in(e.value, e.value.response)


def test_the_inactive_message_reads_as_the_vendor_wrote_it(providers: Providers,
                                                           sandbox: Sandbox) -> None:
    with pytest.raises(ProviderError) as e:
        call(providers, sandbox.account(), "user.userhash", {"userId": "1003"})
    assert str(e.value) == "user.userhash: Usuário ***@1003 está inativo."


def test_a_filter_the_vendor_refuses_gets_its_own_code(providers: Providers,
                                                       sandbox: Sandbox) -> None:
    # Straight to the client, past our own validation, so the vendor is the one saying no.
    op = registry.resolve("messenger.requests")
    params = {"userId": "1001", "messengerFilters": {"dataIni": "2024-01-01"}}
    with pytest.raises(ProviderError) as e:
        providers.call(op, params, sandbox.account())
    assert e.value.code == "ANNA_INVALID_PARAM" and "dataIni" in str(e.value)


def test_refusal_codes_follow_the_message() -> None:
    assert refusal_code("Usuário X@1 está inativo.") == "USER_INACTIVE"
    assert refusal_code("Usuário X@1 não encontrado.") == "USER_NOT_FOUND"
    assert refusal_code("Empresa não encontrada") == "COMPANY_NOT_FOUND"
    assert refusal_code("Informe userId.") == "ANNA_MISSING_PARAM"
    assert refusal_code("algo deu errado") == "ANNA_ERROR"


def test_wrong_credentials_fail_without_showing_them(providers: Providers,
                                                     sandbox: Sandbox) -> None:
    bad = anna(sandbox.account(), password=Secret("wrong-anna-pass"))
    with pytest.raises(ProviderError) as e:
        call(providers, bad, "messenger.structure", {})
    assert e.value.code == "ANNA_AUTH_FAILED" and not e.value.retryable
    assert "Credenciais inválidas" in str(e.value)
    assert "wrong-anna-pass" not in str(e.value) and no_secret_in(e.value)


@pytest.mark.parametrize("setting", ["url", "company_hash", "user", "password"])
def test_a_missing_setting_is_named(providers: Providers, sandbox: Sandbox,
                                    setting: str) -> None:
    with pytest.raises(ConfigError) as e:
        call(providers, anna(sandbox.account(), **{setting: None}), "messenger.structure", {})
    assert f"accounts.default.anna.{setting}" in str(e.value)
    assert f"SQLBRIDGE_ANNA_{setting.upper()}" in str(e.value)


# -- the token -------------------------------------------------------------------------------


def test_the_token_is_reused_and_renewed_once_on_401(providers: Providers,
                                                     sandbox: Sandbox) -> None:
    account = sandbox.account()
    for _ in range(3):
        call(providers, account, "messenger.structure", {})
    assert sandbox.requests_seen.count(TOKEN) == 1
    sandbox.state.revoke_tokens()
    assert call(providers, account, "messenger.structure", {}).http_status == 200
    assert sandbox.requests_seen.count(TOKEN) == 2
    # The refused call, a new token, the same call again: three requests for one call.
    assert sandbox.requests_seen[-3:] == ["anna/REST/AnnACorporate/Messenger/Structure", TOKEN,
                                          "anna/REST/AnnACorporate/Messenger/Structure"]


def test_an_expired_token_is_replaced_before_it_is_refused(providers: Providers) -> None:
    with Sandbox(token_ttl=1, expires_in_format="datetime") as sb:
        call(providers, sb.account(), "messenger.structure", {})
        time.sleep(1.05)
        assert call(providers, sb.account(), "messenger.structure", {}).http_status == 200
        assert sb.requests_seen.count(TOKEN) == 2
        # Renewed ahead of expiry, so the vendor never had to answer 401.
        assert len(sb.requests_seen) == 4


def test_a_missing_expiry_uses_the_account_lifetime(providers: Providers) -> None:
    with Sandbox(expires_in_format="none") as sb:
        for _ in range(2):
            call(providers, sb.account(), "messenger.structure", {})
        assert sb.requests_seen.count(TOKEN) == 1


def test_threads_share_one_token_fetch(providers: Providers, sandbox: Sandbox) -> None:
    account = sandbox.account()
    op, params = registry.validate("messenger.structure", {})
    errors: list[BaseException] = []

    def one() -> None:
        try:
            providers.call(op, params, account)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sandbox.requests_seen.count(TOKEN) == 1


def test_accounts_with_other_credentials_get_their_own_token(providers: Providers,
                                                             sandbox: Sandbox) -> None:
    call(providers, sandbox.account(), "messenger.structure", {})
    bad = anna(sandbox.account(), password=Secret("another-pass"))
    with pytest.raises(ProviderError):  # not served from the good account's cache
        call(providers, bad, "messenger.structure", {})


def test_token_lifetime_reads_every_form_it_may_take() -> None:
    assert token_lifetime("3600", 5) == 3600 and token_lifetime(120, 5) == 120
    assert token_lifetime(" 90 ", 5) == 90
    assert token_lifetime("garbage", 5) == 5 and token_lifetime(None, 7) == 7
    assert token_lifetime(True, 7) == 7 and token_lifetime(-3, 7) == 7
    soon = time.time() + 3600
    compact = time.strftime("%Y%m%d%H%M%S", time.gmtime(soon))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon))
    assert 3590 < token_lifetime(compact, 5) <= 3600
    assert 3590 < token_lifetime(iso, 5) <= 3600
    assert 3590 < token_lifetime(int(soon), 5) <= 3600  # a Unix time
    assert token_lifetime("20000101000000", 9) == 9  # already past: fall back
    assert renew_after(3600) == 3570 and renew_after(10) == 8


def test_vendor_keys_are_read_in_any_case() -> None:
    assert field({"token": "a"}, "Token") == "a" and field({"ACCESSDATA": 1}, "accessData") == 1
    assert field(None, "x") is None


# -- broken answers and the network ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "empty", "badjson"])
@pytest.mark.parametrize("where", ["GetToken", "Structure"])
def test_malformed_answers_are_protocol_errors(providers: Providers, sandbox: Sandbox,
                                               kind: str, where: str) -> None:
    sandbox.fail_next(1, kind, path_contains=where)
    if where == "GetToken":
        # A garbled token answer comes before the call itself: it was not sent, so even a
        # send may be retried.
        with pytest.raises(TransientError) as t:
            call(providers, sandbox.account(), "messenger.structure", {})
        assert t.value.code == "PROTOCOL_ERROR" and not t.value.delivered
        assert len(str(t.value)) < 400
        return
    with pytest.raises(ProtocolError) as e:
        call(providers, sandbox.account(), "messenger.structure", {})
    assert e.value.retryable and e.value.http_status == 200 and len(str(e.value)) < 400


@pytest.mark.parametrize(("kind", "retry_after"), [("429", 1.0), ("503", 1.0), ("500", None)])
def test_throttling_and_server_errors_are_transient(providers: Providers, sandbox: Sandbox,
                                                    kind: str,
                                                    retry_after: float | None) -> None:
    sandbox.fail_next(1, kind, path_contains="Requests")
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), "messenger.requests", {"userId": "1001"})
    assert e.value.http_status == int(kind) and e.value.retry_after == retry_after


def test_timeouts_and_drops_may_have_delivered(providers: Providers, sandbox: Sandbox) -> None:
    sandbox.faults.timeout_seconds = 1
    quick = anna(sandbox.account(), read_timeout=0.3)
    call(providers, quick, "messenger.structure", {})  # token first, so the fault hits the call
    sandbox.fail_next(1, "timeout", path_contains="Inactivate")
    with pytest.raises(TransientError) as e:
        call(providers, quick, "user.inactivate", {"userId": "1002"})
    assert e.value.delivered and e.value.code == "READ_TIMEOUT"
    sandbox.fail_next(1, "drop", path_contains="Inactivate")
    with pytest.raises(TransientError) as e:
        call(providers, quick, "user.inactivate", {"userId": "1002"})
    assert e.value.delivered


def test_a_refused_connection_did_not_deliver(providers: Providers, sandbox: Sandbox) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = anna(sandbox.account(), url=f"http://127.0.0.1:{port}/anna/")
    with pytest.raises(TransientError) as e:
        call(providers, closed, "user.inactivate", {"userId": "1002"})
    assert not e.value.delivered and e.value.code == "CONNECTION_FAILED"

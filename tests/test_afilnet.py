"""The Afilnet client against the sandbox over real HTTP on 127.0.0.1: every operation, every
error path, both transports, and what each kind of broken answer turns into."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any

import pytest

from sqlbridge import registry
from sqlbridge.config import Account, Secret
from sqlbridge.errors import ConfigError, ProtocolError, ProviderError, TransientError
from sqlbridge.providers import CallResult, Providers
from sqlbridge.providers.afilnet import ERRORS, describe, records, result_list
from sqlbridge.sandbox import SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER, Sandbox

CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000"}
SECRETS = (SANDBOX_AFILNET_PASSWORD, SANDBOX_AFILNET_USER)


def call(providers: Providers, account: Account, operation: str,
         params: dict[str, Any]) -> CallResult:
    op, clean = registry.validate(operation, params)
    return providers.call(op, clean, account)


def raw_call(providers: Providers, account: Account, operation: str,
             params: dict[str, Any]) -> CallResult:
    """Skip our own validation, to make the vendor itself refuse bad input (even a method the
    registry refuses, such as chat.nosuchmethod, reaches the vendor as a passthrough)."""
    op = registry.OPERATIONS.get(operation) or registry.passthrough(operation)
    return providers.call(op, params, account)


def afilnet(account: Account, **changes: Any) -> Account:
    return dataclasses.replace(account, afilnet=dataclasses.replace(account.afilnet, **changes))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_secret_in(*values: object) -> bool:
    text = " ".join(str(v) for v in values)
    return not any(s in text for s in SECRETS)


# -- every operation -------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["post", "basic"])
def test_every_operation_succeeds_on_both_transports(providers: Providers, sandbox: Sandbox,
                                                     auth: str) -> None:
    account = sandbox.account(auth=auth)
    channels = call(providers, account, "chat.getchatchannels", {})
    assert channels.records == [
        {"platform": "whatsapp", "platformid": "100", "name": "Sandbox WhatsApp"},
        {"platform": "telegram", "platformid": "200", "name": "Sandbox Telegram"},
        {"platform": "webchat", "platformid": "300", "name": "Sandbox Webchat"}]

    sent = call(providers, account, "chat.sendmessage", {**CHAT, "message": "olá"})
    assert sent.http_status == 200 and sent.records == []
    call(providers, account, "chat.sendfile", {**CHAT, "type": "imagem",
                                               "fileurl": "https://example.com/a.jpg",
                                               "thumburl": "https://example.com/t.jpg"})
    stored = sandbox.state.messages(**CHAT)
    assert [m["message"] for m in stored[-2:]] == ["olá", "https://example.com/a.jpg"]

    chats = call(providers, account, "chat.getchats", {"platform": "whatsapp",
                                                       "platformid": "100"}).records
    mine = next(c for c in chats if c["destination"] == CHAT["destination"])
    assert mine["last_messageid"] == stored[-1]["messageid"] and mine["last_sent"] is True
    assert set(mine) == {"platform", "platformid", "destination", "last_messageid",
                         "last_message", "last_sent", "last_status", "last_datetime"}

    unread = call(providers, account, "chat.getunreadmessages", CHAT).records
    assert [(m["message"], m["sent"]) for m in unread] == [("Resposta 0 ✓", False)]
    messages = call(providers, account, "chat.getmessages", CHAT).records
    assert [m["sent"] for m in messages] == [True, False, True, True]
    assert set(messages[0]) == {"platform", "platformid", "messageid", "destination",
                                "message", "sent", "status", "datetime"}
    assert call(providers, account, "chat.getunreadmessages", CHAT).records == []
    assert no_secret_in(channels.response, sent.response, chats, messages)


def test_the_passthrough_reaches_any_class_method(providers: Providers,
                                                  sandbox: Sandbox) -> None:
    got = call(providers, sandbox.account(), "user.getbalance", {})
    assert got.response["result"] == {"balance": "100.00", "currency": "EUR"}
    assert got.response["status"] == "SUCCESS"


@pytest.mark.parametrize(("case", "shape"), [("upper", "object"), ("lower", "array"),
                                             ("lower", "object"), ("upper", "array")])
def test_status_in_either_case_and_both_list_shapes_are_read(providers: Providers, case: str,
                                                             shape: str) -> None:
    with Sandbox(status_case=case, list_shape=shape) as sb:
        got = call(providers, sb.account(), "chat.getchatchannels", {})
        assert [r["platformid"] for r in got.records] == ["100", "200", "300"]
        with pytest.raises(ProviderError) as e:
            call(providers, sb.account(), "chat.getchats", {"platform": "whatsapp",
                                                            "platformid": "999"})
        assert e.value.code == "CHANNEL_NOT_FOUND"


def test_unicode_and_a_10000_character_message_round_trip(providers: Providers,
                                                          sandbox: Sandbox) -> None:
    text = ("Olá & até já — 100% #1 + ção 😀 日本語 ?a=b\n" * 250)[:10_000]
    assert len(text) == 10_000
    call(providers, sandbox.account(), "chat.sendmessage", {**CHAT, "message": text})
    assert sandbox.state.messages(**CHAT)[-1]["message"] == text
    fetched = call(providers, sandbox.account(), "chat.getmessages", CHAT).records
    assert fetched[-1]["message"] == text


# -- where the credentials travel ------------------------------------------------------------


def test_post_carries_credentials_in_the_body_and_basic_only_in_the_header(
        providers: Providers, sandbox: Sandbox) -> None:
    post, basic = sandbox.account(auth="post"), sandbox.account(auth="basic")
    # Each transport pointed at the other's endpoint: the sandbox's form endpoint reads the
    # body (and query string), its Basic endpoint only the header, so each finds no user.
    for account, url in ((basic, sandbox.afilnet_post_url), (post, sandbox.afilnet_basic_url)):
        with pytest.raises(ProviderError) as e:
            call(providers, afilnet(account, url=url), "chat.getchatchannels", {})
        assert e.value.code == "MISSING_USER"

    # The echo endpoint shows exactly what arrived (scrubbed on the way back).
    with pytest.raises(ProtocolError) as e:
        call(providers, afilnet(post, url=sandbox.echo_url), "chat.getchatchannels", {})
    echoed = e.value.response
    assert echoed["method"] == "POST" and echoed["query"] == ""
    assert "user=***" in echoed["body"] and "password=***" in echoed["body"]
    assert "Authorization" not in echoed["headers"]
    with pytest.raises(ProtocolError) as e:
        call(providers, afilnet(basic, url=sandbox.echo_url), "chat.getchatchannels", {})
    echoed = e.value.response
    assert echoed["method"] == "POST" and echoed["query"] == ""
    assert echoed["body"] == "class=chat&method=getchatchannels"
    assert echoed["headers"]["Authorization"] == "***"
    assert all("?" not in path for path in sandbox.requests_seen)
    assert no_secret_in(echoed)


def test_form_values_are_encoded_not_pasted(providers: Providers, sandbox: Sandbox) -> None:
    # The seed's URL concatenation broke on these; a form encodes them.
    text = "a&b=c?d#e%20f+g"
    call(providers, sandbox.account(), "chat.sendmessage", {**CHAT, "message": text})
    assert sandbox.state.messages(**CHAT)[-1]["message"] == text


# -- vendor errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "params", "code"), [
    ("chat.sendmessage", {**CHAT, "platformid": "999", "message": "x"}, "CHANNEL_NOT_FOUND"),
    ("chat.getmessages", {**CHAT, "destination": "nobody"}, "CHAT_NOT_FOUND"),
    ("chat.sendmessage", {k: v for k, v in CHAT.items() if k != "destination"},
     "MISSING_COMPULSORY_PARAM"),
    ("chat.sendfile", {**CHAT, "type": "gif", "fileurl": "https://example.com/a.gif"},
     "INCORRECT_FILETYPE"),
    ("chat.sendfile", {**CHAT, "type": "image", "fileurl": "not a url"}, "INCORRECT_FILEURL"),
    ("chat.sendfile", {**CHAT, "type": "image", "fileurl": "https://example.com/a.jpg",
                       "thumburl": "ftp:/x"}, "INCORRECT_THUMBURL"),
    ("nosuchclass.getthing", {}, "INCORRECT_CLASS"),
    ("chat.nosuchmethod", {}, "INCORRECT_METHOD"),
])
def test_each_vendor_error_is_permanent_and_explained(providers: Providers, sandbox: Sandbox,
                                                      operation: str, params: dict,
                                                      code: str) -> None:
    with pytest.raises(ProviderError) as e:
        raw_call(providers, sandbox.account(), operation, params)
    assert type(e.value) is ProviderError and e.value.code == code
    assert not e.value.retryable
    assert str(e.value) == f"{operation}: {code} ({ERRORS[code]})"
    assert e.value.response["error"] == code and no_secret_in(e.value, e.value.response)


def test_a_wrong_password_is_permanent_and_never_shown(providers: Providers,
                                                       sandbox: Sandbox) -> None:
    for auth in ("post", "basic"):
        bad = afilnet(sandbox.account(auth=auth), password=Secret("not-the-password-77"))
        with pytest.raises(ProviderError) as e:
            call(providers, bad, "chat.getchatchannels", {})
        assert e.value.code == "INCORRECT_USER_PASSWORD" and not e.value.retryable
        assert "not-the-password-77" not in str(e.value) + str(e.value.response)


def test_every_documented_code_has_an_english_meaning() -> None:
    documented = {"MISSING_USER", "MISSING_PASSWORD", "MISSING_CLASS", "MISSING_METHOD",
                  "MISSING_COMPULSORY_PARAM", "INCORRECT_USER_PASSWORD", "INCORRECT_CLASS",
                  "INCORRECT_METHOD", "CHANNEL_NOT_FOUND", "CHAT_NOT_FOUND",
                  "INCORRECT_FILETYPE", "INCORRECT_FILEURL", "INCORRECT_THUMBURL"}
    assert set(ERRORS) == documented
    assert describe("chat.sendmessage", "CHANNEL_NOT_FOUND") == (
        "chat.sendmessage: CHANNEL_NOT_FOUND (the channel does not exist)")
    assert "does not document" in describe("chat.getchats", "NEW_CODE")


@pytest.mark.parametrize("setting", ["user", "password"])
def test_a_missing_credential_names_the_setting(providers: Providers, sandbox: Sandbox,
                                                setting: str) -> None:
    default = afilnet(sandbox.account(), **{setting: None})
    with pytest.raises(ConfigError) as e:
        call(providers, default, "chat.getchatchannels", {})
    assert f"accounts.default.afilnet.{setting}" in str(e.value)
    assert f"SQLBRIDGE_AFILNET_{setting.upper()}" in str(e.value)
    other = afilnet(sandbox.account(name="shop"), **{setting: None})
    with pytest.raises(ConfigError, match=rf"accounts\.shop\.afilnet\.{setting}$"):
        call(providers, other, "chat.getchatchannels", {})
    assert sandbox.requests_seen == []  # nothing was sent


# -- broken answers and the network ----------------------------------------------------------


@pytest.mark.parametrize(("kind", "words"), [("html", "HTML page"), ("empty", "empty answer"),
                                             ("badjson", "not valid JSON")])
def test_malformed_answers_are_retryable_protocol_errors(providers: Providers,
                                                         sandbox: Sandbox, kind: str,
                                                         words: str) -> None:
    sandbox.fail_next(1, kind)
    with pytest.raises(ProtocolError) as e:
        call(providers, sandbox.account(), "chat.getchatchannels", {})
    assert e.value.code == "PROTOCOL_ERROR" and e.value.retryable
    assert words in str(e.value) and len(str(e.value)) < 400


def test_an_answer_without_a_known_status_is_a_protocol_error(providers: Providers,
                                                              sandbox: Sandbox) -> None:
    account = afilnet(sandbox.account(), url=sandbox.url + "status/200")
    with pytest.raises(ProtocolError, match="neither success nor error"):
        call(providers, account, "chat.getchatchannels", {})


@pytest.mark.parametrize("result", [None, "text", 5, {"items": []}, {"list": {"a": 1}},
                                    [1, 2], {"list": ["x"]}])
def test_a_list_of_the_wrong_shape_is_a_protocol_error(result: object) -> None:
    with pytest.raises(ProtocolError, match="chat.getchats"):
        result_list(result, "chat.getchats")


def test_list_items_become_text_records_and_keyless_items_are_refused() -> None:
    got = records("chat_channel", {"list": [{"platform": "telegram", "platformid": 200,
                                             "name": "T"}]}, {}, "w")
    assert got == [{"platform": "telegram", "platformid": "200", "name": "T"}]
    msg = records("chat_message_unread", [{"messageid": 7, "issent": "0", "message": "m"}],
                  CHAT, "w")
    assert msg[0]["platformid"] == "100" and msg[0]["messageid"] == "7"
    assert msg[0]["sent"] is False
    with pytest.raises(ProtocolError, match="no messageid"):
        records("chat_message", [{"platform": "whatsapp", "platformid": "1"}], CHAT, "w")


@pytest.mark.parametrize("status", ["500", "502", "503"])
def test_server_errors_are_transient(providers: Providers, sandbox: Sandbox,
                                     status: str) -> None:
    sandbox.fail_next(1, status)
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), "chat.getchatchannels", {})
    assert e.value.code == f"HTTP_{status}" and e.value.http_status == int(status)
    assert e.value.retry_after == (1.0 if status == "503" else None)


def test_429_carries_retry_after(providers: Providers, sandbox: Sandbox) -> None:
    sandbox.fail_next(1, "429")
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), "chat.sendmessage", {**CHAT, "message": "x"})
    assert (e.value.code, e.value.http_status, e.value.retry_after) == ("HTTP_429", 429, 1.0)
    assert call(providers, sandbox.account(), "chat.getchatchannels", {}).http_status == 200


def test_a_read_timeout_may_have_delivered(providers: Providers, sandbox: Sandbox) -> None:
    sandbox.faults.timeout_seconds = 1
    sandbox.fail_next(1, "timeout")
    quick = afilnet(sandbox.account(), read_timeout=0.3)
    with pytest.raises(TransientError) as e:
        call(providers, quick, "chat.sendmessage", {**CHAT, "message": "x"})
    assert e.value.delivered and e.value.code == "READ_TIMEOUT"


def test_a_refused_connection_provably_did_not_deliver(providers: Providers,
                                                       sandbox: Sandbox) -> None:
    closed = afilnet(sandbox.account(), url=f"http://127.0.0.1:{closed_port()}/api/http/")
    with pytest.raises(TransientError) as e:
        call(providers, closed, "chat.sendmessage", {**CHAT, "message": "x"})
    assert not e.value.delivered and e.value.code == "CONNECTION_FAILED"


def test_a_dropped_connection_may_have_delivered(providers: Providers,
                                                 sandbox: Sandbox) -> None:
    sandbox.fail_next(1, "drop")
    with pytest.raises(TransientError) as e:
        call(providers, sandbox.account(), "chat.sendmessage", {**CHAT, "message": "x"})
    assert e.value.delivered and e.value.code == "CONNECTION_LOST"


def test_the_rate_limit_is_shared_by_threads(providers: Providers, sandbox: Sandbox) -> None:
    limited = afilnet(sandbox.account(), rate_limit=40)
    op, params = registry.validate("chat.getchatchannels", {})
    threads = [threading.Thread(target=providers.call, args=(op, params, limited))
               for _ in range(9)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 0.19  # 9 calls at 40/s: the last starts 0.2 s in
    assert len(sandbox.requests_seen) == 9

"""The sandbox speaks both APIs as the seed documents describe them.

Every test talks real HTTP to a running ``Sandbox`` on 127.0.0.1 with plain ``requests``: no
sqlbridge client in between, so these tests also read as examples of the vendors' wire format.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from sqlbridge.registry import FILE_TYPES
from sqlbridge.sandbox import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
    SANDBOX_ANNA_USER,
    Faults,
    Sandbox,
)

USER, PW, COMPANY = SANDBOX_AFILNET_USER, SANDBOX_AFILNET_PASSWORD, SANDBOX_ANNA_COMPANY_HASH
# A seeded chat: one outgoing message, then one unread incoming one.
CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000"}
CHANNEL = {"platform": "whatsapp", "platformid": "100"}
MESSAGE_FIELDS = {"platformid", "platform", "message", "destination", "messageid", "sent",
                  "status", "datetime"}
TRICKY = "Olá & bem-vindo #1 100% 😀 a+b=c ?x=y\n\tçãé 中文 " * 300  # > 8,000 characters


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=1) as sandbox:
        yield sandbox


# -- helpers: one call each, written the way a client would send it --------------------------

def afilnet(sb: Sandbox, cls: str = "chat", method: str = "", **params: str) -> dict[str, Any]:
    """POST form to api/http/, credentials in the body (the project's default transport)."""
    form = {"user": USER, "password": PW, "class": cls, "method": method, **params}
    answer = requests.post(sb.afilnet_post_url, data=form, timeout=5)
    assert answer.status_code == 200  # Afilnet answers errors with HTTP 200 too
    return answer.json()


def afilnet_basic(sb: Sandbox, method: str, user: str = USER, password: str = PW,
                  **params: str) -> dict[str, Any]:
    """POST form to api/basic/, credentials in the Authorization header only."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return requests.post(sb.afilnet_basic_url, timeout=5, headers={
        "Authorization": f"Basic {token}"}, data={"class": "chat", "method": method,
                                                   **params}).json()


def items(body: dict[str, Any]) -> list[dict[str, Any]]:
    assert body["status"] == "SUCCESS", body
    return body["result"]["list"]


def anna_token(sb: Sandbox) -> str:
    body = requests.post(sb.anna_url + "REST/Credentials/GetToken", timeout=5, json={
        "hash": COMPANY, "user": SANDBOX_ANNA_USER, "pass": SANDBOX_ANNA_PASSWORD}).json()
    assert body["success"] is True, body
    return body["data"]["Token"]


def anna(sb: Sandbox, endpoint: str, token: str | None, **body: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{sb.anna_url}REST/AnnACorporate/{endpoint}", timeout=5,
                         json={"hash": COMPANY, **body}, headers=headers)


# -- Afilnet: errors -------------------------------------------------------------------------

FILE = {**CHAT, "type": "image", "fileurl": "https://files.example/a.jpg"}


@pytest.mark.parametrize(("form", "code"), [
    ({"user": ""}, "MISSING_USER"),
    ({"password": ""}, "MISSING_PASSWORD"),
    ({"password": "wrong"}, "INCORRECT_USER_PASSWORD"),
    ({"user": "someone@else", "class": ""}, "INCORRECT_USER_PASSWORD"),  # credentials first
    ({"class": "", "method": "getchats"}, "MISSING_CLASS"),
    ({"method": ""}, "MISSING_METHOD"),
    ({"class": "fax", "method": "send"}, "INCORRECT_CLASS"),
    ({"method": "explode"}, "INCORRECT_METHOD"),
    ({"class": "user", "method": "sendmessage"}, "INCORRECT_METHOD"),
    ({"method": "getchats", "platform": "whatsapp"}, "MISSING_COMPULSORY_PARAM"),
    ({"method": "sendmessage", **CHAT, "message": ""}, "MISSING_COMPULSORY_PARAM"),
    ({"method": "sendfile", **CHAT, "type": "image"}, "MISSING_COMPULSORY_PARAM"),
    ({"method": "getmessages", **CHANNEL}, "MISSING_COMPULSORY_PARAM"),
    ({"method": "getunreadmessages", **CHANNEL, "destination": ""}, "MISSING_COMPULSORY_PARAM"),
    ({"method": "sendmessage", **CHAT, "platformid": "999", "message": "x"},
     "CHANNEL_NOT_FOUND"),
    ({"method": "sendmessage", **CHAT, "platform": "sms", "message": "x"}, "CHANNEL_NOT_FOUND"),
    ({"method": "sendfile", **FILE, "platform": "telegram"}, "CHANNEL_NOT_FOUND"),
    ({"method": "getchats", "platform": "operator", "platformid": "100"}, "CHANNEL_NOT_FOUND"),
    ({"method": "getmessages", **CHAT, "platformid": "1"}, "CHANNEL_NOT_FOUND"),
    ({"method": "getunreadmessages", **CHAT, "platformid": "1"}, "CHANNEL_NOT_FOUND"),
    ({"method": "getmessages", **CHAT, "destination": "nobody"}, "CHAT_NOT_FOUND"),
    ({"method": "getunreadmessages", **CHAT, "destination": "nobody"}, "CHAT_NOT_FOUND"),
    ({"method": "sendfile", **FILE, "destination": "nobody"}, "CHAT_NOT_FOUND"),
    ({"method": "sendfile", **FILE, "type": "gif"}, "INCORRECT_FILETYPE"),
    ({"method": "sendfile", **FILE, "fileurl": "a.jpg"}, "INCORRECT_FILEURL"),
    ({"method": "sendfile", **FILE, "fileurl": "ftp://files.example/a.jpg"}, "INCORRECT_FILEURL"),
    ({"method": "sendfile", **FILE, "thumburl": "thumb.jpg"}, "INCORRECT_THUMBURL"),
])
def test_every_documented_afilnet_error_code_is_reachable(sb: Sandbox, form: dict[str, str],
                                                          code: str) -> None:
    assert afilnet(sb, **form) == {"status": "ERROR", "error": code}


def test_basic_auth_reads_credentials_from_the_header_only(sb: Sandbox) -> None:
    assert len(items(afilnet_basic(sb, "getchatchannels"))) == 3
    no_header = requests.post(sb.afilnet_basic_url, data={
        "class": "chat", "method": "getchatchannels", "user": USER, "password": PW},
        timeout=5).json()
    assert no_header == {"status": "ERROR", "error": "MISSING_USER"}
    assert afilnet_basic(sb, "getchatchannels", password="nope") == {
        "status": "ERROR", "error": "INCORRECT_USER_PASSWORD"}
    garbage = requests.post(sb.afilnet_basic_url, data={"class": "chat"}, timeout=5,
                            headers={"Authorization": "Basic !!!not-base64"}).json()
    assert garbage["status"] == "ERROR"


def test_get_with_the_query_string_works_as_the_seed_scripts_send_it(sb: Sandbox) -> None:
    answer = requests.get(sb.afilnet_post_url, timeout=5, params={
        "class": "chat", "method": "getchatchannels", "user": USER, "password": PW})
    assert len(items(answer.json())) == 3


# -- Afilnet: each method --------------------------------------------------------------------

def test_getchatchannels_lists_the_seeded_channels(sb: Sandbox) -> None:
    assert items(afilnet(sb, method="getchatchannels")) == [
        {"platformid": "100", "platform": "whatsapp", "name": "Sandbox WhatsApp"},
        {"platformid": "200", "platform": "telegram", "name": "Sandbox Telegram"},
        {"platformid": "300", "platform": "webchat", "name": "Sandbox Webchat"},
    ]


def test_sendmessage_creates_the_chat_and_getchats_describes_its_last_message(
        sb: Sandbox) -> None:
    new = {**CHANNEL, "destination": "34999000111"}
    assert afilnet(sb, method="sendmessage", **new, message="first") == {"status": "SUCCESS"}
    assert afilnet(sb, method="sendmessage", **new, message="second")["status"] == "SUCCESS"
    chats = {c["destination"]: c for c in items(afilnet(sb, method="getchats", **CHANNEL))}
    assert set(chats) == {"34600001000", "34600001001", "34999000111"}
    last = chats["34999000111"]
    assert set(last) == MESSAGE_FIELDS
    assert (last["message"], last["sent"], last["status"]) == ("second", 1, "sent")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", last["datetime"])


def test_getmessages_returns_the_chat_in_order_and_marks_it_read(sb: Sandbox) -> None:
    afilnet(sb, method="sendmessage", **CHAT, message="our answer")
    unread = items(afilnet(sb, method="getunreadmessages", **CHAT))
    assert [(m["issent"], m["status"]) for m in unread] == [(0, "received")]
    assert "sent" not in unread[0]  # the seed names the field issent for this method only
    assert items(afilnet(sb, method="getunreadmessages", **CHAT)) == unread  # no side effect

    messages = items(afilnet(sb, method="getmessages", **CHAT))
    assert all(set(m) == MESSAGE_FIELDS for m in messages)
    assert [(m["sent"], m["message"]) for m in messages][-1] == (1, "our answer")
    assert [m["sent"] for m in messages] == [1, 0, 1]
    assert len({m["messageid"] for m in messages}) == 3
    assert items(afilnet(sb, method="getunreadmessages", **CHAT)) == []
    assert sb.state.unread(**CHAT) == []


@pytest.mark.parametrize("transport", ["post", "basic", "get"])
def test_unicode_and_long_messages_round_trip_exactly(sb: Sandbox, transport: str) -> None:
    if transport == "post":
        assert afilnet(sb, method="sendmessage", **CHAT, message=TRICKY)["status"] == "SUCCESS"
    elif transport == "basic":
        assert afilnet_basic(sb, "sendmessage", **CHAT, message=TRICKY)["status"] == "SUCCESS"
    else:
        short = TRICKY[:500]  # GET is limited by URL length, as the vendor's page warns
        requests.get(sb.afilnet_post_url, timeout=5, params={
            "class": "chat", "method": "sendmessage", "user": USER, "password": PW, **CHAT,
            "message": short})
        assert sb.state.messages(**CHAT)[-1]["message"] == short
        return
    assert items(afilnet(sb, method="getmessages", **CHAT))[-1]["message"] == TRICKY


@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_sendfile_accepts_every_documented_type(sb: Sandbox, file_type: str) -> None:
    assert afilnet(sb, method="sendfile", **{**FILE, "type": file_type}) == {"status": "SUCCESS"}


def test_sendfile_stores_its_caption_or_else_its_url(sb: Sandbox) -> None:
    afilnet(sb, method="sendfile", **FILE, thumburl="https://files.example/t.jpg",
            message="a caption")
    afilnet(sb, method="sendfile", **FILE)
    stored = [m["message"] for m in sb.state.messages(**CHAT)[-2:]]
    assert stored == ["a caption", FILE["fileurl"]]


def test_user_getbalance_is_the_one_method_of_class_user(sb: Sandbox) -> None:
    assert afilnet(sb, cls="user", method="getbalance") == {
        "status": "SUCCESS", "result": {"balance": "100.00", "currency": "EUR"}}


@pytest.mark.parametrize(("status_case", "list_shape"), [
    ("upper", "object"), ("upper", "array"), ("lower", "object"), ("lower", "array")])
def test_both_status_cases_and_list_shapes_can_be_served(status_case: str,
                                                         list_shape: str) -> None:
    with Sandbox(status_case=status_case, list_shape=list_shape) as sb:
        ok = afilnet(sb, method="getchatchannels")
        error = afilnet(sb, method="getchats", platform="whatsapp", platformid="9")
    success_word, error_word = ("SUCCESS", "ERROR") if status_case == "upper" else (
        "success", "error")
    assert ok["status"] == success_word and error["status"] == error_word
    listed = ok["result"] if list_shape == "array" else ok["result"]["list"]
    assert len(listed) == 3


# -- AnnA ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expires_in_format", "pattern"), [
    ("seconds", r"3600"), ("datetime", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"), ("missing", None)])
def test_gettoken_answers_expires_in_in_each_shape(expires_in_format: str,
                                                   pattern: str | None) -> None:
    with Sandbox(expires_in_format=expires_in_format) as sb:
        data = requests.post(sb.anna_url + "REST/Credentials/GetToken", timeout=5, json={
            "hash": COMPANY, "user": SANDBOX_ANNA_USER, "pass": SANDBOX_ANNA_PASSWORD,
        }).json()["data"]
    assert data["Token"]
    if pattern is None:
        assert "ExpiresIn" not in data
    else:
        assert re.fullmatch(pattern, data["ExpiresIn"])


@pytest.mark.parametrize("wrong", ["hash", "user", "pass"])
def test_gettoken_refuses_wrong_credentials_with_http_200(sb: Sandbox, wrong: str) -> None:
    creds = {"hash": COMPANY, "user": SANDBOX_ANNA_USER, "pass": SANDBOX_ANNA_PASSWORD,
             wrong: "nope"}
    answer = requests.post(sb.anna_url + "REST/Credentials/GetToken", json=creds, timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"success": False, "message": "Credenciais inválidas"}


def test_a_missing_unknown_revoked_or_expired_token_is_401() -> None:
    unauthorised = {"success": False, "message": "Token inválido ou expirado"}
    with Sandbox(token_ttl=1) as sb:
        assert anna(sb, "Messenger/Structure", None).status_code == 401
        assert anna(sb, "Messenger/Structure", "made-up").json() == unauthorised
        token = anna_token(sb)
        assert anna(sb, "Messenger/Structure", token).json()["success"] is True
        sb.state.revoke_tokens()
        assert anna(sb, "Messenger/Structure", token).status_code == 401
        token = anna_token(sb)
        time.sleep(1.1)
        expired = anna(sb, "Messenger/Structure", token)
    assert expired.status_code == 401 and expired.json() == unauthorised


@pytest.fixture
def token(sb: Sandbox) -> str:
    return anna_token(sb)


@pytest.mark.parametrize("endpoint", ["User/UserHash", "User/UserHashForced", "User/Inactivate",
                                      "Messenger/Structure", "Messenger/AlertCounter",
                                      "Messenger/Requests", "Messenger/Link"])
def test_every_endpoint_checks_the_company_hash(sb: Sandbox, token: str, endpoint: str) -> None:
    answer = anna(sb, endpoint, token, hash="OTHERCOMPANY", userId="1001", userName="x")
    assert answer.json() == {"success": False, "message": "Empresa não encontrada"}


def test_userhash_gives_access_data_for_an_active_user(sb: Sandbox, token: str) -> None:
    body = anna(sb, "User/UserHash", token, userId="1001", startService="suporte").json()
    assert (body["success"], body["message"]) == (True, "User Hash gerado com sucesso")
    access = body["accessData"]
    assert access["ChatURL"] == f"{sb.url}chat/?h={access['Hash']}"
    assert access["EmbeddedURL"].startswith(sb.url)
    expires = datetime.strptime(access["Expires"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert abs(expires - datetime.now(UTC) - timedelta(hours=1)) < timedelta(minutes=1)


@pytest.mark.parametrize(("user_id", "message"), [
    ("1003", f"Usuário {COMPANY}@1003 está inativo."),
    ("4040", f"Usuário {COMPANY}@4040 não encontrado."),
])
def test_userhash_refuses_inactive_and_unknown_users(sb: Sandbox, token: str, user_id: str,
                                                     message: str) -> None:
    assert anna(sb, "User/UserHash", token, userId=user_id).json() == {
        "success": False, "message": message}


def test_userhashforced_creates_or_reactivates_the_user(sb: Sandbox, token: str) -> None:
    assert anna(sb, "User/UserHashForced", token, userId="2001",
                userName="Nova Pessoa").json()["success"] is True
    assert sb.state.anna_user("2001")["name"] == "Nova Pessoa"
    assert anna(sb, "User/UserHashForced", token, userId="1003",
                userName="Carla Dias").json()["accessData"]["Hash"]
    assert sb.state.anna_user("1003")["active"] is True
    assert anna(sb, "User/UserHashForced", token, userId="2002").json()["success"] is False


def test_inactivate_then_userhash_says_inactive(sb: Sandbox, token: str) -> None:
    assert anna(sb, "User/Inactivate", token, userId="1002").json() == {
        "success": True, "message": f"Usuário {COMPANY}@1002 inativado com sucesso"}
    assert sb.state.anna_user("1002")["active"] is False
    assert anna(sb, "User/UserHash", token, userId="1002").json()["message"].endswith(
        "está inativo.")
    assert anna(sb, "User/Inactivate", token, userId="4040").json()["success"] is False


def test_structure_lists_departments_and_their_channels(sb: Sandbox, token: str) -> None:
    structure = anna(sb, "Messenger/Structure", token).json()["structure"]
    assert structure["CompaniesHash"] == COMPANY
    assert structure["CompaniesName"] == "Sandbox Company"
    assert [len(d["Channels"]) for d in structure["Departments"]] == [2, 2]
    assert set(structure["Departments"][0]) == {"Alias", "Name", "Channels"}
    assert set(structure["Departments"][0]["Channels"][0]) == {"Alias", "Name"}


def test_requests_are_filtered_and_shaped_as_documented(sb: Sandbox, token: str) -> None:
    everything = anna(sb, "Messenger/Requests", token, userId="1001", messengerFilters={
        "departmentAlias": "", "channelAlias": "", "dataIni": "", "dataFim": "", "status": "",
        "pendentes": ""}).json()["userRequests"]
    assert len(everything) == 4
    first = everything[0]
    assert set(first) == {"Department", "Channel", "Description", "OpenDate", "Protocol",
                          "Status", "Pending", "Link"}
    assert re.fullmatch(r"\d\d/\d\d/2024 \d\d:\d\d", first["OpenDate"])

    def protocols(**filters: str) -> list[str]:
        return [r["Protocol"] for r in anna(sb, "Messenger/Requests", token, userId="1001",
                                            messengerFilters=filters).json()["userRequests"]]

    assert protocols(dataIni="01/01/2024", dataFim="31/05/2024") == ["P000001", "P000002"]
    assert protocols(dataFim="10/03/2024") == ["P000001"]  # the end day is included
    assert protocols(status="E") == ["P000003"]
    assert protocols(status="A", pendentes="S") == ["P000001", "P000004"]
    assert protocols(departmentAlias="SUP", channelAlias="FIN") == ["P000002"]


def test_alertcounter_counts_open_pending_requests(sb: Sandbox, token: str) -> None:
    def count(**body: Any) -> int:
        return anna(sb, "Messenger/AlertCounter", token, **body).json()["alertCounter"]

    assert count(userId="1001") == 2
    assert count(userDocType="CPF", userDocValue="12345678900", messengerFilters={
        "dataIni": "01/01/2024", "dataFim": "31/12/2024"}) == 2
    assert count(userId="1001", messengerFilters={"dataIni": "01/06/2024"}) == 1
    sb.state.add_anna_request("1002", "SUP", "TEC", "Nova", status="A", pending="S")
    assert count(userId="1002") == 2


def test_link_points_into_the_messenger(sb: Sandbox, token: str) -> None:
    link = anna(sb, "Messenger/Link", token, userDocType="CPF",
                userDocValue="12345678900").json()["messengerLink"]
    assert link.startswith(f"{sb.url}messenger/?u=")


@pytest.mark.parametrize("endpoint", ["Messenger/AlertCounter", "Messenger/Requests",
                                      "Messenger/Link"])
@pytest.mark.parametrize(("body", "says"), [
    ({}, "Informe userId ou userDocType e userDocValue."),
    ({"userDocType": "CPF"}, "Informe userId ou userDocType e userDocValue."),
    ({"userId": "4040"}, "não encontrado"),
    ({"userDocType": "CPF", "userDocValue": "000"}, "não encontrado"),
])
def test_messenger_endpoints_need_a_known_user(sb: Sandbox, token: str, endpoint: str,
                                               body: dict[str, str], says: str) -> None:
    answer = anna(sb, endpoint, token, **body).json()
    assert answer["success"] is False and says in answer["message"]


@pytest.mark.parametrize(("filters", "field"), [
    ({"dataIni": "2024-01-01"}, "dataIni"), ({"dataFim": "31/13/2024"}, "dataFim"),
    ({"status": "X"}, "status"), ({"pendentes": "talvez"}, "pendentes")])
def test_malformed_filters_are_refused_naming_the_field(sb: Sandbox, token: str,
                                                        filters: dict[str, str],
                                                        field: str) -> None:
    for endpoint in ("Messenger/Requests", "Messenger/AlertCounter"):
        answer = anna(sb, endpoint, token, userId="1001", messengerFilters=filters).json()
        assert answer["success"] is False and answer["message"].startswith(field)


# -- echo and status, for http.request -------------------------------------------------------

def test_echo_reflects_the_request(sb: Sandbox) -> None:
    answer = requests.put(sb.echo_url + "/orders/7?x=1", json={"a": "ç"}, timeout=5,
                          headers={"X-Trace": "abc"}).json()
    assert (answer["method"], answer["path"], answer["query"]) == ("PUT", "/echo/orders/7", "x=1")
    assert answer["headers"]["X-Trace"] == "abc"
    assert answer["json"] == {"a": "ç"} and '"a"' in answer["body"]
    assert requests.post(sb.echo_url, data="not json", timeout=5).json()["json"] is None
    streamed = requests.post(sb.echo_url, data=iter([b"chunk-1 ", b"chunk-2"]), timeout=5)
    assert streamed.json()["body"] == "chunk-1 chunk-2"  # Transfer-Encoding: chunked


@pytest.mark.parametrize(("code", "retry_after"), [(200, None), (204, None), (404, None),
                                                   (429, "1"), (500, None), (503, "1")])
def test_status_answers_the_code_asked_for(sb: Sandbox, code: int,
                                           retry_after: str | None) -> None:
    answer = requests.get(f"{sb.url}status/{code}", timeout=5)
    assert answer.status_code == code and answer.headers.get("Retry-After") == retry_after


# -- faults ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "status", "body"), [
    ("503", 503, None), ("500", 500, None), ("502", 502, None), ("429", 429, None),
    ("html", 200, "Bad Gateway"), ("empty", 200, ""), ("badjson", 200, '{"status":')])
def test_scripted_faults_hit_the_next_call_only(sb: Sandbox, kind: str, status: int,
                                                body: str | None) -> None:
    sb.fail_next(1, kind)
    with requests.Session() as session:  # keep-alive survives every answered fault
        first = session.get(sb.echo_url, timeout=5)
        assert first.status_code == status
        if body is not None:
            assert body in first.text if body else first.text == ""
        if kind in ("429", "503"):
            assert first.headers["Retry-After"] == "1"
        assert session.get(sb.echo_url, timeout=5).json()["method"] == "GET"


def test_a_dropped_connection_gives_no_answer(sb: Sandbox) -> None:
    sb.fail_next(1, "drop")
    with pytest.raises(requests.ConnectionError):
        requests.get(sb.echo_url, timeout=5)
    assert requests.get(sb.echo_url, timeout=5).ok


def test_a_timeout_fault_holds_the_answer_past_the_client_timeout(sb: Sandbox) -> None:
    sb.faults.timeout_seconds = 0.5
    sb.fail_next(1, "timeout")
    with pytest.raises(requests.ReadTimeout):
        requests.get(sb.echo_url, timeout=0.2)
    sb.fail_next(1, "timeout")  # a patient client gets the normal answer
    assert requests.get(sb.echo_url, timeout=5).json()["method"] == "GET"


def test_scripted_faults_can_target_one_path_and_count_down(sb: Sandbox) -> None:
    sb.fail_next(2, "503", path_contains="anna/")
    assert afilnet(sb, method="getchatchannels")["status"] == "SUCCESS"
    statuses = [requests.post(sb.anna_url + "REST/Credentials/GetToken", json={},
                              timeout=5).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fault_rates_are_reproducible_with_a_seed() -> None:
    def pattern() -> list[int]:
        with Sandbox(faults=Faults(error_rate=0.3, rate_limit_rate=0.2, seed=7)) as sb, \
                requests.Session() as session:
            return [session.get(sb.echo_url, timeout=5).status_code for _ in range(30)]

    first = pattern()
    assert first == pattern()
    assert {200, 429, 503} <= set(first)


def test_admin_paths_are_never_faulted_and_latency_is_added(sb: Sandbox) -> None:
    sb.faults.error_rate = 1.0
    assert requests.post(sb.url + "_sandbox/seen", json={}, timeout=5).ok
    assert requests.get(sb.echo_url, timeout=5).status_code == 503
    sb.faults.error_rate, sb.faults.latency_ms = 0.0, 150
    started = time.perf_counter()
    assert requests.get(sb.echo_url, timeout=5).ok
    assert time.perf_counter() - started >= 0.15


# -- admin over HTTP, state, lifecycle -------------------------------------------------------

def test_admin_endpoints_drive_a_sandbox_in_another_process(sb: Sandbox) -> None:
    def admin(action: str, **body: Any) -> requests.Response:
        return requests.post(f"{sb.url}_sandbox/{action}", json=body, timeout=5)

    mid = admin("incoming", **CHAT, text="from outside").json()["messageid"]
    assert items(afilnet(sb, method="getunreadmessages", **CHAT))[-1]["messageid"] == mid
    assert admin("faults", error_rate=1).json()["error_rate"] == 1
    assert requests.get(sb.echo_url, timeout=5).status_code == 503
    assert admin("faults", error_rate=0, not_a_field=1).status_code == 400
    admin("faults", error_rate=0)
    assert admin("fail_next", n=1, kind="429").ok
    assert requests.get(sb.echo_url, timeout=5).status_code == 429
    assert admin("anna_user", user_id="7", name="Sete").json()["user"]["active"] is True
    assert admin("populate", channels=1, chats_per_channel=2,
                 messages_per_chat=3).json() == {"messages": 6}
    assert admin("reset").ok and len(items(afilnet(sb, method="getchatchannels"))) == 3
    assert admin("incoming", platform="whatsapp").status_code == 400
    assert admin("nonsense").status_code == 404


def test_state_methods_build_what_a_test_needs(sb: Sandbox) -> None:
    sb.state.add_channel("operator", "900", "Operators")
    sb.state.add_chat("operator", "900", "agent-1")
    assert items(afilnet(sb, method="getmessages", platform="operator", platformid="900",
                         destination="agent-1")) == []
    mid = sb.state.add_incoming_message("operator", "900", "agent-1", "help")
    assert [m["messageid"] for m in sb.state.unread("operator", "900", "agent-1")] == [mid]
    sb.state.mark_read("operator", "900", "agent-1")
    assert sb.state.unread("operator", "900", "agent-1") == []
    sb.state.add_anna_user("3001", "Doc User", "CNPJ", "11222333000144")
    assert sb.state.anna_user("3001")["doc_value"] == "11222333000144"
    assert sb.state.add_anna_request("3001", "VEN", "NOV", "Pedido").startswith("P")


def test_populate_builds_a_large_state_quickly(sb: Sandbox) -> None:
    started = time.perf_counter()
    assert sb.state.populate(channels=3, chats_per_channel=50, messages_per_chat=200,
                             unread_ratio=0.1) == 30_000
    assert time.perf_counter() - started < 2
    assert len(items(afilnet(sb, method="getchats", **CHANNEL))) == 50
    unread = sum(len(sb.state.unread("whatsapp", "100", c["destination"]))
                 for c in items(afilnet(sb, method="getchats", **CHANNEL)))
    assert 300 < unread < 700  # ~10% of the 5,000 incoming messages of the channel


def test_requests_seen_counts_api_calls_by_path_and_operation(sb: Sandbox) -> None:
    afilnet(sb, method="getchatchannels")
    anna_token(sb)
    requests.post(sb.url + "_sandbox/seen", json={}, timeout=5)
    assert sb.requests_seen == ["api/http/", "anna/REST/Credentials/GetToken"]
    assert sb.operations_seen == [("api/http/", "chat.getchatchannels"),
                                  ("anna/REST/Credentials/GetToken",
                                   "REST/Credentials/GetToken")]


def test_account_points_at_the_sandbox(sb: Sandbox) -> None:
    post, basic = sb.account(), sb.account("other", auth="basic")
    assert post.afilnet.url == sb.afilnet_post_url and post.afilnet.auth == "post"
    assert basic.name == "other" and basic.afilnet.url == sb.afilnet_basic_url
    assert post.anna.url == sb.anna_url
    assert [str(e) for e in post.http.allowed_hosts] == [sb.url.rstrip("/")]
    assert post.afilnet.password is not None and post.afilnet.password.reveal() == PW


def test_stop_closes_keep_alive_connections_and_held_requests() -> None:
    sb = Sandbox(faults=Faults(timeout_seconds=30)).start()
    assert sb.url.startswith("http://127.0.0.1:") and sb.port > 0
    session = requests.Session()
    assert session.get(sb.echo_url, timeout=5).ok
    sb.fail_next(1, "timeout")
    outcome: list[object] = []

    def hold() -> None:
        # The assertion on this request's fate is made below, in the test's own thread.
        try:
            outcome.append(requests.get(sb.echo_url, timeout=30))
        except requests.RequestException as exc:
            outcome.append(exc)

    held = threading.Thread(target=hold)
    held.start()
    time.sleep(0.1)
    started = time.perf_counter()
    sb.stop()
    held.join(timeout=5)
    assert time.perf_counter() - started < 2 and not held.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], requests.RequestException), outcome
    with pytest.raises(requests.ConnectionError):
        session.get(sb.echo_url, timeout=2)

"""The sandbox speaks both APIs as the seed documents describe them (raw HTTP, no client)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import requests

from sqlbridge.sandbox import (
    SANDBOX_AFILNET_PASSWORD,
    SANDBOX_AFILNET_USER,
    SANDBOX_ANNA_COMPANY_HASH,
    SANDBOX_ANNA_PASSWORD,
    SANDBOX_ANNA_USER,
    Sandbox,
)

USER, PW, COMPANY = SANDBOX_AFILNET_USER, SANDBOX_AFILNET_PASSWORD, SANDBOX_ANNA_COMPANY_HASH
CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000"}


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=1) as sandbox:
        yield sandbox


def afilnet(sb: Sandbox, **form: str) -> dict:
    return requests.post(sb.afilnet_post_url, data={"user": USER, "password": PW, **form},
                         timeout=5).json()


@pytest.mark.parametrize(("form", "code"), [
    ({"user": ""}, "MISSING_USER"),
    ({"password": ""}, "MISSING_PASSWORD"),
    ({"password": "wrong"}, "INCORRECT_USER_PASSWORD"),
    ({"method": "getchats"}, "MISSING_CLASS"),
    ({"class": "chat"}, "MISSING_METHOD"),
    ({"class": "fax", "method": "send"}, "INCORRECT_CLASS"),
    ({"class": "chat", "method": "explode"}, "INCORRECT_METHOD"),
    ({"class": "chat", "method": "getchats", "platform": "whatsapp"}, "MISSING_COMPULSORY_PARAM"),
    ({"class": "chat", "method": "sendmessage", **CHAT, "platformid": "999", "message": "x"},
     "CHANNEL_NOT_FOUND"),
    ({"class": "chat", "method": "getmessages", **CHAT, "destination": "nobody"},
     "CHAT_NOT_FOUND"),
    ({"class": "chat", "method": "sendfile", **CHAT, "type": "gif", "fileurl": "https://a/b"},
     "INCORRECT_FILETYPE"),
    ({"class": "chat", "method": "sendfile", **CHAT, "type": "image", "fileurl": "a.jpg"},
     "INCORRECT_FILEURL"),
    ({"class": "chat", "method": "sendfile", **CHAT, "type": "image", "fileurl": "https://a/b",
      "thumburl": "thumb"}, "INCORRECT_THUMBURL"),
])
def test_every_documented_afilnet_error_code_is_reachable(sb: Sandbox, form, code) -> None:
    assert afilnet(sb, **form) == {"status": "ERROR", "error": code}


def test_a_sent_message_appears_in_getmessages_and_reading_clears_unread(sb: Sandbox) -> None:
    text = "Olá & bem-vindo #1 100% 😀 " * 400  # > 8,000 characters
    assert afilnet(sb, **{"class": "chat", "method": "sendmessage", **CHAT, "message": text}) \
        == {"status": "SUCCESS"}
    unread = afilnet(sb, **{"class": "chat", "method": "getunreadmessages", **CHAT})
    assert [m["issent"] for m in unread["result"]["list"]] == [0]
    got = afilnet(sb, **{"class": "chat", "method": "getmessages", **CHAT})["result"]["list"]
    assert got[-1]["message"] == text and got[-1]["sent"] == 1
    assert afilnet(sb, **{"class": "chat", "method": "getunreadmessages", **CHAT})[
        "result"]["list"] == []


def test_basic_auth_reads_credentials_from_the_header_only(sb: Sandbox) -> None:
    token = base64.b64encode(f"{USER}:{PW}".encode()).decode()
    ok = requests.post(sb.afilnet_basic_url, data={"class": "chat", "method":
                                                   "getchatchannels"},
                       headers={"Authorization": f"Basic {token}"}, timeout=5).json()
    assert ok["status"] == "SUCCESS" and len(ok["result"]["list"]) == 3
    no_header = requests.post(sb.afilnet_basic_url, data={"class": "chat", "user": USER,
                                                          "password": PW}, timeout=5).json()
    assert no_header == {"status": "ERROR", "error": "MISSING_USER"}


def test_lower_case_status_and_bare_lists_can_be_served() -> None:
    with Sandbox(status_case="lower", list_shape="array") as sb:
        body = afilnet(sb, **{"class": "chat", "method": "getchatchannels"})
    assert body["status"] == "success" and isinstance(body["result"], list)


def anna_token(sb: Sandbox) -> str:
    body = requests.post(sb.anna_url + "REST/Credentials/GetToken", timeout=5, json={
        "hash": COMPANY, "user": SANDBOX_ANNA_USER, "pass": SANDBOX_ANNA_PASSWORD}).json()
    assert body["success"] is True
    return body["data"]["Token"]


def anna(sb: Sandbox, endpoint: str, token: str, **body: object) -> requests.Response:
    return requests.post(f"{sb.anna_url}REST/AnnACorporate/{endpoint}", timeout=5,
                         json={"hash": COMPANY, **body},
                         headers={"Authorization": f"Bearer {token}"})


def test_anna_tokens_expire() -> None:
    with Sandbox(token_ttl=1) as sb:
        token = anna_token(sb)
        assert anna(sb, "Messenger/Structure", token).json()["success"] is True
        time.sleep(1.1)
        expired = anna(sb, "Messenger/Structure", token)
    assert expired.status_code == 401 and expired.json()["success"] is False


def test_anna_endpoints_answer_as_documented(sb: Sandbox) -> None:
    t = anna_token(sb)
    assert anna(sb, "User/UserHash", t, userId="1001").json()["accessData"]["Expires"].isdigit()
    assert anna(sb, "User/UserHash", t, userId="1003").json() == {
        "success": False, "message": f"Usuário {COMPANY}@1003 está inativo."}
    assert anna(sb, "User/UserHashForced", t, userId="1003", userName="Carla").json()["success"]
    assert anna(sb, "User/Inactivate", t, userId="1002").json()["message"].endswith(
        "inativado com sucesso")
    assert anna(sb, "Messenger/AlertCounter", t, userDocType="CPF",
                userDocValue="12345678900").json()["alertCounter"] == 2
    reqs = anna(sb, "Messenger/Requests", t, userId="1001", messengerFilters={
        "dataIni": "01/01/2024", "dataFim": "31/05/2024", "status": "", "pendentes": ""}).json()
    assert [r["Protocol"] for r in reqs["userRequests"]] == ["P000001", "P000002"]
    assert anna(sb, "Messenger/Link", t).json()["message"].startswith("Informe userId")
    assert anna(sb, "Messenger/Requests", t, userId="1001",
                messengerFilters={"dataIni": "2024-01-01"}).json()["success"] is False


@pytest.mark.parametrize(("kind", "status"), [("503", 503), ("429", 429), ("500", 500),
                                              ("html", 200), ("empty", 200)])
def test_scripted_faults_hit_the_next_call_only(sb: Sandbox, kind: str, status: int) -> None:
    sb.fail_next(1, kind)
    first = requests.get(sb.echo_url, timeout=5)
    assert first.status_code == status
    assert requests.get(sb.echo_url, timeout=5).json()["method"] == "GET"


def test_a_dropped_connection_gives_no_answer(sb: Sandbox) -> None:
    sb.fail_next(1, "drop")
    with pytest.raises(requests.ConnectionError):
        requests.get(sb.echo_url, timeout=5)


def test_populate_builds_a_large_state_quickly(sb: Sandbox) -> None:
    t0 = time.perf_counter()
    assert sb.state.populate(3, 50, 200) == 30_000
    assert time.perf_counter() - t0 < 2

"""Parameter rules, as a caller meets them: each refusal names the parameter and what is allowed."""

from __future__ import annotations

import pytest

from sqlbridge import registry
from sqlbridge.errors import ValidationError

CHAT = {"platform": "whatsapp", "platformid": "100", "destination": "34600000000"}
FILE = {**CHAT, "type": "image", "fileurl": "https://example.com/a.jpg"}


def refusal(operation: str, params: dict) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        registry.validate(operation, params)
    return e.value


def test_every_documented_endpoint_is_declared_once() -> None:
    # OPERATIONS is a dict, so a second declaration of a name would silently replace the first:
    # count the declarations themselves.
    names = [op.name for op in registry._DECLARED]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert sorted(names) == sorted([
        "chat.getchatchannels", "chat.sendmessage", "chat.sendfile", "chat.getchats",
        "chat.getmessages", "chat.getunreadmessages", "user.userhash", "user.userhashforced",
        "user.inactivate", "messenger.structure", "messenger.alertcounter",
        "messenger.requests", "messenger.link", "http.request"])
    assert registry.OPERATIONS["chat.sendmessage"].procedure == "afilnet_chat_sendmessage"
    assert registry.OPERATIONS["messenger.requests"].procedure == "anna_messenger_requests"
    assert registry.OPERATIONS["http.request"].procedure == "invoke_external_rest_endpoint"


@pytest.mark.parametrize(("operation", "params", "code", "words"), [
    ("chat.sendmessage", CHAT, "MISSING_COMPULSORY_PARAM", "'message' is required"),
    ("chat.sendmessage", {**CHAT, "message": "x", "platform": "sms"}, "INVALID_PARAM_VALUE",
     "must be one of webchat, whatsapp, telegram, operator; got 'sms'"),
    ("chat.sendfile", {**FILE, "type": "gif"}, "INCORRECT_FILETYPE",
     "one of image, video, audio, voice, document, contact"),
    ("chat.sendfile", {**FILE, "fileurl": "ftp://x/a"}, "INCORRECT_FILEURL", "http:// or https://"),
    ("chat.sendfile", {**FILE, "thumburl": "thumb.jpg"}, "INCORRECT_THUMBURL", "'thumburl'"),
    ("chat.getchats", {"platform": "whatsapp", "platformid": "1" * 101}, "PARAM_TOO_LONG",
     "longer than 100"),
    ("chat.getchats", {"platform": "whatsapp", "platformid": "1", "colour": "red"},
     "UNKNOWN_PARAM", "allowed: platform, platformid"),
    ("messenger.requests", {"userDocType": "CPF"}, "MISSING_USER_IDENTITY",
     "both 'userDocType' and 'userDocValue'"),
    ("messenger.requests", {"userId": "1", "dataIni": "31/02/2024"}, "INVALID_DATE",
     "dd/MM/yyyy"),
    ("messenger.requests", {"userId": "1", "status": "X"}, "INVALID_PARAM_VALUE", "A, E"),
    ("http.request", {"url": "https://example.com", "timeout": 999}, "INVALID_PARAM_TYPE",
     "from 1 to 230"),
    ("sms.sendsms", {"password": "x"}, "UNKNOWN_PARAM", "come from the operation and the account"),
])
def test_refusals_name_the_parameter_and_what_is_allowed(operation, params, code, words) -> None:
    err = refusal(operation, params)
    assert err.code == code
    assert words in str(err)
    assert registry.ERROR_NUMBERS[code] >= 51000


def test_portuguese_file_types_from_the_seed_scripts_are_accepted() -> None:
    _, params = registry.validate("chat.sendfile", {**FILE, "type": "vídeo"})
    assert params["type"] == "video"


def test_empty_strings_count_as_absent_as_in_the_vendors_own_examples() -> None:
    _, params = registry.validate("messenger.alertcounter", {
        "userId": "1001", "userDocType": "", "userDocValue": "",
        "messengerFilters": {"departmentAlias": "", "dataIni": "01/01/2024", "status": ""}})
    assert params == {"userId": "1001", "messengerFilters": {"dataIni": "01/01/2024"}}


def test_any_other_afilnet_class_method_is_a_passthrough() -> None:
    op, params = registry.validate("user.getbalance", {})
    assert (op.provider, op.passthrough, op.is_send(params)) == ("afilnet", True, False)
    assert registry.resolve("sms.sendsms").is_send({})
    # A declared AnnA name is not taken over by the passthrough.
    assert registry.resolve("user.userhash").provider == "anna"


def test_http_request_is_a_send_unless_it_only_reads() -> None:
    op = registry.OPERATIONS["http.request"]
    assert op.is_send({"method": "POST"}) and not op.is_send({"method": "GET"})
    _, params = registry.validate(op, {"url": "https://api.example.com/x", "method": "get"})
    assert params["method"] == "GET"


def test_params_that_are_not_a_json_object_are_refused() -> None:
    assert refusal("chat.getchatchannels", "[1, 2]").code == "INVALID_PARAMS_JSON"  # type: ignore[arg-type]

"""Property-based tests: any parameters, any answer (any bytes, any JSON shape). Each input is
accepted or refused with a documented code; nothing raises out of ``attempt.run``; whatever is
accepted can be stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from sqlalchemy import Engine

from sqlbridge import attempt, inbox, registry
from sqlbridge.config import Settings, _account
from sqlbridge.db import make_engine
from sqlbridge.errors import ConfigError, ProviderError, TransientError, ValidationError
from sqlbridge.install import install
from sqlbridge.providers import afilnet
from sqlbridge.providers.anna import AnnaClient
from sqlbridge.queue import Claimed

# Codes a refusal before sending may carry (the T-SQL procedures THROW the same ones).
VALIDATION_CODES = set(registry.ERROR_NUMBERS)
# Codes an answer may come to: unreadable, an HTTP refusal, AnnA's table, Afilnet's own codes.
ANSWER_CODES = {"PROTOCOL_ERROR", "RESPONSE_TOO_LARGE", "ANNA_UNAUTHORIZED", "USER_INACTIVE",
                "USER_NOT_FOUND", "COMPANY_NOT_FOUND", "ANNA_INVALID_PARAM",
                "ANNA_MISSING_PARAM", "ANNA_ERROR", "UNKNOWN_ERROR"}
STATUSES = {"succeeded", "failed", "queued", "uncertain"}

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats() | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)

SAMPLE = {"platform": "whatsapp", "platformid": "100", "destination": "346", "message": "m",
          "userId": "1001", "userName": "Ana", "url": "https://example.com/x", "chatid": "1",
          "filetype": "image", "fileurl": "https://example.com/f.png", "name": "n",
          "method": "GET"}


def _valid_params(op: registry.Operation) -> dict[str, Any] | None:
    given_ = {p.name: SAMPLE[p.name] for p in op.params if p.name in SAMPLE}
    try:
        return registry.validate(op, given_)[1]
    except ValidationError:
        return None


OPS = {name: (op, _valid_params(op)) for name, op in registry.OPERATIONS.items()
       if op.provider in ("afilnet", "anna")}
OPS = {k: v for k, v in OPS.items() if v[1] is not None}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    engine = make_engine(f"sqlite:///{Path(tmp_path_factory.mktemp('p')) / 'p.db'}")
    install(engine)
    return engine


# -- validation -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(registry.OPERATIONS)) | st.text(max_size=20),
       params=st.dictionaries(st.text(max_size=15), json_values, max_size=6)
       | st.text(max_size=40) | st.none())
def test_validation_accepts_or_refuses_with_a_documented_code(name: str, params: Any) -> None:
    try:
        op, clean = registry.validate(name, params)
    except (ValidationError, ConfigError) as exc:
        assert exc.code in VALIDATION_CODES, exc.code
        assert str(exc)
        return
    assert op.name == name and isinstance(clean, dict)
    json.dumps(clean, ensure_ascii=False)  # what enqueue stores


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(registry.OPERATIONS)),
       params=st.dictionaries(st.sampled_from(sorted(SAMPLE) + ["userDocType",
                                                                "userDocValue", "dataIni"]),
                              json_values, max_size=6))
def test_a_row_with_any_params_never_raises_out_of_a_worker(name: str,
                                                            params: dict[str, Any]) -> None:
    # A row INSERTed straight into the outbox, with whatever its author wrote.
    raw = json.dumps(params)
    claim = Claimed(id=1, request_key=None, account="default", provider=None, operation=name,
                    params=raw, priority=0, attempts=1, max_attempts=3, lease_token="t",
                    correlation=None, parent_id=None, schedule_id=None)
    offline = TransientError("offline", code="CONNECTION_FAILED", delivered=False)
    done = attempt.run(claim, settings=Settings(), worker="w",
                       call=lambda *_: (_ for _ in ()).throw(offline))
    assert (done.status, done.error_code) == ("queued", "CONNECTION_FAILED") or (
        done.status == "failed" and done.error_code in VALIDATION_CODES), done


# -- answers ----------------------------------------------------------------------------------


def _response(status: int, body: bytes, content_type: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body  # noqa: SLF001 - what the transport leaves after reading
    resp.headers = CaseInsensitiveDict({"Content-Type": content_type})
    resp.reason = "X"
    resp.encoding = None
    return resp


def _bodies(provider: str) -> st.SearchStrategy[bytes]:
    if provider == "afilnet":
        shaped = st.fixed_dictionaries({}, optional={
            "status": st.sampled_from(["success", "SUCCESS", "error"]) | json_values,
            "result": json_values | st.fixed_dictionaries({"list": st.lists(
                st.dictionaries(st.sampled_from(["platform", "platformid", "name",
                                                 "destination", "messageid", "message",
                                                 "sent", "issent", "status", "datetime"]),
                                json_values), max_size=3)}),
            "error": json_values})
    else:
        shaped = st.fixed_dictionaries({}, optional={
            "success": st.sampled_from([True, False, "true", "false"]) | json_values,
            "message": json_values,
            "accessData": json_values | st.dictionaries(
                st.sampled_from(["Hash", "ChatURL", "EmbeddedURL", "Expires"]), json_values),
            "structure": json_values | st.fixed_dictionaries({"Departments": st.lists(
                st.dictionaries(st.sampled_from(["Alias", "Name", "Channels"]), json_values),
                max_size=3)}),
            "userRequests": json_values,
            "alertCounter": json_values})
    as_json = shaped.map(lambda v: json.dumps(v).encode())  # ASCII: surrogates survive
    deep = st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    return st.binary(max_size=200) | as_json | deep


def _account_for() -> Any:
    return _account("default", {"afilnet": {"user": "u@example.com", "password": "pw-secret"},
                                "anna": {"url": "http://127.0.0.1:9/", "company_hash": "CH1",
                                         "user": "u", "password": "pw-secret"}})


def _check_answer(provider: str, name: str, status: int, body: bytes, ctype: str,
                  store: Engine) -> None:
    op, params = OPS[name]
    resp = _response(status, body, ctype)
    reader = afilnet.read_response if provider == "afilnet" else AnnaClient.read_response
    try:
        result = reader(op, params, resp, ["pw-secret", "CH1"])
    except ProviderError as exc:
        assert exc.code in ANSWER_CODES or exc.code.startswith("HTTP_") or (
            provider == "afilnet" and afilnet._CODE.fullmatch(exc.code)), exc.code  # noqa: SLF001
        if type(exc).__name__ == "ProtocolError":
            assert exc.http_status == status
        outcome: Any = exc
    else:
        outcome = result
    claim = Claimed(id=1, request_key=None, account="default", provider=op.provider,
                    operation=op.name, params=json.dumps(params), priority=0, attempts=1,
                    max_attempts=3, lease_token="t", correlation=None, parent_id=None,
                    schedule_id=None)

    def call(*_: Any) -> Any:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    done = attempt.run(claim, settings=Settings(accounts={"default": _account_for()}),
                       worker="w", call=call)
    assert done.status in STATUSES and done.error_code != "INTERNAL_ERROR", done
    for text in (done.response, done.error_message, done.error_code):
        if text is not None:
            text.encode("utf-8")
    if done.inbox is not None:
        lands_in, account, p, records = done.inbox
        with store.connect() as conn, conn.begin() as tx:
            inbox.write(conn, lands_in, account, p, records, None)
            tx.rollback()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), provider=st.sampled_from(["afilnet", "anna"]),
       status=st.sampled_from([200, 200, 200, 201, 204, 302, 400, 404]),
       ctype=st.sampled_from(["application/json", "text/html", "text/plain; charset=latin-1"]))
def test_any_answer_is_read_or_refused_with_a_documented_code_and_stored(
        store: Engine, data: st.DataObject, provider: str, status: int, ctype: str) -> None:
    name = data.draw(st.sampled_from(sorted(n for n, (op, _) in OPS.items()
                                            if op.provider == provider)))
    body = data.draw(_bodies(provider))
    _check_answer(provider, name, status, body, ctype, store)


def test_a_known_nasty_answer(store: Engine) -> None:
    body = json.dumps({"status": "success", "result": {"list": [
        {"platform": "whatsapp", "platformid": "1", "name": "\ud800", "sent": 10**40}]}})
    _check_answer("afilnet", "chat.getchatchannels", 200, body.encode(), "application/json",
                  store)


def test_a_parser_tripping_on_an_odd_value_is_a_protocol_error_not_a_bug(store: Engine) -> None:
    # "²".isdigit() is True and int("²") raises: such slips become PROTOCOL_ERROR with the
    # answer's status, never INTERNAL_ERROR.
    body = json.dumps({"success": True, "alertCounter": "²"}).encode()
    name = next(n for n, (op, _) in OPS.items() if op.lands_in == "anna_alert_counter")
    _check_answer("anna", name, 200, body, "application/json", store)
    op, params = OPS[name]
    with pytest.raises(ProviderError) as e:
        AnnaClient.read_response(op, params, _response(200, body, "application/json"), [])
    assert (e.value.code, e.value.http_status) == ("PROTOCOL_ERROR", 200)

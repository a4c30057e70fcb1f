"""A used request_key: the same request again gets its id back, any other is refused with
IDEMPOTENCY_CONFLICT (51014). One rule (sqlbridge/idempotency.py) with two halves: Python's,
on every database, and the T-SQL of sqlbridge.enqueue, which every procedure taking
@request_key calls. The same pairs run through both."""

from __future__ import annotations

import json
import random
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from sqlbridge import idempotency, registry, tsql
from sqlbridge.db import make_engine
from sqlbridge.errors import ValidationError
from sqlbridge.install import install
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox

from .conftest import MSSQL_URL, NO_MSSQL, engine_limits
from .jsonspell import Num, changed, json_objects, numbers, spell
from .test_mssql import autocommit, call_batch, hostile_call, hostile_value
from .test_mssql import tsql as declare

DEEP = 32 * "[" + 32 * "]"  # containers down to depth 32: beyond MAX_DEPTH
# (stored params, new params, the same by the rule?, "error" where Babelfish refuses a
# number beyond PostgreSQL's numeric range with its own error instead of deciding).
PAIRS: list[tuple[str | None, str, bool, str | None]] = [
    ('{"a":1}', '{"a":1}', True, None),
    ('{"a":1,"b":"x"}', '{ "b" : "x", "a" : 1 }', True, None),  # key order, blanks
    ('{"u":"https://a.example/b"}', r'{"u":"https:\/\/a.example\/b"}', True, None),  # FOR JSON
    ('{"s":"é😀\\"\\\\"}', r'{"s":"\u00e9\ud83d\ude00\u0022\u005C"}', True, None),
    ('{"s":"tab\\t"}', r'{"s":"tab\u0009"}', True, None),
    ('{"n":1}', '{"n":1.0}', True, None),
    ('{"n":1}', '{"n":1e0}', True, None),
    ('{"n":100}', '{"n":1E+2}', True, None),
    ('{"n":0.5}', '{"n":50e-2}', True, None),
    ('{"n":-0}', '{"n":0.0}', True, None),
    ('{"n":-1.5}', '{"n":-15E-1}', True, None),
    ('{"n":12345678901234567890}', '{"n":1.234567890123456789e19}', True, None),
    ('{"n":0.1}', '{"n":0.10000000000000001}', False, None),  # never rounded to a float
    ('{"n":9007199254740993}', '{"n":9007199254740992}', False, None),
    ('{"n":1}', '{"n":-1}', False, None),
    ('{"b":true}', '{"b":1}', False, None),
    ('{"z":null}', '{}', False, None),
    ('{"z":null}', '{"z":false}', False, None),
    ('{"z":"1"}', '{"z":1}', False, None),
    ('{"s":"a"}', '{"s":"A"}', False, None),
    ('{"s":"a"}', '{"s":"a "}', False, None),
    ('{"s a":1}', '{"s a ":1}', False, None),
    ('{"s":"\\u00e9"}', '{"s":"e\\u0301"}', False, None),  # NFC and NFD: other characters
    ('{"a":[1,2]}', '{"a":[2,1]}', False, None),
    ('{"a":[]}', '{"a":{}}', False, None),
    ('{"a":["x"]}', '{"a":{"0":"x"}}', False, None),
    ('{"a":{"b":{"c":[1,{"d":"y"}]}}}', '{"a":{"b":{"c":[1.0,{"d":"\\u0079"}]}}}', True, None),
    ('{"a":{"b":{"c":[1,{"d":"y"}]}}}', '{"a":{"b":{"c":[1,{"d":"y","e":0}]}}}', False, None),
    ('{"k":1,"k":1}', '{"k":1}', False, None),  # a repeated key: never decided
    ('{"o":{"k":1,"k":2}}', '{"o":{"k":2}}', False, None),
    ('{"n":1e131071}', '{"n":10E131070}', True, None),  # 131072 digits: still compared
    ('{"n":1e131072}', '{"n":1E131072}', False, "error"),  # beyond numeric: undecided
    ('{"n":1e-16383}', '{"n":0.1E-16382}', True, None),
    ('{"n":1e-16384}', '{"n":1E-16384}', False, "error"),
    ('{"a":' + DEEP[1:-1] + "}", '{"a": ' + DEEP[1:-1] + "}", True, None),  # depth 31
    ('{"a":' + DEEP + "}", '{"a": ' + DEEP + "}", False, None),  # depth 32: never decided
    ("[1]", "{}", False, None),
]
# Stored texts the outbox's CHECK constraints refuse on both databases, so only Python's half
# could meet them (a NULL or blank params means {}, as in the procedures).
UNSTORABLE: list[tuple[str | None, str, bool, str | None]] = [
    (None, "{}", True, None),
    ("", "{ }", True, None),
    ("   ", "{}", True, None),
    ("not json", "{}", False, None),
    ('{"n":NaN}', '{"n":0}', False, None),
]


def pair_id(pair: tuple[str | None, str, bool, str | None]) -> str:
    return f"{pair[0]!r:.30}-{pair[1]!r:.30}"


# -- the rule, in Python ---------------------------------------------------------------------

@pytest.mark.parametrize("pair", PAIRS + UNSTORABLE, ids=[pair_id(p) for p in PAIRS + UNSTORABLE])
def test_the_rule_on_known_pairs(pair: tuple[str | None, str, bool, str | None]) -> None:
    stored, new, same, _ = pair
    assert idempotency.same_params(stored, new) is same


@pytest.mark.parametrize(("number", "key"), [
    ("0", "0"), ("-0", "0"), ("0.000e5", "0"), ("1", "1e1"), ("10", "1e2"), ("1.0", "1e1"),
    ("1e1", "1e2"), ("0.01", "1e-1"), ("-1.25E+3", "-125e4"), ("120.50", "1205e3"),
    ("1e2147483647", None), ("1e2147483648", None), ("1e-2147483648", None),
    ("1e131071", "1e131072"), ("1e131072", None), ("1e-16383", "1e-16382"),
    ("1.0e-16383", None),  # 16384 digits after the point as written
])
def test_number_keys(number: str, key: str | None) -> None:
    assert idempotency.number_key(number) == key


def test_what_differs_is_named_operation_account_parameters() -> None:
    stored = ("chat.getchats", "default", '{"platform":"whatsapp"}')
    assert idempotency.differences(stored, stored) == []
    assert idempotency.differences(stored, ("chat.getmessages", "Default",
                                            '{"platform":"telegram"}')) == list(
        idempotency.FIELDS)
    with pytest.raises(ValidationError) as e:
        idempotency.check("k" * 150, stored, (*stored[:2], "{}"), "request 7")
    assert e.value.code == "IDEMPOTENCY_CONFLICT" and e.value.param == "request_key"
    assert str(e.value) == (f"request_key '{'k' * 97}...' is already used by request 7 "
                            "(chat.getchats, account default); this request differs in "
                            "parameters: use a new key, or send the same request to get that "
                            "id back")


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=6)


@settings(max_examples=300, deadline=None)
@given(value=json_objects(TEXT), seeds=st.tuples(st.integers(), st.integers()),
       change=st.booleans())
def test_any_spelling_of_a_value_is_the_same_and_any_change_differs(
        value: dict[str, Any], seeds: tuple[int, int], change: bool) -> None:
    a, b = random.Random(seeds[0]), random.Random(seeds[1])
    other = changed(value, b) if change else value
    assert idempotency.same_params(spell(value, a), spell(other, b)) is not change


def test_a_value_spelled_by_python_and_by_for_json_is_the_same() -> None:
    value = {"url": "https://a.example/é", "n": [1, 2.5, True, None], "o": {"k": "\u2028"}}
    python = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for_json = ('{"n":[1,2.5000,true,null],"o":{"k":"\\u2028"},'
                '"url":"https:\\/\\/a.example\\/\\u00e9"}')
    assert idempotency.same_params(python, for_json)


# -- Python's enqueue paths on SQLite ------------------------------------------------------------

def http_params(payload: str) -> str:
    return '{"url":"https://a.example/x","method":"POST","payload":' + payload + "}"


def python_verdict(queue: Queue, stored: str | None, new: str, key: str) -> bool:
    """Python's rule as Queue.enqueue applies it: a row stored with ``stored`` (as a plain
    INSERT would), then ``new`` enqueued under its key. True: the id came back."""
    with queue.engine.begin() as c:
        first = c.execute(insert(outbox).values(
            request_key=key, provider="http", operation="http.request", params=stored)
            .returning(outbox.c.id)).scalar_one()
    try:
        again = queue.enqueue("http.request", new, request_key=key)
    except ValidationError as e:
        assert e.code == "IDEMPOTENCY_CONFLICT" and f"request {first}" in str(e)
        return False
    assert (again.id, again.created) == (first, False)
    return True


# Numbers Python's validate keeps exactly (it reads JSON numbers as int or float): whole
# numbers a float holds exactly, and floats' own shortest spellings.
PY_NUMBERS = (st.integers(min_value=-(2 ** 53), max_value=2 ** 53).map(lambda n: Num(str(n)))
              | numbers(floats_only=True))


def payload_pair(value: Any, seeds: tuple[int, int], change: bool) -> tuple[str, str]:
    a, b = random.Random(seeds[0]), random.Random(seeds[1])
    return (http_params(spell(value, a)),
            http_params(spell(changed(value, b, float_safe=True) if change else value, b)))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_objects(TEXT, PY_NUMBERS), seeds=st.tuples(st.integers(), st.integers()),
       change=st.booleans())
def test_queue_enqueue_applies_the_rule_to_any_spelling(
        sqlite_queue: Queue, value: dict[str, Any], seeds: tuple[int, int],
        change: bool) -> None:
    stored, new = payload_pair(value, seeds, change)
    assert python_verdict(sqlite_queue, stored, new, f"k-{uuid.uuid4()}") is not change


@pytest.fixture
def sqlite_queue(tmp_path: Any) -> Iterator[Queue]:
    engine = make_engine(f"sqlite:///{tmp_path / 'idem.db'}")
    install(engine)
    yield Queue(engine)
    engine.dispose()


def test_enqueue_and_enqueue_many_name_what_differs(sqlite_queue: Queue) -> None:
    first = sqlite_queue.enqueue("chat.getchats", {"platform": "whatsapp", "platformid": "1"},
                                 request_key="k")
    same = sqlite_queue.enqueue("chat.getchats", '{"platformid":"1","platform":"WhatsApp"}',
                                request_key="k")
    assert (same.id, same.created) == (first.id, False)  # validated: the same request
    with pytest.raises(ValidationError, match=r"differs in account, parameters:"):
        sqlite_queue.enqueue("chat.getchats", {"platform": "telegram", "platformid": "1"},
                             account="other", request_key="k")
    other = sqlite_queue.enqueue("messenger.structure", {}, request_key="j").id
    with pytest.raises(ValidationError, match=rf"^request_key 'j' is already used "
                                              rf"by request {other} \(messenger.structure, "
                                              r"account default\); this request differs in "
                                              r"operation: use a new key"):
        sqlite_queue.enqueue_many([{"operation": "chat.getchatchannels", "request_key": "j"}])
    with sqlite_queue.engine.connect() as c:
        assert c.execute(select(outbox.c.id)).scalars().all() == [first.id, other]


# -- every procedure that takes @request_key goes through the check ------------------------------

def test_every_procedure_taking_a_request_key_passes_it_to_the_checked_enqueue() -> None:
    script = tsql.procedures_script()
    # Stub-then-ALTER, or drop-then-CREATE for one with a schema-qualified parameter type.
    blocks = re.split(r"^(?:ALTER|CREATE) PROCEDURE ", script, flags=re.M)[1:]
    keyed = {b.split()[0]: b for b in blocks if "@request_key NVARCHAR(200)" in b}
    assert {f"sqlbridge.{op.procedure}" for op in registry.OPERATIONS.values()} \
        | {"sqlbridge.enqueue", "sqlbridge.afilnet_call"} == set(keyed)
    assert "THROW 51014" in keyed.pop("sqlbridge.enqueue")
    for name, body in keyed.items():
        assert re.search(r"EXEC sqlbridge\.enqueue [^;]*@request_key = @request_key", body), name
        assert "INSERT INTO sqlbridge.outbox" not in body, name


# -- the procedures on SQL Server / Babelfish -----------------------------------------------

STORE = declare("INSERT INTO sqlbridge.outbox (request_key, provider, operation, params) "
                "VALUES (:k, N'http', N'http.request', :p)")
ENQUEUE = declare(call_batch("EXEC sqlbridge.enqueue @operation = N'http.request', "
                             "@params = :p, @request_key = :k"))
ENQUEUE_AS = declare(call_batch("EXEC sqlbridge.enqueue @operation = :op, @params = :p, "
                                "@account = :account, @request_key = :k"))
KEY_ROWS = declare("SELECT id FROM sqlbridge.outbox WHERE request_key = :k")
CLEAN = declare("DELETE FROM sqlbridge.outbox_attempt; DELETE FROM sqlbridge.outbox;")


@pytest.fixture(scope="module")
def server() -> Iterator[Engine]:
    """The server, installed once for this module (the pairs use their own keys)."""
    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    install(engine)
    with engine.begin() as c:
        c.execute(text(CLEAN))
    yield engine
    engine.dispose()


def procedure_verdict(server: Engine, stored: str | None, new: str) -> bool | str:
    """sqlbridge.enqueue's answer for ``new`` under a key whose row holds ``stored``:
    True (the id came back), False (51014), or the engine's error text."""
    key = f"k-{uuid.uuid4()}"
    with autocommit(server) as c:
        c.execute(text(STORE), {"k": key, "p": stored})
        first = c.execute(text(KEY_ROWS), {"k": key}).scalar_one()
        try:
            again = c.execute(text(ENQUEUE), {"k": key, "p": new}).scalar_one()
        except DBAPIError as e:
            if "(51014)" in str(e.orig):
                assert f"is already used by request {first} " in str(e.orig)
                return False
            return str(e.orig)
        assert c.execute(text(KEY_ROWS), {"k": key}).scalars().all() == [first]
    assert again == first
    return True


@pytest.mark.parametrize("pair", PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_the_procedure_agrees_with_python_on_known_pairs(
        server: Engine, pair: tuple[str | None, str, bool, str | None]) -> None:
    stored, new, same, on_babelfish = pair
    verdict = procedure_verdict(server, stored, new)
    if on_babelfish and "babelfish" in engine_limits(server):
        # Documented (docs/sqlserver.md, Babelfish): its JSON functions read numbers as
        # PostgreSQL numeric, and fail beyond that range; TRY/CATCH cannot catch it.
        assert "value overflows numeric format" in str(verdict)
        return
    assert verdict is same is idempotency.same_params(stored, new)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_objects(TEXT, PY_NUMBERS), seeds=st.tuples(st.integers(), st.integers()),
       change=st.booleans())
def test_python_on_sqlite_and_the_procedure_agree_on_any_spelling(
        server: Engine, sqlite_queue: Queue, value: dict[str, Any], seeds: tuple[int, int],
        change: bool) -> None:
    stored, new = payload_pair(value, seeds, change)
    by_python = python_verdict(sqlite_queue, stored, new, f"k-{uuid.uuid4()}")
    assert procedure_verdict(server, stored, new) is by_python is (not change)


@pytest.mark.parametrize(("change", "differs"), [
    ({"account": "Default"}, "account"),  # exact: case counts
    ({"account": "default "}, "account"),  # and trailing spaces
    ({"op": "sms.sendsmsx"}, "operation"),
    ({"op": "sms.sendsmsx", "account": "other", "p": '{"to":"2"}'},
     "operation, account, parameters"),
])
def test_operation_and_account_must_match_exactly(server: Engine, change: dict[str, str],
                                                  differs: str) -> None:
    key = f"k-{uuid.uuid4()}"
    args = {"op": "sms.sendsms", "p": '{"to":"1"}', "account": "default", "k": key}
    with autocommit(server) as c:
        first = c.execute(text(ENQUEUE_AS), args).scalar_one()
        assert c.execute(text(ENQUEUE_AS), args).scalar_one() == first
        with pytest.raises(DBAPIError) as e:
            c.execute(text(ENQUEUE_AS), {**args, **change})
        assert c.execute(text(KEY_ROWS), {"k": key}).scalars().all() == [first]
    assert "(51014)" in str(e.value.orig)
    assert f"this request differs in {differs}: " in str(e.value.orig)


def test_the_procedure_s_sentence_is_python_s(server: Engine) -> None:
    key = "k-" + "é" * 120 + str(uuid.uuid4())
    stored = ("sms.sendsms", "default", '{"to":"1"}')
    with autocommit(server) as c:
        first = c.execute(text(ENQUEUE_AS), {"op": stored[0], "account": stored[1],
                                             "p": stored[2], "k": key}).scalar_one()
        with pytest.raises(DBAPIError) as e:
            c.execute(text(ENQUEUE_AS), {"op": "sms.sendsms", "account": "other",
                                         "p": '{"to":"2"}', "k": key})
    with pytest.raises(ValidationError) as py:
        idempotency.check(key, stored, ("sms.sendsms", "other", '{"to":"2"}'),
                          f"request {first}")
    assert str(py.value) in str(e.value.orig)


OPS = list(registry.OPERATIONS.values())


def keyed_call(op: registry.Operation) -> str:
    """The endpoint procedure of ``op`` with every parameter, a request key and an account."""
    call = hostile_call(op)[0]
    return call_batch(call + (", " if op.params else " ")
                      + "@request_key = :request_key, @account = :account")


for _op in OPS:
    declare(keyed_call(_op))


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_every_endpoint_procedure_refuses_a_key_reused_for_another_request(
        server: Engine, op: registry.Operation) -> None:
    given_ = {p.name: hostile_value(p, engine_limits(server)) for p in op.params}
    key = f"k-{uuid.uuid4()}"
    args = {**given_, "request_key": key, "account": "default"}
    free = [p.name for p in op.params if p.type == "str" and not p.allowed]
    changes = [({"account": "other"}, "account")] + (
        [({free[0]: "another value"}, "parameters")] if free else [])
    with autocommit(server) as c:
        first = c.execute(text(keyed_call(op)), args).scalar_one()
        assert c.execute(text(keyed_call(op)), args).scalar_one() == first
        for change, differs in changes:
            with pytest.raises(DBAPIError) as e:
                c.execute(text(keyed_call(op)), {**args, **change})
            assert "(51014)" in str(e.value.orig)
            assert f"differs in {differs}:" in str(e.value.orig)
        assert c.execute(text(KEY_ROWS), {"k": key}).scalars().all() == [first]


CHATS = declare(call_batch("EXEC sqlbridge.afilnet_chat_getchats @platformid = N'100', "
                           "@platform = N'WhatsApp', @request_key = :k"))


def test_python_and_the_procedures_recognise_each_other_s_requests(server: Engine) -> None:
    queue = Queue(server)
    read = {"platform": "whatsapp", "platformid": "100"}
    key = f"k-{uuid.uuid4()}"
    first = queue.enqueue("chat.getchats", read, request_key=key).id
    with autocommit(server) as c:  # spelled by FOR JSON, in another order: the same
        assert c.execute(text(CHATS), {"k": key}).scalar_one() == first
    key = f"k-{uuid.uuid4()}"
    with autocommit(server) as c:
        first = c.execute(text(CHATS), {"k": key}).scalar_one()
    assert queue.enqueue("chat.getchats", read, request_key=key).id == first
    with pytest.raises(ValidationError, match="differs in parameters"):
        queue.enqueue("chat.getchats", {**read, "platformid": "101"}, request_key=key)


WARM = declare(call_batch("EXEC sqlbridge.enqueue @operation = N'sms.sendsms'"))
ROUNDS = 5


def test_concurrent_callers_with_one_key_get_one_request(server: Engine) -> None:
    """Callers racing with one new key, a few rounds: one row per key; the same request gets
    its id, another request 51014, never a duplicate-key error (Babelfish's HOLDLOCK alone let
    two callers through)."""
    keys = [f"k-{uuid.uuid4()}" for _ in range(ROUNDS)]
    params = ['{"n":1}'] * 6 + ['{"n":1.0}', '{"n":2}']
    start = threading.Barrier(len(params))
    results: list[tuple[str, str, int | str]] = []

    def call(p: str) -> None:
        with autocommit(server) as c:
            c.execute(text(WARM))  # connected, and enqueue compiled, before the race
            for key in keys:
                start.wait()
                try:
                    results.append((key, p, c.execute(text(ENQUEUE_AS), {
                        "op": "sms.sendsms", "account": "default", "p": p,
                        "k": key}).scalar_one()))
                except DBAPIError as e:
                    results.append((key, p, str(e.orig)))

    threads = [threading.Thread(target=call, args=(p,)) for p in params]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(params) * ROUNDS
    for key in keys:
        with server.connect() as c:
            [row] = c.execute(text(KEY_ROWS), {"k": key}).scalars().all()
        winner = next(p for k, p, r in results if k == key and r == row)
        for k, p, result in results:
            if k != key:
                continue
            if idempotency.same_params(winner, p):
                assert result == row, (p, result)
            else:
                assert "(51014)" in str(result), (p, result)

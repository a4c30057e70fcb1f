"""Bulk enqueue: Queue.enqueue_many and ``sqlbridge enqueue --file``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from sqlbridge import bulk
from sqlbridge.cli import EXIT_INVALID, main
from sqlbridge.errors import ValidationError
from sqlbridge.queue import Queue
from sqlbridge.schema import outbox

SEND = "chat.sendmessage"


def msg(i: int, **extra: Any) -> dict[str, Any]:
    return {"operation": SEND, "params": {"platform": "WhatsApp", "platformid": "100",
                                          "destination": f"3460{i:07d}",
                                          "message": f"bulk {i} olá 😀"}, **extra}


def count(queue: Queue) -> int:
    with queue.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(outbox)).scalar_one())


def row(queue: Queue, rid: int) -> dict[str, Any]:
    got = queue.get(rid)
    return {k: v for k, v in got.items() if k not in ("id", "created_at", "available_at")}


def test_enqueue_many_stores_what_enqueue_stores_in_input_order(queue: Queue) -> None:
    requests = [msg(i, priority=i % 3, correlation=f"c{i}") for i in range(7)]
    results = queue.enqueue_many(requests, chunk=3)
    assert [r.created for r in results] == [True] * 7
    assert [r.id for r in results] == sorted(r.id for r in results)
    single = queue.enqueue(SEND, requests[4]["params"], priority=1, correlation="c4")
    assert row(queue, results[4].id) == row(queue, single.id)
    assert json.loads(queue.get(results[0].id)["params"])["platform"] == "whatsapp"


def test_request_keys_are_honoured_against_the_table_and_within_the_input(
        queue: Queue) -> None:
    old = queue.enqueue(SEND, msg(1)["params"], request_key="k-old").id
    requests = [msg(1, request_key="k-old"), msg(2, request_key="k-new"), msg(3),
                msg(2, request_key="k-new"), msg(5, request_key="k-late")]
    results = queue.enqueue_many(requests, chunk=2)  # the repeat of k-new is in a later chunk
    assert (results[0].id, results[0].created) == (old, False)
    assert results[1].created and results[2].created and results[4].created
    assert (results[3].id, results[3].created) == (results[1].id, False)
    again = queue.enqueue_many([msg(2, request_key="k-new"), msg(9, request_key="k-x"),
                                msg(9, request_key="k-x")])  # repeat inside one chunk
    assert (again[0].id, again[0].created) == (results[1].id, False)
    assert again[1].created and (again[2].id, again[2].created) == (again[1].id, False)
    assert count(queue) == 5  # k-old, k-new, the keyless one, k-late, k-x


def test_a_key_reused_for_another_request_is_a_conflict_as_in_enqueue(queue: Queue) -> None:
    queue.enqueue(SEND, msg(1)["params"], request_key="k")
    with pytest.raises(ValidationError, match="already used by request") as stored:
        queue.enqueue_many([msg(2, request_key="k")])
    with pytest.raises(ValidationError, match="already used by an earlier line") as inside:
        queue.enqueue_many([msg(3, request_key="j"), msg(4, request_key="j")])
    assert stored.value.code == inside.value.code == "IDEMPOTENCY_CONFLICT"
    assert count(queue) == 1


def test_not_before_is_utc_and_a_bad_request_names_its_position(queue: Queue) -> None:
    [r] = queue.enqueue_many([msg(1, not_before="2030-01-01T10:00:00+02:00")])
    assert str(queue.get(r.id)["available_at"]).startswith("2030-01-01 08:00:00")
    with pytest.raises(ValidationError, match=r"^request 3: priority must be a whole number"):
        queue.enqueue_many([msg(1), msg(2), msg(3, priority="high"), msg(4)], chunk=2)
    assert count(queue) == 3  # the first chunk (two rows) committed, the bad one's did not


@pytest.mark.parametrize(("request_", "says"), [
    ({"params": {}}, "operation is required"),
    (msg(1, account=""), "account must be a name"),
    (msg(1, max_attempts=True), "max_attempts must be a whole number"),
    (msg(1, not_before="tomorrow"), "not_before must be an ISO 8601 time"),
    (msg(1, correlation="x" * 401), "correlation must be at most 400"),
    ({**msg(1), "params": [1]}, "params must be a JSON object"),
    (msg(1, colour="red"), "unknown field 'colour'; allowed: operation, params"),
    ({**msg(1), "params": {**msg(1)["params"], "message": "a\ud800"}}, "lone surrogate"),
])
def test_each_field_is_checked(queue: Queue, request_: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        queue.request_row(request_)


# -- the CLI -----------------------------------------------------------------------------------

def run(db_url: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["enqueue", "--database-url", db_url, *args],
                              catch_exceptions=False)


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_cli_queues_a_file_and_a_second_run_with_keys_adds_nothing(
        queue: Queue, db_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(msg(i, request_key=f"k{i}")).encode() for i in range(25)]
    f = write_lines(tmp_path / "r.jsonl", [b"\xef\xbb\xbf" + lines[0], b"", *lines[1:]])
    first = run(db_url, "--file", str(f))
    assert first.exit_code == 0, first.output
    assert first.output.startswith("25 requests read: 25 queued (ids ")
    second = run(db_url, "--file", str(f))
    assert "0 queued, 25 already queued" in second.output
    assert count(queue) == 25


def test_cli_reports_every_bad_line_by_number_and_queues_nothing(
        queue: Queue, db_url: str, tmp_path: Path) -> None:
    good = json.dumps(msg(1)).encode()
    f = write_lines(tmp_path / "bad.jsonl", [
        good, b"[1, 2]", b'{"operation": "nope"}', b"\xff\xfe", good,
        b'{"operation": "chat.sendmessage", "priority": NaN}',
        b"[" * 100_000, b'{"operation": "chat.sendmessage", "priority": 1e400}',
        b'"' + b"x" * (bulk.MAX_LINE_BYTES + 10) + b'"', good])
    result = run(db_url, "--file", str(f))
    assert result.exit_code == EXIT_INVALID
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert "nothing was queued" in text and "Traceback" not in text
    for number in (2, 3, 4, 6, 7, 8, 9):
        assert f"line {number}" in text, (number, text)
    for number in (1, 5, 10):
        assert f"line {number} " not in text and f"line {number}:" not in text
    assert "longer than 4 MB" in text and "not valid UTF-8" in text
    assert count(queue) == 0


def test_cli_file_refuses_per_request_options(db_url: str, tmp_path: Path) -> None:
    f = write_lines(tmp_path / "r.jsonl", [json.dumps(msg(1)).encode()])
    assert run(db_url, SEND, "--file", str(f)).exit_code == 2
    assert run(db_url, "--file", str(f), "--request-key", "k").exit_code == 2
    assert run(db_url).exit_code == 2


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.builds(lambda d: json.dumps(d).encode(),
                                    st.dictionaries(st.sampled_from(
                                        ["operation", "params", "priority", "account",
                                         "request_key", "not_before", "max_attempts"]),
                                        st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                                  st.floats(), st.booleans()),
                                        max_size=5))),
                max_size=8))
def test_any_file_is_queued_or_refused_with_a_line_number_never_a_traceback(
        queue: Queue, db_url: str, tmp_path: Path, lines: list[bytes]) -> None:
    f = tmp_path / "any.jsonl"
    f.write_bytes(b"\n".join(lines))
    before = count(queue)
    result = run(db_url, "--file", str(f))
    assert result.exit_code in (0, EXIT_INVALID), result.output
    if result.exit_code == EXIT_INVALID:
        assert "line " in result.output and count(queue) == before


def test_the_readme_s_set_based_insert_parses_as_t_sql(tmp_path: Path) -> None:
    from tests.test_tsql_parse import parse_errors

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert "INSERT INTO sqlbridge.outbox" in example and "FOR JSON PATH" in example
    assert parse_errors(example, tmp_path) == ""

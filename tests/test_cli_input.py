"""Hostile input at the command line: every mistake is one line with a documented exit code,
never a traceback; long parameters come from a file or stdin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlbridge.cli import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_USAGE, main
from sqlbridge.db import make_engine
from sqlbridge.install import install
from sqlbridge.queue import Queue


def run(*args: str, input: str | bytes | None = None,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input, env=env)
    # Only SystemExit may leave a command: anything else is a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path / 'cli.db'}"
    install(make_engine(u))
    return u


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


SEND = ["chat.sendmessage", "-p", "platform=whatsapp", "-p", "platformid=100",
        "-p", "destination=346"]


@pytest.mark.parametrize("args, says", [
    (["--json", '{"platform": "whatsapp", "platformid": "1", "destination": "2", '
      '"message": "\\ud800"}'], "lone surrogate"),
    (["--json", '{"message": "\udcff"}'], "not valid UTF-8"),
    (["-p", "message=caf\udce9"], "not valid UTF-8"),
    (["-p", "message=x", "--priority", str(2**70)], "priority"),
    (["-p", "message=x", "--wait", "--timeout", "nan"], "timeout"),
    (["-p", "message=x", "--wait", "--timeout", "inf"], "timeout"),
    (["--json", "[1, 2]"], "JSON object"),
    (["--json", "{" * 100_000], "JSON"),
    (["--json", '{"message": ' + "[" * 100_000 + "]" * 100_000 + "}"], "nested too deeply"),
    (["--json", "@/nonexistent/params.json"], "cannot read"),
])
def test_bad_enqueue_input_is_one_line_with_the_usage_exit_code(
        url: str, args: list[str], says: str) -> None:
    code, out, err = run("enqueue", *SEND[:1], *args, "--database-url", url)
    assert code == EXIT_USAGE, err
    assert says in one_line(err) and out == ""
    assert Queue(make_engine(url)).summary()["by_status"] == {}


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_an_id_beyond_bigint_is_a_usage_error(url: str, command: str) -> None:
    code, _, err = run(command, str(2**70), "--database-url", url)
    assert code == EXIT_USAGE and "2" in one_line(err)


def test_a_100000_character_message_comes_from_a_file_or_stdin(url: str,
                                                                tmp_path: Path) -> None:
    message = ("Olá 😀 & # % " * 10_000)[:100_000]
    params = {"platform": "whatsapp", "platformid": "100", "destination": "346",
              "message": message}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(params, ensure_ascii=False), encoding="utf-8")
    code, out, err = run("enqueue", "chat.sendmessage", "--json", f"@{f}", "--database-url", url)
    assert code == 0, err
    from_file = int(out)
    code, out, err = run("enqueue", "chat.sendmessage", "--json", "-", "--database-url", url,
                         input=json.dumps(params).encode())
    assert code == 0, err
    q = Queue(make_engine(url))
    for rid in (from_file, int(out)):
        assert json.loads(q.get(rid)["params"])["message"] == message
    code, _, err = run("enqueue", "chat.sendmessage", "--json", "-", "--database-url", url,
                       input=b'{"message": "\xff"}')
    assert code == EXIT_USAGE and "not UTF-8" in one_line(err)


@pytest.mark.parametrize("argv", [["enqueue", *SEND, b"-p", b"message=caf\xe9"],
                                  ["schedule", "add", b"caf\xe9", "chat.getchatchannels"],
                                  ["take", "--consumer", b"\xff"]])
def test_argv_that_is_not_utf8_is_refused_by_the_real_program(url: str,
                                                               argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "sqlbridge", *argv, "--database-url", url],
                          capture_output=True, timeout=120)
    assert proc.returncode == EXIT_USAGE
    line = one_line(proc.stderr.decode())
    assert line.startswith("error: argument ") and line.endswith("is not valid UTF-8 text")


@pytest.mark.parametrize("interval", ["nan", "inf", "1e400", "-5m", "99999d"])
def test_schedule_intervals_that_are_not_finite_spans_are_refused(url: str,
                                                                  interval: str) -> None:
    code, _, err = run("schedule", "add", "s", "chat.getchatchannels", "--interval", interval,
                       "--database-url", url)
    assert code == EXIT_INVALID and "interval" in one_line(err)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=20), value=st.text(max_size=200),
       json_text=st.one_of(st.none(), st.text(max_size=200),
                           st.dictionaries(st.text(max_size=10),
                                           st.one_of(st.text(max_size=30), st.integers(),
                                                     st.floats(), st.booleans(), st.none()),
                                           max_size=4).map(json.dumps)),
       operation=st.sampled_from(["chat.sendmessage", "chat.getchats", "http.request",
                                  "sms.sendsms", "x"]))
def test_any_parameter_text_is_queued_or_refused_in_one_line(
        url: str, name: str, value: str, json_text: str | None, operation: str) -> None:
    args = ["enqueue", operation, "-p", f"{name}={value}", "--database-url", url]
    if json_text is not None and not json_text.startswith(("@", "-")):
        args += ["--json", json_text]
    code, out, err = run(*args)
    assert code in (0, EXIT_USAGE, EXIT_INVALID), (code, err)
    if code == 0:
        assert out.strip().isdigit()
    else:
        assert one_line(err).startswith("error: ")


def test_wait_without_a_worker_prints_the_id_first_and_asks_about_the_worker(url: str) -> None:
    code, out, err = run("enqueue", "chat.getchatchannels", "--wait", "--timeout", "0.2",
                         "--database-url", url)
    assert code == EXIT_TIMEOUT
    first, last = err.strip().splitlines()[0], err.strip().splitlines()[-1]
    rid = first.split()[1]
    assert first.startswith(f"request {rid} queued")
    assert last == f"request {rid} still queued after 0.2s: is a worker running?"


def test_ctrl_c_during_wait_names_the_queued_request(url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sqlbridge", "enqueue",
                             "chat.getchatchannels", "--wait", "--timeout", "600",
                             "--database-url", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the id comes before the wait starts
    rid = first.split()[1]
    os.kill(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert f"request {rid} stays queued" in rest and "Traceback" not in rest


@pytest.mark.parametrize("args", [["--lease", "0"], ["--poll-interval", "-1"],
                                  ["--lease", "nan"], ["--poll-interval", "inf"]])
def test_worker_options_out_of_range_are_usage_errors(url: str, args: list[str]) -> None:
    code, _, err = run("worker", "--once", *args, "--database-url", url)
    assert code == EXIT_USAGE and one_line(err).startswith("error: ")


def test_log_level_is_case_insensitive(url: str) -> None:
    code, out, err = run("worker", "--once", "--log-level", "debug", "--database-url", url)
    assert code == 0, err
    assert "processed: 0 succeeded" in out


def test_sandbox_on_a_busy_port_and_demo_on_an_unwritable_path_are_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run("sandbox", "--port", str(port))
    assert code == 3 and "choose another --port" in one_line(err)
    code, _, err = run("demo", "--database-url", "sqlite:////proc/no-such-dir/demo.db")
    assert code == 3 and "cannot write" in one_line(err)


COMMANDS = [["enqueue"], ["show"], ["retry"], ["cancel"], ["status"], ["purge", "--dry-run"],
            ["schedule", "add"], ["schedule", "remove"], ["schedule", "run-now"],
            ["schedule", "list"], ["take"]]
ARG = st.one_of(st.text(max_size=30),
                # Any bytes, as Python hands argv to the program (PEP 383 surrogateescape).
                st.binary(max_size=20).map(lambda b: os.fsdecode(b.replace(b"\0", b""))),
                st.sampled_from(["--priority", "--timeout", "--older-than", "--interval",
                                 "--json", "-p", "--account", "--consumer", "--max", "1d",
                                 "chat.getchats", "sync.chats", "nan", "-1", str(2**70),
                                 "\udcff", "\ud800", "30"]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), args=st.lists(ARG, max_size=5))
def test_any_command_line_ends_with_a_documented_code_and_at_most_one_error_line(
        url: str, command: list[str], args: list[str]) -> None:
    code, _, err = run(*command, *args, "--database-url", url)
    assert code in range(8), (code, err)
    if code:
        assert one_line(err).startswith("error: ")


@given(st.one_of(st.text(max_size=20),
                 st.from_regex(r"-?\d{1,400}(\.\d{0,5})?(e\d{1,3})?[smhdSMHD]?", fullmatch=True)))
def test_an_age_is_a_positive_bounded_number_of_seconds_or_a_sentence(text: str) -> None:
    from sqlbridge.durations import MAX_AGE_SECONDS, parse_age

    try:
        seconds = parse_age(text)
    except ValueError as exc:
        assert "30d, 12h, 90m or 45s" in str(exc)
        return
    assert 0 < seconds <= MAX_AGE_SECONDS and text.strip()[-1].lower() in "smhd"


def queue_with_one_request_finished_40_days_ago(url: str) -> Queue:
    q = Queue(make_engine(url))
    q.enqueue("chat.getchatchannels")
    with q.engine.begin() as c:
        c.exec_driver_sql("UPDATE outbox SET status = 'succeeded', "
                          "finished_at = datetime('now', '-40 days')")
    return q


def test_purge_on_a_terminal_asks_first(url: str) -> None:
    import pty

    q = queue_with_one_request_finished_40_days_ago(url)
    for answer, says, left in ((b"n\n", "nothing deleted", 1), (b"y\n", "purged 1", 0)):
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "sqlbridge", "purge", "--older-than",
                                 "30d", "--database-url", url], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(follower)
        os.write(leader, answer)
        out, err = proc.communicate(timeout=120)
        os.close(leader)
        assert proc.returncode == 0 and says in out.decode(), err
        assert b"delete 1 requests older than 30d (succeeded 1)?" in err
        assert sum(q.summary()["by_status"].values()) == left


@pytest.mark.parametrize("args", [
    ["list", "--offset", str(2**70)],  # a traceback (OverflowError from the driver)
    ["show", "٣"], ["retry", "٣"], ["cancel", "1_000"],  # int() reads any script's digits
    ["enqueue", *SEND, "-p", "message=x", "--priority", "٣"],
    ["enqueue", *SEND, "-p", "message=x", "--wait", "--timeout", "٣"],
    ["list", "--since", "٣d"], ["purge", "--older-than", "٣d", "--dry-run"],
])
def test_numbers_are_ascii_digits_in_the_columns_range(url: str, args: list[str]) -> None:
    code, out, err = run(*args, "--database-url", url)
    assert code in (EXIT_USAGE, EXIT_INVALID), (code, out, err)
    one_line(err)
    assert Queue(make_engine(url)).summary()["by_status"] == {}


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_sandbox_port_out_of_range_is_a_usage_error(port: str) -> None:
    code, _, err = run("sandbox", "--port", port)
    assert code == EXIT_USAGE and "port" in one_line(err)


def _memory_cap() -> None:
    import resource

    cap = 1024 * 1024 * 1024  # 1 GiB: the unbounded read once grew past 9 GB in 20 s
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


@pytest.mark.parametrize("source", ["@/dev/zero", "-"])
def test_json_from_an_endless_file_or_pipe_is_refused_at_a_size_bound(url: str,
                                                                     source: str) -> None:
    stdin = subprocess.DEVNULL
    if source == "-":
        stdin = open("/dev/zero", "rb")  # noqa: SIM115 - an endless pipe
    try:
        proc = subprocess.run([sys.executable, "-m", "sqlbridge", "enqueue", "chat.getchats",
                               "--json", source, "--database-url", url], stdin=stdin,
                              capture_output=True, timeout=120, preexec_fn=_memory_cap)
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    assert proc.returncode == EXIT_USAGE, proc.stderr[-500:]
    assert "larger than 16 MiB" in one_line(proc.stderr.decode())


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["list"], ["list", "--json"],
                                  ["show", "1"], ["show", "1", "--json"], ["actions"]])
def test_the_operators_views_show_a_row_whose_text_is_not_utf8(url: str,
                                                              args: list[str]) -> None:
    # One such row made status, list and show fail with exit 7 ("the database could not be
    # reached"), for good: the worker fails the row but its bytes stay.
    with make_engine(url).begin() as c:
        c.exec_driver_sql(
            "INSERT INTO outbox (account, operation, params, status, error_code, "
            "error_message, finished_at) VALUES ('default', CAST(X'6368FF' AS TEXT), "
            "CAST(X'7B2261223A22C3FF227D' AS TEXT), 'failed', 'UNREADABLE_ROW', "
            "CAST(X'FF' AS TEXT), '2020-01-01 00:00:00')")
    code, out, err = run(*args, "--database-url", url)
    assert code == 0, err
    assert args[0] == "actions" or "\ufffd" in out


@pytest.mark.parametrize("value", ["1e400", "-1e400", "NaN", "Infinity"])
def test_a_json_number_that_is_not_finite_is_refused_not_sent_as_inf(url: str,
                                                                     value: str) -> None:
    # json.loads reads 1e400 as inf; the text parameter was then queued as "inf".
    code, _, err = run("enqueue", "chat.getchats", "--json",
                       '{"platform": "whatsapp", "platformid": ' + value + "}",
                       "--database-url", url)
    assert code == EXIT_INVALID and "INVALID_PARAM_TYPE" in one_line(err)
    assert Queue(make_engine(url)).summary()["by_status"] == {}


@pytest.mark.parametrize("args", [
    ["worker", "--once", "--grace", "nan"],  # accepted: a NaN grace never ends
    ["status", "--watch", "--interval", "nan", "--count", "1"],  # time.sleep(nan) traceback
    ["sandbox", "--latency-ms", "nan"], ["sandbox", "--error-rate", "nan"],
])
def test_a_nan_duration_or_rate_is_a_usage_error(url: str, args: list[str]) -> None:
    code, _, err = run(*args, "--database-url", url) if args[0] != "sandbox" else run(*args)
    assert code == EXIT_USAGE and "nan" in one_line(err)


@pytest.mark.parametrize("args", [["show", "1"], ["show", "1", "--json"], ["list"], ["status"]])
def test_a_time_column_holding_bytes_is_one_line_not_a_traceback(url: str,
                                                                 args: list[str]) -> None:
    with make_engine(url).begin() as c:
        c.exec_driver_sql("INSERT INTO outbox (account, operation, params, status, "
                          "finished_at) VALUES ('x', 'chat.getchats', '{}', 'uncertain', X'FF')")
    code, _, err = run(*args, "--database-url", url)
    assert code == 1 and "UNREADABLE_ROW" in one_line(err)


def test_a_correlation_longer_than_its_column_is_refused(url: str) -> None:
    # NVARCHAR(400): SQLite stored 5,000 characters; SQL Server refuses the row.
    code, _, err = run("enqueue", "chat.getchats", "-p", "platform=whatsapp", "-p",
                       "platformid=1", "--correlation", "c" * 401, "--database-url", url)
    assert code == EXIT_INVALID and "correlation" in one_line(err)
    assert Queue(make_engine(url)).summary()["by_status"] == {}


def run_with_stdin_closed(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as cron or a service manager may start it: file descriptor 0 not open at all
    (``0<&-``), so Python's ``sys.stdin`` is None."""
    env = {**os.environ, "SQLBRIDGE_DATABASE_URL": url, "SQLBRIDGE_CONFIG": ""}
    return subprocess.run(["bash", "-c", 'exec "$@" 0<&-', "_", sys.executable, "-m",
                           "sqlbridge", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_closed_standard_input_is_a_usage_error_not_a_traceback(url: str) -> None:
    q = queue_with_one_request_finished_40_days_ago(url)
    q.enqueue("chat.getchatchannels")
    for args, says in (
            (("enqueue", "chat.getchatchannels", "--json", "-"),
             "--json -: there is no standard input to read"),
            (("purge", "--older-than", "30d"), "not on a terminal, so add --yes"),
            (("cancel", "--status", "queued"), "not a terminal, so pass --yes")):
        done = run_with_stdin_closed(url, *args)
        assert done.returncode == EXIT_USAGE, (args, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert q.summary()["by_status"] == {"succeeded": 1, "queued": 1}  # nothing was changed

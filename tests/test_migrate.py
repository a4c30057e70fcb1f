"""``sqlbridge migrate`` on the vendor's six scripts and hand-written WinHttp / ServerXMLHTTP ones:
the rewrite parses under ScriptDom, drops the credentials, and enqueues (on SQLite, through the
same validation as every caller) the very request the original would have sent. Then the rules
one at a time, hostile text thrown at the rewriter, and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sqlbridge import registry, tsql
from sqlbridge.cli import main
from sqlbridge.migrate import LEFT_AS_IS, PREFIX, lex, migrate
from sqlbridge.queue import Queue
from tests.test_tsql_parse import parse_errors

FIXTURES = Path(__file__).parent / "fixtures" / "migrate"
SEEDS = sorted(FIXTURES.glob("seed_*.sql"))
GENERIC = ["winhttp_get_sync.sql", "serverxmlhttp_post.sql"]
REWRITABLE = [p.name for p in SEEDS] + GENERIC + ["afilnet_sms_passthrough.sql"]
# The vendor's getchatchannels script is the only one of the six that is valid T-SQL.
VALID_SEED = "seed_getchatchannels.sql"
SECRETS = ("'password'", "'user'", "pw-9876", "user=shop", "s3cr3t-token")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def code_only(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


# -- what the original would have sent, read independently of sqlbridge.migrate ----------------

def _declared(sql: str) -> dict[str, str]:
    """Variables DECLAREd with a literal: @name -> value."""
    return {name.lower(): value.replace("''", "'") for name, value in re.findall(
        r"DECLARE (@\w+) \w+(?:\(\w+\))? = N?'((?:[^']|'')*)'", sql)}


def _value(token: str, env: dict[str, str]) -> str:
    token = token.strip()
    if token.startswith("@"):
        return env[token.lower()]
    if re.fullmatch(r"-?\d+", token):
        return token
    return re.sub(r"^N?'|'$", "", token).replace("''", "'")


def original_request(sql: str) -> tuple[str, dict[str, Any]]:
    """(operation, params) the sp_OA script sends, minus the Afilnet credentials and secret
    headers: the URL evaluated by hand (with the vendor's broken quote fixed), the query string
    decoded the way the server decodes it."""
    sql = sql.replace("?+'&", "?&")
    env = _declared(sql)
    opened = re.search(r"'open',\s*NULL,\s*'(\w+)',\s*(@\w+|'[^']*')", sql, re.I)
    assert opened, "no open call"
    method, url_token = opened.groups()
    if url_token.startswith("@"):
        expr = re.search(rf"DECLARE {url_token} \w+\(\d+\) = (.*?);?\n", sql).group(1)  # type: ignore[union-attr]
        url = "".join(_value(t, env) for t in re.findall(r"'[^']*'|@\w+", expr))
    else:
        url = url_token[1:-1]
    if "afilnet.com" in url:
        params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        op = f"{params.pop('class')}.{params.pop('method')}"
        del params["user"], params["password"]
        return op, params
    out: dict[str, Any] = {"url": url, "method": method}
    headers = {}
    for name, value in re.findall(r"'setRequestHeader',\s*NULL,\s*'([^']*)',\s*('[^']*'|@\w+)",
                                  sql, re.I):
        if name.lower() != "authorization":
            headers[name] = _value(value, env)
    if headers:
        out["headers"] = headers
    sent = re.search(r"'send',\s*NULL,\s*(@\w+|N?'[^']*')", sql, re.I)
    if sent:
        out["payload"] = _value(sent.group(1), env)
    timeouts = re.search(r"'setTimeouts',\s*NULL,\s*\d+,\s*\d+,\s*\d+,\s*(\d+)", sql, re.I)
    if timeouts:
        out["timeout"] = int(timeouts.group(1)) // 1000
    return "http.request", out


_ARG = re.compile(r"\s*(@\w+) = (N'(?:[^']|'')*'|@\w+|-?\d+)( OUTPUT)?\s*([,;])")
_PROCEDURES = {op.procedure: op.name for op in registry.OPERATIONS.values()}


def rewritten_requests(sql: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sqlbridge procedure call of the rewritten script, as (operation, params), with
    helper variables (concatenations, JSON_MODIFY) evaluated."""
    env = _declared(sql)
    for name, expr in re.findall(r"DECLARE (@\w+) NVARCHAR\(MAX\) = (.*?);\n", sql):
        if not expr.startswith("N'{"):
            env[name.lower()] = "".join(
                _value(t, env) for t in re.findall(r"N'(?:[^']|'')*'|@\w+", expr))
    for name, key, value in re.findall(
            r"SET (@\w+) = JSON_MODIFY\(@\w+, N'\$\.(\w+)', (N'(?:[^']|'')*'|@\w+)\);", sql):
        obj = json.loads(env.get(name.lower(), "{}"))
        obj[key] = _value(value, env)
        env[name.lower()] = json.dumps(obj)
    found = []
    for m in re.finditer(r"EXEC (?:@\w+ = )?sqlbridge\.(\w+)", code_only(sql)):
        proc, pos, args = m.group(1), m.end(), {}
        if proc == "wait_for":
            continue
        text = code_only(sql)
        while (a := _ARG.match(text, pos)) is not None:
            if not a.group(3):  # OUTPUT variables are answers, not request parameters
                args[a.group(1)[1:]] = _value(a.group(2), env)
            pos = a.end()
            if a.group(4) == ";":
                break
        if proc == "afilnet_call":
            found.append((f"{args['class']}.{args['method']}", json.loads(args["params"])))
            continue
        for name in ("wait_ms", "account"):
            args.pop(name, None)
        if "headers" in args:
            args["headers"] = json.loads(args["headers"])
        if "timeout" in args:
            args["timeout"] = int(args["timeout"])
        found.append((_PROCEDURES[proc], args))
    return found


# -- the fixtures ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.sql")))
def test_each_rewritten_script_parses_where_the_original_could(name: str,
                                                               tmp_path: Path) -> None:
    original = fixture(name)
    before = parse_errors(original, tmp_path, "before.sql")
    if name.startswith("seed_") and name != VALID_SEED:
        assert "closing quotation mark" in before  # the vendor's sample is not T-SQL
    else:
        assert before == ""
    assert parse_errors(migrate(original).text, tmp_path, "after.sql") == ""


@pytest.mark.parametrize("seed", SEEDS, ids=[p.stem for p in SEEDS])
def test_the_vendor_scripts_become_their_endpoint_procedures(seed: Path) -> None:
    result = migrate(seed.read_text(encoding="utf-8"))
    method = seed.stem.removeprefix("seed_")
    assert [n.text for n in result.rewritten] == [
        f"chat.{method} -> sqlbridge.afilnet_chat_{method}"]
    assert result.left == []
    code = code_only(result.text)
    assert f"EXEC @hr = sqlbridge.afilnet_chat_{method} " in code
    assert "sp_oa" not in code.lower()
    for secret in SECRETS:
        assert secret not in result.text
    assert "@user" not in code and "@password" not in code and "@url" not in code
    assert PREFIX + "the Afilnet user and password are no longer in this script" in result.text
    broken = seed.name != VALID_SEED
    assert ("is not valid T-SQL" in result.text) == broken
    assert (any("not valid T-SQL" in n.text for n in result.notes)) == broken
    # It read the answer synchronously, so the rewrite waits and reads it too.
    assert "EXEC @hr = sqlbridge.wait_for @request_id = @sqlbridge_request_id" in code
    assert "SELECT @text = response FROM sqlbridge.request_results" in code


@pytest.mark.parametrize("name", REWRITABLE)
def test_the_rewrite_enqueues_what_the_original_sent(name: str, queue: Queue) -> None:
    original = fixture(name)
    result = migrate(original)
    assert result.left == [] and len(result.rewritten) == 1
    (operation, params), = rewritten_requests(result.text)
    want_op, want = original_request(original)
    assert operation == want_op
    credential = params.pop("credential", None)
    assert credential == ("hooks_example_org" if name == "serverxmlhttp_post.sql" else None)
    stored = queue.get(queue.enqueue(operation, params).id)
    assert stored["operation"] == want_op
    got = stored["params"] if isinstance(stored["params"], dict) else json.loads(
        stored["params"])
    assert got == registry.validate(want_op, want)[1]
    for secret in SECRETS:
        assert secret not in result.text


def test_url_encoded_values_are_sent_decoded_as_the_server_read_them() -> None:
    result = migrate(fixture("seed_sendmessage.sql"))
    assert "@message = N'test message'" in result.text
    sms = migrate(fixture("afilnet_sms_passthrough.sql"))
    assert "N'$.sms', N'Olá mundo'" in sms.text  # %C3%A1 and + decoded


def test_a_synchronous_generic_call_waits_and_reads_the_native_shape() -> None:
    text = migrate(fixture("winhttp_get_sync.sql")).text
    assert "@wait_ms = 30000" in text and "@response = @sqlbridge_response OUTPUT" in text
    assert "SET @status = JSON_VALUE(@sqlbridge_response, N'$.response.status.http.code');" \
        in text
    assert "SET @body = COALESCE(JSON_QUERY(@sqlbridge_response, N'$.result'), " \
           "JSON_VALUE(@sqlbridge_response, N'$.result'));" in text
    assert "DECLARE @sqlbridge_response NVARCHAR(MAX);" in text
    # Declared before the call that fills it.
    assert text.index("DECLARE @sqlbridge_response") < text.index("invoke_external_rest")


def test_an_unread_generic_call_is_queued_without_waiting_and_its_secret_header_leaves() -> None:
    text = migrate(fixture("serverxmlhttp_post.sql")).text
    assert "@wait_ms" not in text and "@response" not in text
    assert "Authorization" not in code_only(text)
    assert "[accounts.default.http.credentials.hooks_example_org] headers = " \
           "{ \"Authorization\" = \"…\" }" in text
    # The error check inside BEGIN … END reads the request's error instead of the COM error.
    assert "BEGIN\n    SELECT error_code, error_message FROM sqlbridge.request_results WHERE " \
           "id = @sqlbridge_request_id;\n    RETURN;\nEND;" in text


def test_what_cannot_be_rewritten_stays_exactly_as_written_with_a_reason() -> None:
    original = fixture("left_as_is.sql")
    result = migrate(original)
    assert result.rewritten == []
    reasons = [n.text for n in result.left]
    assert reasons == ["'Scripting.FileSystemObject' is not an HTTP object",
                       "method 'getresponseheader' is not one this tool rewrites"]
    added = [line for line in result.text.splitlines() if line not in original.splitlines()]
    assert added == [PREFIX + LEFT_AS_IS + r for r in reasons]
    assert "\n".join(line for line in result.text.splitlines()
                     if not line.startswith(PREFIX)) + "\n" == original


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.sql")))
def test_a_second_run_changes_nothing(name: str) -> None:
    once = migrate(fixture(name)).text
    assert migrate(once).text == once


def test_windows_line_endings_are_kept() -> None:
    original = fixture("seed_sendmessage.sql").replace("\n", "\r\n")
    text = migrate(original).text
    assert "\r\n" in text and re.search(r"(?<!\r)\n", text) is None
    assert "sqlbridge.afilnet_chat_sendmessage" in text


# -- the rules, each with the script that shows it ----------------------------------------------

HTTP_CALL = """DECLARE @win INT, @hr INT, @text VARCHAR(8000);
DECLARE @url VARCHAR(300) = 'https://api.example.com/v1/ping';
EXEC @hr = sp_OACreate 'WinHttp.WinHttpRequest.5.1', @win OUT;
EXEC @hr = sp_OAMethod @win, 'open', NULL, 'GET', @url, 'false';
EXEC @hr = sp_OAMethod @win, 'send';
EXEC @hr = sp_OAGetProperty @win, 'responseText', @text OUT;
EXEC sp_OADestroy @win;
"""


def left_reason(sql: str) -> str:
    result = migrate(sql)
    assert result.rewritten == [], result.text
    assert len(result.left) == 1
    assert PREFIX + LEFT_AS_IS + result.left[0].text in result.text
    return result.left[0].text


def test_the_plain_call_is_rewritten() -> None:
    assert migrate(HTTP_CALL).left == []
    assert "sqlbridge.invoke_external_rest_endpoint @url = @url, @method = N'GET'" in \
        migrate(HTTP_CALL).text


@pytest.mark.parametrize("header", ["IF LEN(@url) > 0", "WHILE @hr IS NULL",
                                    "IF 1 = 0 PRINT 1 ELSE"])
def test_a_call_that_is_the_body_of_an_if_while_or_else_is_left(header: str) -> None:
    sql = HTTP_CALL.replace("EXEC @hr = sp_OAMethod @win, 'send';",
                            f"{header}\n    EXEC @hr = sp_OAMethod @win, 'send';")
    assert "(line 6) is the body of an IF, WHILE or ELSE" in left_reason(sql)


def test_a_call_under_a_simple_if_is_left_unless_it_is_an_error_check_or_destroy() -> None:
    sql = HTTP_CALL.replace("EXEC @hr = sp_OAMethod @win, 'send';",
                            "IF @hr = 0 EXEC @hr = sp_OAMethod @win, 'send';")
    assert left_reason(sql) == "sp_oamethod runs under an IF"
    fine = HTTP_CALL.replace("EXEC sp_OADestroy @win;",
                             "IF @win IS NOT NULL EXEC sp_OADestroy @win;")
    assert migrate(fine).left == [] and "sp_OADestroy" not in migrate(fine).text


def test_a_variable_changed_between_open_and_send_is_left() -> None:
    sql = HTTP_CALL.replace("EXEC @hr = sp_OAMethod @win, 'send';",
                            "SET @url = 'https://api.example.com/v2/ping';\n"
                            "EXEC @hr = sp_OAMethod @win, 'send';")
    assert left_reason(sql) == "@url changes between building the request and sending it"


def test_a_call_whose_removal_would_empty_a_block_is_left() -> None:
    sql = HTTP_CALL.replace("EXEC sp_OADestroy @win;",
                            "IF @hr = 0\nBEGIN\n    EXEC sp_OADestroy @win;\nEND;")
    assert "empty BEGIN … END block" in left_reason(sql)


def test_statements_removed_side_by_side_count_together_for_an_empty_block() -> None:
    sql = HTTP_CALL.replace("EXEC sp_OADestroy @win;",
                            "IF @hr = 0\nBEGIN\n    EXEC sp_OADestroy @win;\n"
                            "    -- done\n    IF @hr <> 0 EXEC sp_OAGetErrorInfo @win;\nEND;")
    assert "empty BEGIN … END block" in left_reason(sql)
    kept = sql.replace("-- done", "PRINT 'done';")
    assert migrate(kept).left == []


def test_basic_auth_in_open_is_left() -> None:
    sql = HTTP_CALL.replace("@url, 'false';", "@url, 'false', 'bob', 'hunter2';")
    assert "passes a user and password" in left_reason(sql)


def test_a_secret_header_from_a_variable_is_left() -> None:
    sql = HTTP_CALL.replace(
        "EXEC @hr = sp_OAMethod @win, 'send';",
        "EXEC @hr = sp_OAMethod @win, 'setRequestHeader', NULL, 'X-Api-Key', @key;\n"
        "EXEC @hr = sp_OAMethod @win, 'send';")
    assert "carries a secret from @key" in left_reason(sql)


def test_a_secret_in_a_literal_url_s_query_string_moves_to_a_credential() -> None:
    sql = HTTP_CALL.replace("@url, 'false';",
                            "'https://api.example.com/v1/ping?q=a+b&api_key=k-9876#top', 'false';")
    text = migrate(sql).text
    assert "@url = N'https://api.example.com/v1/ping?q=a+b#top'" in text
    assert "k-9876" not in text and "@credential = N'api_example_com'" in text
    assert "api_key left the script: put it in the worker's config as " \
           "[accounts.default.http.credentials.api_example_com] query = { \"api_key\" = \"…\" }" \
        in text


def test_a_secret_in_a_url_variable_s_query_string_is_left() -> None:
    sql = HTTP_CALL.replace("'https://api.example.com/v1/ping'",
                            "'https://api.example.com/v1/ping?token=t-1'")
    assert "carries a secret in its query string" in left_reason(sql)


def test_an_unknown_parameter_of_a_declared_afilnet_method_is_left() -> None:
    sql = fixture(VALID_SEED).replace("+'&password='+@password;",
                                      "+'&password='+@password+'&colour=red';")
    assert left_reason(sql).startswith("parameter 'colour' is not one chat.getchatchannels takes")


def test_a_url_read_elsewhere_is_kept_with_a_note_about_its_credentials() -> None:
    sql = fixture(VALID_SEED) + "PRINT @url;\n"
    result = migrate(sql)
    assert result.rewritten
    assert f"\n{PREFIX}@url is still assigned here with the Afilnet credentials (@password, " \
           "@user): remove them by hand\nDECLARE @url varchar(255) = " in result.text
    assert "DECLARE @password varchar(500) = 'password';" in result.text


def test_an_afilnet_url_that_cannot_be_followed_is_never_sent_as_generic_http() -> None:
    sql = fixture(VALID_SEED).replace("DECLARE @win int",
                                      "SET @url = @url + '&x=1';\nDECLARE @win int")
    assert "mentions Afilnet" in left_reason(sql)


def test_a_call_on_an_object_made_elsewhere_gets_a_comment() -> None:
    result = migrate("EXEC sp_OAMethod @obj, 'send';\n")
    assert [n.text for n in result.left] == [
        "sp_oamethod on an object not created by sp_OACreate in this batch"]


def test_only_calls_of_the_ole_automation_procedures_count() -> None:
    text = ("EXEC sp_OAFoo @x;\nSELECT 'EXEC sp_OACreate';\n-- EXEC sp_OADestroy @w\n"
            "GRANT EXECUTE ON sp_OACreate TO app_user;\nSELECT sp_oa_create FROM t;\n")
    assert migrate(text).text == text


def test_the_vendor_quote_typo_is_read_only_in_that_exact_shape() -> None:
    (tok,) = [t for t in lex("SELECT 'https://x.afilnet.com/api/http/?+'&class='") if
              t.kind == "str"]
    assert tok.typo and tok.value == "https://x.afilnet.com/api/http/?&class="
    plain = [t for t in lex("SELECT 'a?+'&b") if t.kind == "str"]
    assert [t.typo for t in plain] == [False]


# -- hostile text ------------------------------------------------------------------------------

FRAGMENTS = ["EXEC", "@hr =", "sp_OACreate", "sp_OAMethod", "sp_OAGetProperty", "sp_OADestroy",
             "sp_OAGetErrorInfo", "'WinHttp.WinHttpRequest.5.1'", "'MSXML2.ServerXMLHTTP'",
             "@win", "OUT", "OUTPUT", ",", ";", "NULL", "'open'", "'send'", "'GET'", "'POST'",
             "'setRequestHeader'", "'responseText'", "'status'", "@url", "@text",
             "'https://www.afilnet.com/api/http/?class=chat&method=getchats&platform='",
             "'https://api.example.com/x'", "+", "DECLARE", "SET", "varchar(255)", "=", "IF",
             "<>", "0", "BEGIN", "END", "GO", "\n", "'", "--", "/*", "*/", "(", ")", "ELSE",
             "'?+'&class='", "@user", "'&user='", "N'ç😀'", "master.dbo.", "-", "1"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60),
       st.lists(st.sampled_from([" ", "\n", "", "\r\n", "\t"]), min_size=1))
def test_token_soup_never_raises_and_a_second_run_is_stable(parts: list[str],
                                                           seps: list[str]) -> None:
    text = "".join(p + seps[i % len(seps)] for i, p in enumerate(parts))
    result = migrate(text)
    assert "could not follow this call" not in result.text
    assert migrate(result.text).text == result.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(p.name for p in FIXTURES.glob("*.sql"))), st.data())
def test_edited_scripts_never_raise_and_a_second_run_is_stable(name: str,
                                                              data: st.DataObject) -> None:
    lines = fixture(name).splitlines(keepends=True)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        edit = data.draw(st.sampled_from(["delete", "repeat", "swap", "indent", "join"]))
        if edit == "delete" and len(lines) > 1:
            lines.pop(i)
        elif edit == "repeat":
            lines.insert(i, lines[i])
        elif edit == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif edit == "indent":
            lines[i] = "    " + lines[i]
        elif edit == "join" and i + 1 < len(lines):
            lines[i] = lines[i].rstrip("\n") + " " + lines.pop(i + 1)
    result = migrate("".join(lines))
    assert "could not follow this call" not in result.text
    assert migrate(result.text).text == result.text


def test_several_calls_in_one_batch_get_their_own_variables(tmp_path: Path) -> None:
    calls = "".join(HTTP_CALL.split("\n", 2)[2].replace("@win", f"@w{i}") for i in range(3))
    sql = HTTP_CALL.split("\n", 2)[0].rstrip(";") + ", @w0 INT, @w1 INT, @w2 INT;\n" + \
        HTTP_CALL.split("\n", 2)[1] + "\n" + calls
    result = migrate(sql)
    assert len(result.rewritten) == 3 and result.left == []
    for name in ("@sqlbridge_response", "@sqlbridge_response_2", "@sqlbridge_response_3"):
        assert f"DECLARE {name} NVARCHAR(MAX);" in result.text
        assert f"@response = {name} OUTPUT;" in result.text
    assert parse_errors(sql, tmp_path, "before.sql") == ""
    assert parse_errors(result.text, tmp_path, "after.sql") == ""


def test_a_handle_created_twice_is_two_objects() -> None:
    sql = HTTP_CALL.replace("EXEC @hr = sp_OACreate 'WinHttp.WinHttpRequest.5.1', @win OUT;",
                            "EXEC @hr = sp_OACreate 'WinHttp.WinHttpRequest.5.1', @win OUT;\n" * 2)
    result = migrate(sql)
    assert [n.text for n in result.left] == ["the object is not opened and sent exactly once"]
    assert result.left[0].line == 3  # the first object: the calls belong to the second one
    assert len(result.rewritten) == 1 and migrate(result.text).text == result.text


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("\x1fx")  # a unit separator before a call was copied as indentation in front of notes
@example("\x0b\u3000x")
def test_text_without_an_sp_oa_call_is_never_changed(text: str) -> None:
    if not re.search(r"sp_oa(create|method|getproperty|setproperty|destroy|geterrorinfo|stop)",
                     text, re.IGNORECASE):
        assert migrate(text).text == text
    # Any procedure name spliced into any text: no exception, and only comments added.
    for call in ("EXEC sp_OAMethod ", "\n  EXEC sp_OADestroy @o\n", "\tsp_OACreate 'x', @o OUT"):
        spliced = text.replace("x", call)
        assert _without_notes(migrate(spliced).text) == spliced


def _without_notes(text: str) -> str:
    """The text with the comments migrate adds in front of calls it leaves as they are."""
    text = re.sub(r"(?m)^[ \t]*-- sqlbridge migrate: left as is: [^\n]*\n", "", text)
    return re.sub(r"-- sqlbridge migrate: left as is: [^\n]*\n", "", text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text().filter(lambda t: "sp_oa" not in t.lower()),
       st.text().filter(lambda t: "sp_oa" not in t.lower()),
       st.sampled_from(REWRITABLE))
def test_text_around_a_call_is_never_changed(before: str, after: str, name: str) -> None:
    head, tail = before + "\nGO\n", "\nGO\n" + after
    out = migrate(head + fixture(name) + tail).text
    assert out.startswith(head) and out.endswith(tail)


# -- the command line --------------------------------------------------------------------------

def test_the_command_prints_a_diff_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "job.sql"
    path.write_text(fixture("seed_sendmessage.sql"), encoding="utf-8")
    done = CliRunner().invoke(main, ["migrate", str(path)])
    assert done.exit_code == 0, done.output
    assert f"--- {path}\n+++ {path} (migrated)\n" in done.stdout
    assert "+EXEC @hr = sqlbridge.afilnet_chat_sendmessage" in done.stdout
    assert "1 call(s) rewritten, 0 left as is" in done.stderr
    assert "not valid T-SQL" in done.stderr
    assert path.read_text(encoding="utf-8") == fixture("seed_sendmessage.sql")  # untouched


def test_write_keeps_a_backup_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    path = tmp_path / "job.sql"
    original = fixture("winhttp_get_sync.sql")
    path.write_text(original, encoding="utf-8")
    done = CliRunner().invoke(main, ["migrate", str(path), "--write"])
    assert done.exit_code == 0, done.output
    assert path.read_text(encoding="utf-8") == migrate(original).text
    assert (tmp_path / "job.sql.bak").read_text(encoding="utf-8") == original
    again = CliRunner().invoke(main, ["migrate", str(path), "--write"])
    assert again.exit_code == 0 and "nothing to change" in again.stderr
    path.write_text(original, encoding="utf-8")
    refused = CliRunner().invoke(main, ["migrate", str(path), "--write"])
    assert refused.exit_code == 2
    assert refused.stderr == f"error: {tmp_path / 'job.sql.bak'} already exists: move it " \
                             "away, then run again\n"
    assert (tmp_path / "job.sql.bak").read_text(encoding="utf-8") == original


def test_calls_left_as_is_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "job.sql"
    path.write_text(fixture("left_as_is.sql"), encoding="utf-8")
    done = CliRunner().invoke(main, ["migrate", str(path)])
    assert done.exit_code == 1
    assert f"{path}:3: left as is: 'Scripting.FileSystemObject' is not an HTTP object" in \
        done.stderr


@pytest.mark.parametrize("content, code, message", [
    (None, 2, "{path}: no such file"),
    (b"EXEC sp_OACreate 'x\xff'", 2, "{path}: not UTF-8 text (byte 0xff at offset 19); save "
                                     "the script as UTF-8 and run again"),
])
def test_bad_input_is_one_line_and_its_exit_code(tmp_path: Path, content: bytes | None,
                                                 code: int, message: str) -> None:
    path = tmp_path / "job.sql"
    if content is not None:
        path.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "sqlbridge", "migrate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code
    assert done.stderr == "error: " + message.format(path=path) + "\n"
    assert done.stdout == ""


def test_a_utf16_script_from_ssms_is_read_and_written_back_as_utf16(tmp_path: Path) -> None:
    path = tmp_path / "job.sql"
    original = fixture("serverxmlhttp_post.sql")
    path.write_bytes(original.encode("utf-16"))
    done = CliRunner().invoke(main, ["migrate", str(path), "--write"])
    assert done.exit_code == 0, done.output
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert path.read_text(encoding="utf-16") == migrate(original).text


# -- parity with sp_invoke_external_rest_endpoint ------------------------------------------------

NATIVE = ("@url", "@payload", "@headers", "@method", "@timeout", "@credential", "@response",
          "@retry_count")
OWN = ("@account", "@request_key", "@not_before", "@request_id", "@wait_ms")


def _invoke_body() -> str:
    from tests.test_tsql_parse import procedure_body

    return procedure_body("invoke_external_rest_endpoint")


def test_invoke_takes_every_native_parameter_and_sqlbridge_s_own() -> None:
    header = _invoke_body().split("\nAS\nBEGIN", 1)[0]
    declared = dict(re.findall(r"^    (@\w+) (.+?),?$", header, re.M))
    for name in NATIVE + OWN:
        assert name in declared, name
    # NVARCHAR(MAX) under an alias name (Babelfish binds no MAX OUTPUT parameter), created so.
    assert declared["@response"] == f"{tsql.RESPONSE_TYPE} = NULL OUTPUT"
    assert f"CREATE TYPE {tsql.RESPONSE_TYPE} FROM NVARCHAR(MAX);" in \
        (tsql.SQL_DIR / "110_procedures.sql").read_text(encoding="utf-8")
    assert declared["@request_id"] == "BIGINT = NULL OUTPUT"
    assert declared["@wait_ms"] == "INT = 0"  # asynchronous unless asked
    assert declared["@method"] == "NVARCHAR(MAX) = N'POST'"  # the native default
    assert declared["@credential"].startswith("NVARCHAR(")


def test_invoke_refuses_to_wait_inside_a_transaction_before_queuing_anything() -> None:
    body = _invoke_body()
    refuse = body.index("IF @wait_ms > 0 AND @@TRANCOUNT > 0\n        THROW "
                        f"{registry.ERROR_NUMBERS['WAIT_IN_TRANSACTION']}, ")
    assert refuse < body.index("EXEC sqlbridge.enqueue")


def test_the_native_retry_count_becomes_max_attempts() -> None:
    body = _invoke_body()
    assert "IF @retry_count < 0 OR @retry_count > 10\n        THROW " \
           f"{registry.ERROR_NUMBERS['INVALID_ARGUMENT']}, N'retry_count must be from 0 to 10'" \
        in body
    assert "IF @retry_count IS NOT NULL AND @max_attempts IS NULL SET @max_attempts = " \
           "@retry_count + 1;" in body
    assert body.index("SET @max_attempts = @retry_count + 1;") < body.index(
        "EXEC sqlbridge.enqueue")


def test_invoke_returns_at_once_without_wait_and_like_the_native_one_with_it() -> None:
    body = _invoke_body()
    after = body.split("@request_id = @request_id OUTPUT;\n", 1)[1]
    assert after.startswith("    IF @wait_ms = 0 RETURN 0;\n")
    assert "SELECT @status = status, @http_status = http_status, @response = response\n" \
           "        FROM sqlbridge.outbox WHERE id = @request_id;" in after
    assert after.rstrip().endswith("IF @http_status BETWEEN 200 AND 299 RETURN 0;\n"
                                   "    RETURN @http_status;")
    assert "EXEC sqlbridge.sleep_ms @ms = @pause;" in after  # the engine's own sleep


def test_the_credential_travels_by_name_in_the_request() -> None:
    op, clean = registry.validate("http.request", {"url": "https://a.example/x",
                                                   "credential": "orders"})
    assert clean["credential"] == "orders"
    assert "(SELECT @credential AS [credential] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER)" in \
        _invoke_body()


def test_credentials_load_from_the_account_and_stay_secret(tmp_path: Path) -> None:
    from sqlbridge.config import load

    path = tmp_path / "sqlbridge.toml"
    path.write_text('[accounts.default.http.credentials.fn]\n'
                    'headers = { "x-functions-key" = "k-123456" }\n'
                    '[accounts.default.http.credentials.qs]\nquery = { code = "c-abcdef" }\n',
                    encoding="utf-8")
    account = load(path, env={}).account("default")
    creds = account.http.credentials
    assert creds["fn"].headers["x-functions-key"].reveal() == "k-123456"
    assert creds["qs"].query["code"].reveal() == "c-abcdef"
    assert {"k-123456", "c-abcdef"} <= set(account.secrets())
    assert "k-123456" not in repr(account) and "c-abcdef" not in repr(account)


@pytest.mark.parametrize("toml, message", [
    ('[accounts.default.http]\ncredentials = "x"\n',
     "setting accounts.default.http.credentials must be a table"),
    ('[accounts.default.http.credentials]\nfn = "x"\n',
     "setting accounts.default.http.credentials.fn must be a table with headers and/or query"),
    ('[accounts.default.http.credentials.fn]\nbody = { a = "b" }\n',
     "unknown setting accounts.default.http.credentials.fn.body; allowed: headers, query"),
    ('[accounts.default.http.credentials.fn]\nheaders = { a = 1 }\n',
     'setting accounts.default.http.credentials.fn.headers must be a table of name = "text"'),
    ('[accounts.default.http.credentials.fn]\nheaders = {}\n',
     "setting accounts.default.http.credentials.fn needs headers = {...} or query = {...}"),
])
def test_bad_credentials_are_one_clear_line(tmp_path: Path, toml: str, message: str) -> None:
    from sqlbridge.config import load
    from sqlbridge.errors import ConfigError

    path = tmp_path / "sqlbridge.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load(path, env={})
    assert str(e.value).startswith(message)


def _with_credentials(account: Any) -> Any:
    import dataclasses

    from sqlbridge.config import HttpCredential, Secret

    creds = {"fn": HttpCredential(headers={"X-Functions-Key": Secret("k-123456")}),
             "qs": HttpCredential(query={"code": Secret("c-abcdef")})}
    return dataclasses.replace(account, http=dataclasses.replace(account.http,
                                                                 credentials=creds))


def test_a_named_credential_is_sent_and_never_comes_back(providers: Any, sandbox: Any) -> None:
    account = _with_credentials(sandbox.account())
    op, clean = registry.validate("http.request", {
        "url": sandbox.echo_url + "/x?code=caller&n=1", "method": "GET", "credential": "qs",
        "headers": {"X-Functions-Key": "caller"}})
    echoed = providers.call(op, clean, account).response["result"]
    # The credential's value replaced the caller's, and the stored answer shows it scrubbed.
    assert echoed["query"] == "n=1&code=***"
    assert "c-abcdef" not in json.dumps(echoed)
    assert echoed["headers"]["X-Functions-Key"] == "caller"  # "qs" adds no header
    op, clean = registry.validate("http.request", {
        "url": sandbox.echo_url, "method": "GET", "credential": "fn",
        "headers": {"X-Functions-Key": "caller"}})
    echoed = providers.call(op, clean, account).response["result"]
    assert echoed["headers"]["X-Functions-Key"] == "***" and echoed["query"] == ""


def test_an_unknown_credential_fails_the_request_without_sending_it(providers: Any,
                                                                    sandbox: Any) -> None:
    from sqlbridge.errors import ProviderError

    op, clean = registry.validate("http.request", {"url": sandbox.echo_url,
                                                   "credential": "nope"})
    with pytest.raises(ProviderError) as e:
        providers.call(op, clean, _with_credentials(sandbox.account()))
    assert e.value.code == "UNKNOWN_CREDENTIAL" and not e.value.retryable
    assert str(e.value) == ("http.request: credential 'nope' is not configured for account "
                            "'default'; add [accounts.default.http.credentials.NAME] with "
                            "headers or query (configured now: fn, qs)")
    assert sandbox.requests_seen == []


def test_the_worker_fails_an_unknown_credential_with_its_code(queue: Queue, settings: Any,
                                                              sandbox: Any) -> None:
    import dataclasses

    from sqlbridge.worker import Worker

    live = dataclasses.replace(settings,
                               accounts={"default": _with_credentials(sandbox.account())})
    bad = queue.enqueue("http.request", {"url": sandbox.echo_url, "credential": "nope"}).id
    good = queue.enqueue("http.request", {"url": sandbox.echo_url, "method": "GET",
                                          "credential": "fn"}).id
    Worker(live, queue.engine, schedules=False).run(once=True)
    failed, done = queue.get(bad), queue.get(good)
    assert (failed["status"], failed["error_code"], failed["http_status"]) == \
        ("failed", "UNKNOWN_CREDENTIAL", None)
    assert done["status"] == "succeeded" and "k-123456" not in str(done["response"])
    answer = json.loads(done["response"]) if isinstance(done["response"], str) else \
        done["response"]
    # The stored answer is the native @response shape invoke_external_rest_endpoint returns.
    assert answer["response"]["status"]["http"] == {"code": 200, "description": "OK"}
    assert answer["result"]["headers"]["X-Functions-Key"] == "***"


@pytest.fixture
def server() -> Any:
    from sqlalchemy import text

    from sqlbridge.db import make_engine
    from sqlbridge.install import install
    from tests.conftest import MSSQL_URL, NO_MSSQL

    if not MSSQL_URL:
        pytest.skip(NO_MSSQL)
    engine = make_engine(MSSQL_URL)
    install(engine)
    with engine.begin() as c:
        c.execute(text("DELETE FROM sqlbridge.outbox_attempt; DELETE FROM sqlbridge.outbox;"))
    yield engine
    engine.dispose()


@pytest.mark.mssql
def test_invoke_on_sql_server_answers_like_the_native_procedure(server: Any) -> None:
    """Runs the day SQLBRIDGE_TEST_MSSQL_URL names a server; skipped (never faked) until then."""
    import dataclasses
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from sqlbridge.config import Settings
    from sqlbridge.sandbox import Sandbox
    from sqlbridge.worker import Worker
    from tests.conftest import FAST_WORKER, MSSQL_URL

    call = text("SET NOCOUNT ON; DECLARE @rc INT, @r NVARCHAR(MAX), @id BIGINT; "
                "EXEC @rc = sqlbridge.invoke_external_rest_endpoint @url = :url, "
                "@method = N'GET', @credential = :cred, @wait_ms = :wait, "
                "@response = @r OUTPUT, @request_id = @id OUTPUT; SELECT @rc, @r, @id")
    with Sandbox() as sb:
        with pytest.raises(DBAPIError) as e, server.begin() as c:
            c.execute(call, {"url": sb.echo_url, "cred": None, "wait": 1000})
        assert f"({registry.ERROR_NUMBERS['WAIT_IN_TRANSACTION']})" in str(e.value.orig)
        settings = dataclasses.replace(Settings(database_url=MSSQL_URL or ""), worker=FAST_WORKER,
                                       accounts={"default": _with_credentials(sb.account())})
        worker = Worker(settings, server, schedules=False)
        thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 60})
        thread.start()
        try:
            with server.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                ok = c.execute(call, {"url": sb.echo_url, "cred": "fn", "wait": 15000}).one()
                missing = c.execute(call, {"url": sb.url + "status/404", "cred": None,
                                           "wait": 15000}).one()
                unknown = c.execute(call, {"url": sb.echo_url, "cred": "nope",
                                           "wait": 15000}).one()
                queued = c.execute(call, {"url": sb.echo_url, "cred": None, "wait": 0}).one()
        finally:
            worker.stop()
            thread.join()
    assert ok[0] == 0
    assert json.loads(ok[1])["response"]["status"]["http"]["code"] == 200
    assert missing[0] == 404 and json.loads(missing[1])["response"]["status"]["http"] == \
        {"code": 404, "description": "Not Found"}
    assert unknown[0] == -1 and unknown[1] is None
    assert queued[0] == 0 and queued[1] is None and queued[2] is not None

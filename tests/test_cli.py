"""The command line as a script would use it: output to parse, exit codes to branch on."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sqlbridge.cli import (
    EXIT_CONFIG,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    main,
    parse_age,
)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_install_is_safe_to_run_twice(db_url: str) -> None:
    assert run("install", "--database-url", db_url)[0] == 0
    code, out, _ = run("install", "--database-url", db_url)
    assert code == 0 and "schema up to date" in out


def test_enqueue_prints_the_id_and_status_counts_it(db_url: str) -> None:
    run("install", "--database-url", db_url)
    code, out, _ = run("enqueue", "chat.getchats", "-p", "platform=whatsapp",
                       "-p", "platformid=100", "--database-url", db_url)
    assert code == 0 and out.strip().isdigit()
    code, out, _ = run("enqueue", "messenger.requests", "--json",
                       '{"userId": "1001", "messengerFilters": {"status": "A"}}',
                       "--request-key", "k", "--database-url", db_url)
    second = out.strip()
    code, out, _ = run("status", "--json", "--database-url", db_url)
    status = json.loads(out)
    assert status["by_status"] == {"queued": 2}
    code, out, _ = run("show", second, "--json", "--database-url", db_url)
    assert json.loads(out)["params"] == {"userId": "1001", "messengerFilters": {"status": "A"}}


def test_bad_parameters_exit_4_with_one_line_naming_the_parameter(db_url: str) -> None:
    run("install", "--database-url", db_url)
    code, out, err = run("enqueue", "chat.sendfile", "-p", "platform=whatsapp",
                         "-p", "platformid=1", "-p", "destination=2", "-p", "type=gif",
                         "-p", "fileurl=https://x.example/a", "--database-url", db_url)
    assert code == EXIT_INVALID
    assert err.strip() == ("error: INCORRECT_FILETYPE: chat.sendfile: parameter 'type' must be "
                           "one of image, video, audio, voice, document, contact; got 'gif'")
    assert "Traceback" not in out + err


def test_a_bad_setting_exits_3_naming_it(tmp_path: Path, db_url: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[worker]\nconcurrency = -1\n")
    code, _, err = run("status", "--config", str(cfg), "--database-url", db_url)
    assert code == EXIT_CONFIG and "worker.concurrency" in err


def test_wait_that_times_out_exits_6(db_url: str) -> None:
    run("install", "--database-url", db_url)
    code, out, _ = run("enqueue", "chat.getchatchannels", "--wait", "--timeout", "0.3",
                       "--as-json", "--database-url", db_url)
    assert code == EXIT_TIMEOUT and json.loads(out)["status"] == "queued"


def test_cancel_retry_and_show_of_unknown_or_wrong_state_requests_exit_5(db_url: str) -> None:
    run("install", "--database-url", db_url)
    rid = run("enqueue", "chat.getchatchannels", "--database-url", db_url)[1].strip()
    assert run("cancel", rid, "--database-url", db_url)[0] == 0
    code, _, err = run("cancel", rid, "--database-url", db_url)
    assert code == EXIT_NOT_FOUND and "only queued requests" in err
    assert run("retry", rid, "--database-url", db_url)[0] == 0
    assert run("show", "999999", "--database-url", db_url)[0] == EXIT_NOT_FOUND


def test_purge_takes_a_readable_age(db_url: str) -> None:
    run("install", "--database-url", db_url)
    code, out, _ = run("purge", "--older-than", "30d", "--database-url", db_url)
    assert code == 0 and out.strip() == "purged 0 requests"
    assert parse_age("90m") == 5400 and parse_age("2d") == 172800
    assert run("purge", "--older-than", "soon", "--database-url", db_url)[0] == 2

"""Settings from TOML and the environment; a bad one is one clear sentence naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlbridge.config import AFILNET_BASIC_URL, load
from sqlbridge.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sqlbridge.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_default_account_can_come_wholly_from_the_environment(tmp_path: Path) -> None:
    s = load(env={"SQLBRIDGE_AFILNET_USER": "me@example.com",
                  "SQLBRIDGE_AFILNET_PASSWORD": "pw-123456", "SQLBRIDGE_AFILNET_AUTH": "basic",
                  "SQLBRIDGE_ANNA_URL": "https://anna.example.com/api",
                  "SQLBRIDGE_DATABASE_URL": "sqlite:///x.db"})
    acct = s.account("default")
    assert acct.afilnet.auth == "basic" and acct.afilnet.url == AFILNET_BASIC_URL
    assert acct.afilnet.password.reveal() == "pw-123456"  # type: ignore[union-attr]
    assert acct.anna.url == "https://anna.example.com/api/"
    assert s.database_url == "sqlite:///x.db"


def test_secrets_never_show_in_a_repr(tmp_path: Path) -> None:
    s = load(env={"SQLBRIDGE_AFILNET_PASSWORD": "hunter2-secret"})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.account("default"))
    assert "hunter2-secret" in s.secrets()


def test_named_accounts_and_worker_settings_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
database_url = "sqlite:///from-file.db"
[worker]
concurrency = 16
[accounts.sales.afilnet]
user = "sales@example.com"
password = "pw"
rate_limit = 5
allow_resend = true
[accounts.sales.http]
allowed_hosts = ["api.example.com"]
headers = { Authorization = "Bearer abc" }
""")
    s = load(path, env={})
    assert s.worker.concurrency == 16 and s.database_url == "sqlite:///from-file.db"
    sales = s.account("sales")
    assert sales.afilnet.rate_limit == 5 and sales.afilnet.allow_resend
    assert sales.http.allowed_hosts == ("api.example.com",)
    with pytest.raises(ConfigError, match="account 'nobody' is not configured; configured "
                       "accounts: default, sales"):
        s.account("nobody")


@pytest.mark.parametrize(("text", "words"), [
    ("[worker]\nconcurrency = 0", "worker.concurrency must be a whole number greater than 0"),
    ("[worker]\nspeed = 3", "unknown setting worker.speed; allowed: backoff_base"),
    ("[accounts.a.afilnet]\nauth = 'oauth'", "accounts.a.afilnet.auth must be 'post' or 'basic'"),
    ("[accounts.a.anna]\nurl = 'anna.example.com'", "accounts.a.anna.url must be an http"),
    ("[accounts.a.afilnet]\nallow_resend = 'maybe'", "allow_resend must be true or false"),
    ("database_url = 'nonsense'", "SQLBRIDGE_DATABASE_URL (database_url) must be an SQLAlchemy"),
    ("this is not toml", "is not valid TOML"),
])
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), env={})
    assert words in str(e.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load(str(tmp_path / "nope.toml"), env={})

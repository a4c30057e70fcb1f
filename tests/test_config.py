"""Settings from TOML and the environment; a bad one is one clear sentence naming it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sqlbridge import config
from sqlbridge.allowlist import parse_target
from sqlbridge.config import AFILNET_BASIC_URL, load
from sqlbridge.errors import ConfigError
from sqlbridge.providers.session import request_options


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
    assert [str(e) for e in sales.http.allowed_hosts] == ["https://api.example.com"]
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


# -- http.request allowlist entries ------------------------------------------------------------


def test_allowlist_entries_say_scheme_host_and_port(tmp_path: Path) -> None:
    path = write(tmp_path, """
[accounts.a.http]
allowed_hosts = ["API.example.com", "https://*.example.org", "http://intranet:8080",
                 { url = "http://10.0.0.5:9000", allow_private = true }]
""")
    http = load(path, env={}).account("a").http
    assert [str(e) for e in http.allowed_hosts] == [
        "https://api.example.com", "https://*.example.org", "http://intranet:8080",
        "http://10.0.0.5:9000"]
    assert [e.allow_private for e in http.allowed_hosts] == [False, False, False, True]

    def allowed(url: str) -> bool:
        return any(e.matches(parse_target(url)) for e in http.allowed_hosts)

    assert allowed("https://api.example.com/x") and allowed("https://API.EXAMPLE.COM:443/")
    assert not allowed("http://api.example.com/")  # a bare host is HTTPS only
    assert not allowed("https://api.example.com:8443/")  # …on 443 only
    assert allowed("https://a.b.example.org/") and not allowed("https://example.org/")
    assert not allowed("https://evil-example.org/") and not allowed("https://example.org.evil/")
    assert allowed("http://intranet:8080/") and not allowed("https://intranet:8080/")
    assert not allowed("http://intranet/")


def test_the_environment_allowlist_takes_the_same_entries() -> None:
    http = load(env={"SQLBRIDGE_HTTP_ALLOWED_HOSTS": "api.example.com, http://intranet:8080"}
                ).account("default").http
    assert [str(e) for e in http.allowed_hosts] == ["https://api.example.com",
                                                    "http://intranet:8080"]
    assert not http.allow_private
    assert load(env={"SQLBRIDGE_HTTP_ALLOWED_HOSTS": "http://127.0.0.1:8780",
                     "SQLBRIDGE_HTTP_ALLOW_PRIVATE": "true"}).account("default").http.allow_private


@pytest.mark.parametrize(("entry", "words"), [
    ('"ftp://files.example.com"', "only http:// and https://"),
    ('"https://api.example.com/v1"', "without a path"),
    ('"https://user@api.example.com"', "user name or password"),
    ('"https://*.com"', "a wildcard needs a domain"),
    ('"http://2130706433"', "not a dotted-quad"),
    ("42", "must be a list of entries"),
    ('{ url = "http://x:1", private = true }', "unknown setting accounts.a.http.allowed_hosts[0]"),
])
def test_a_bad_allowlist_entry_is_named(tmp_path: Path, entry: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, f"[accounts.a.http]\nallowed_hosts = [{entry}]"), env={})
    assert words in str(e.value) and "accounts.a.http.allowed_hosts" in str(e.value)


# -- credentials from files --------------------------------------------------------------------


def test_any_variable_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-pw\n")
    (tmp_path / "db").write_text("sqlite:///from-secret.db\r\n")
    (tmp_path / "user").write_text("me@example.com")  # no newline: taken as is
    s = load(env={"SQLBRIDGE_AFILNET_PASSWORD_FILE": str(tmp_path / "pw"),
                  "SQLBRIDGE_AFILNET_USER_FILE": str(tmp_path / "user"),
                  "SQLBRIDGE_DATABASE_URL_FILE": str(tmp_path / "db")})
    acct = s.account("default")
    assert acct.afilnet.password.reveal() == "s3cret-pw"  # type: ignore[union-attr]
    assert acct.afilnet.user.reveal() == "me@example.com"  # type: ignore[union-attr]
    assert s.database_url == "sqlite:///from-secret.db"
    assert "s3cret-pw" in s.secrets()


def test_a_file_variable_that_cannot_be_read_or_clashes_is_one_clear_error(tmp_path: Path
                                                                             ) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"SQLBRIDGE_ANNA_PASSWORD_FILE: cannot read .*nope"):
        load(env={"SQLBRIDGE_ANNA_PASSWORD_FILE": missing})
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(env={"SQLBRIDGE_ANNA_PASSWORD_FILE": str(tmp_path / "bin")})
    (tmp_path / "pw").write_text("x")
    with pytest.raises(ConfigError, match="either SQLBRIDGE_ANNA_PASSWORD or "
                                          "SQLBRIDGE_ANNA_PASSWORD_FILE, not both"):
        load(env={"SQLBRIDGE_ANNA_PASSWORD": "y",
                  "SQLBRIDGE_ANNA_PASSWORD_FILE": str(tmp_path / "pw")})


# -- a readable file holding secrets ------------------------------------------------------------

_WITH_SECRET = "[accounts.a.afilnet]\nuser = 'me'\npassword = 'pw-123456'\n"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize(("text", "mode", "warned"), [
    (_WITH_SECRET, 0o644, True), (_WITH_SECRET, 0o640, True), (_WITH_SECRET, 0o600, False),
    ("[worker]\nconcurrency = 2\n", 0o644, False),
    ("database_url = 'mssql+pyodbc://u:dbpass@h/db'\n", 0o604, True),
    ("[accounts.a.http]\nheaders = { Authorization = 'Bearer t' }\n", 0o644, True),
])
def test_a_config_file_with_secrets_readable_by_others_is_warned_about_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, mode: int,
        warned: bool) -> None:
    path = write(tmp_path, text)
    os.chmod(path, mode)
    caplog.set_level(logging.WARNING, logger="sqlbridge.config")
    load(path, env={})
    load(path, env={})
    lines = [r.getMessage() for r in caplog.records if "can be read by" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert path in lines[0] and f"chmod 600 {path}" in lines[0] and "pw-123456" not in \
            lines[0] and "dbpass" not in lines[0]


# -- TLS and proxies ---------------------------------------------------------------------------


def test_tls_is_verified_by_default_and_no_proxy_is_set() -> None:
    acct = load(env={}).account("default")
    for section in (acct.afilnet, acct.anna, acct.http):
        assert request_options(section) == {"verify": True}
    options = request_options(acct.http, environment_proxies=False)
    sentinel = object()
    assert options.pop("auth")(sentinel) is sentinel  # adds nothing; keeps netrc out
    assert options == {"verify": True, "proxies": {"http": None, "https": None, "all": None}}


def test_ca_bundle_and_proxy_are_set_globally_per_account_or_per_section(tmp_path: Path
                                                                         ) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here")
    other = tmp_path / "other.pem"
    other.write_text("x")
    path = write(tmp_path, f"""
ca_bundle = "{bundle}"
[accounts.a]
proxy = "http://proxy.example:3128"
[accounts.a.anna]
ca_bundle = "{other}"
proxy = "http://u:proxy-pw@other-proxy.example:8080"
[accounts.b.http]
allowed_hosts = []
""")
    s = load(path, env={"SQLBRIDGE_CA_BUNDLE": str(other)})
    a, b = s.account("a"), s.account("b")
    # The environment overrides the file's global setting; a section overrides its account.
    assert request_options(a.afilnet) == {"verify": str(other), "proxies": {
        "http": "http://proxy.example:3128", "https": "http://proxy.example:3128"}}
    assert request_options(a.anna)["proxies"]["https"] == \
        "http://u:proxy-pw@other-proxy.example:8080"
    assert b.http.ca_bundle == str(other) and b.http.proxy is None
    assert "proxy-pw" in s.secrets() and "proxy-pw" not in repr(a)


def test_turning_tls_verification_off_is_explicit_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sqlbridge.config")
    acct = load(write(tmp_path, "[accounts.a.afilnet]\nverify_tls = false\n"), env={}
                ).account("a")
    assert request_options(acct.afilnet)["verify"] is False
    assert request_options(acct.anna)["verify"] is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("accounts.a.afilnet.verify_tls = false" in r.getMessage() for r in warnings)
    caplog.clear()
    load(env={"SQLBRIDGE_VERIFY_TLS": "false"})
    assert "accounts.default.http.verify_tls = false" in caplog.text


@pytest.mark.parametrize(("text", "words"), [
    ("ca_bundle = '/no/such/bundle.pem'", "setting ca_bundle must name a CA bundle"),
    ("[accounts.a.http]\nproxy = 'socks5://p:1'", "accounts.a.http.proxy must be a proxy URL"),
    ("[accounts.a]\nproxy = 'http://p:1/path'", "accounts.a.proxy must be a proxy URL"),
    ("[accounts.a.anna]\nverify_tls = 'sometimes'", "accounts.a.anna.verify_tls must be true"),
])
def test_bad_tls_and_proxy_settings_are_named(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), env={})
    assert words in str(e.value)
    with pytest.raises(ConfigError, match="setting SQLBRIDGE_PROXY must be a proxy URL"):
        load(env={"SQLBRIDGE_PROXY": "proxy.example:3128"})


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    config._warned_readable.clear()

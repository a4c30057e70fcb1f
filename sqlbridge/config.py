"""Settings: environment variables ``SQLBRIDGE_*`` over an optional TOML file.

Credentials are grouped in named accounts; a request names its account, never its secrets. Every
secret is wrapped in ``Secret`` so that a stray ``repr``, log line or exception message shows
``***`` instead of the value. A bad setting raises ``ConfigError`` naming the setting and what
is allowed, which the CLI prints as one line.

Container secrets: every ``SQLBRIDGE_*`` variable may instead be given as ``SQLBRIDGE_*_FILE``,
the path of a file holding the value (one trailing newline is dropped). A TOML file that holds
secrets and can be read by group or others gets one warning per process.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .allowlist import Entry, parse_entry
from .errors import ConfigError
from .redact import credential_parts

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///sqlbridge.db"
DEFAULT_CONFIG_FILE = "sqlbridge.toml"
AFILNET_POST_URL = "https://www.afilnet.com/api/http/"
AFILNET_BASIC_URL = "https://www.afilnet.com/api/basic/"


class Secret:
    """A credential. Its value is only reachable through ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Transport:
    """HTTP behaviour shared by every provider section of an account."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Requests per second for this account and provider, shared by every worker process and
    # host (sqlbridge.shared_limits keeps the slots in the database).
    rate_limit: float | None = None
    # Calls of this account and provider in flight at once, across every worker process and
    # host (sqlbridge.gates counts the rows being processed; None: no cap).
    max_in_flight: int | None = None
    # Circuit breaker (sqlbridge.breaker): after this many transient failures in a row, claims
    # for this account and provider pause for breaker_cooldown seconds, doubling after each
    # failed probe up to breaker_cooldown_max. 0 turns the breaker off.
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    breaker_cooldown_max: float = 300.0
    # Send again a request whose outcome is unknown (read timeout, worker death) instead of
    # marking it `uncertain`. Off by default: a duplicate chat message is worse than a question.
    allow_resend: bool = False
    # TLS certificates are checked (against ca_bundle when set); turning it off is explicit.
    verify_tls: bool = True
    ca_bundle: str | None = None
    # http(s)://[user:password@]host:port for every call of this section; None: no proxy
    # (afilnet and anna still honour HTTP(S)_PROXY from the environment, http.request does not).
    proxy: Secret | None = None
    # Largest answer read, in bytes (a bigger one fails the call: RESPONSE_TOO_LARGE), and the
    # longest a whole call may take, in seconds (None: connect_timeout + 2 x read_timeout).
    max_response_bytes: int = 4 * 1024 * 1024
    total_timeout: float | None = None


@dataclass(frozen=True)
class AfilnetSettings(Transport):
    url: str = AFILNET_POST_URL
    user: Secret | None = None
    password: Secret | None = None
    auth: str = "post"  # post: credentials in the form body; basic: Authorization header


@dataclass(frozen=True)
class AnnaSettings(Transport):
    url: str | None = None  # every AnnA customer has its own base URL
    company_hash: Secret | None = None
    user: Secret | None = None
    password: Secret | None = None
    # Used when GetToken's ExpiresIn cannot be read (the vendor does not specify its format).
    token_lifetime: float = 3000.0


@dataclass(frozen=True)
class HttpCredential:
    """Secrets http.request adds when a request names this credential (``@credential``): like
    the native ``HTTPEndpointHeaders`` / ``HTTPEndpointQueryString`` identities."""

    headers: Mapping[str, Secret] = field(default_factory=dict)
    query: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpSettings(Transport):
    # Where http.request may go (scheme, host or *.domain, port); empty means nowhere (an
    # allowlist, like sp_invoke_external_rest_endpoint's). Text entries are parsed on creation.
    allowed_hosts: tuple[Entry, ...] = ()
    # Let every entry reach loopback/private/link-local addresses (an entry can say it alone).
    allow_private: bool = False
    # Headers added by the worker (e.g. Authorization); secret, never stored with the request.
    headers: Mapping[str, Secret] = field(default_factory=dict)
    # Named credentials a request may ask for with its ``credential`` parameter.
    credentials: Mapping[str, HttpCredential] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entries = tuple(e if isinstance(e, Entry) else parse_entry(str(e))
                        for e in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", entries)


@dataclass(frozen=True)
class Account:
    name: str
    afilnet: AfilnetSettings = field(default_factory=AfilnetSettings)
    anna: AnnaSettings = field(default_factory=AnnaSettings)
    http: HttpSettings = field(default_factory=HttpSettings)

    def secrets(self) -> list[str]:
        """Every secret value of the account, for scrubbing responses and messages: each
        credential, ``user:password`` of each pair (what Basic auth encodes), each header value
        and its credential-bearing parts (the token of ``Bearer tok``, what ``Basic`` encodes),
        and a proxy's password. ``redact`` adds the encoded spellings of each."""
        return list(self._secrets)

    @cached_property
    def _secrets(self) -> tuple[str, ...]:
        # Worked out once per Account (settings are frozen): every call and every answer is
        # scrubbed with these, so a worker asked for them on every request.
        values: list[str] = []
        for section in (self.afilnet, self.anna):
            if section.user and section.password:
                values.append(f"{section.user.reveal()}:{section.password.reveal()}")
        for v in (self.afilnet.user, self.afilnet.password, self.anna.company_hash,
                  self.anna.user, self.anna.password):
            if v:
                values.append(v.reveal())
        for header in self.http.headers.values():
            values.extend(credential_parts(header.reveal()))
        for cred in self.http.credentials.values():
            for header in cred.headers.values():
                values.extend(credential_parts(header.reveal()))
            values.extend(v.reveal() for v in cred.query.values())
        for section in (self.afilnet, self.anna, self.http):
            if section.proxy:
                # requests decodes the user and password before building Proxy-Authorization:
                # what travels is the decoded pair, and each part of it.
                proxy = urlsplit(section.proxy.reveal())
                values.append(section.proxy.reveal())
                if proxy.password:
                    user, password = unquote(proxy.username or ""), unquote(proxy.password)
                    values.extend([proxy.password, password, f"{user}:{password}"])
        return tuple(dict.fromkeys(v for v in values if len(v) >= 3))


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 8
    batch: int = 50
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    max_attempts: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 600.0
    # Finished requests older than this many seconds are purged by the workers; None: never.
    retention: float | None = None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    accounts: Mapping[str, Account] = field(default_factory=lambda: {"default": Account("default")})
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    schedules: tuple[Mapping[str, Any], ...] = ()
    config_path: str | None = None

    def account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            known = ", ".join(sorted(self.accounts)) or "none"
            raise ConfigError(
                f"account '{name}' is not configured; configured accounts: {known} "
                "(add [accounts.NAME] to the TOML file)",
                code="UNKNOWN_ACCOUNT",
            ) from None

    def secrets(self) -> list[str]:
        """Every account's secrets (``Account.secrets``), worked out once per Settings: each
        request's outcome is scrubbed with all of them, so this is on every request's path."""
        return list(self._secrets)

    @cached_property
    def _secrets(self) -> tuple[str, ...]:
        return tuple(s for a in self.accounts.values() for s in a._secrets)

    def with_database_url(self, url: str | None) -> Settings:
        return replace(self, database_url=url) if url else self


# -- loading -------------------------------------------------------------------------------

_NUMBER_FIELDS = {"connect_timeout", "read_timeout", "rate_limit", "token_lifetime"}


def _positive(setting: str, value: Any, *, integer: bool = False) -> Any:
    kind = "a whole number greater than 0" if integer else "a number greater than 0"
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {setting} must be {kind}; got {value!r}") from None
    if number <= 0 or (integer and isinstance(value, float | str) and float(value) != number):
        raise ConfigError(f"setting {setting} must be {kind}; got {value!r}")
    return number


def _bool(setting: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                    "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"setting {setting} must be true or false; got {value!r}")


def _url(setting: str, value: Any) -> str:
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"setting {setting} must be an http:// or https:// URL")
    return str(value) if str(value).endswith("/") else str(value) + "/"


def _secret(setting: str, value: Any) -> Secret | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"setting {setting} must be text")
    return Secret(value)


def _ca_bundle(setting: str, value: Any) -> str:
    if not isinstance(value, str) or not (Path(value).is_file() or Path(value).is_dir()):
        raise ConfigError(f"setting {setting} must name a CA bundle file or directory that "
                          f"exists; got {value!r}")
    return value


def _proxy(setting: str, value: Any) -> Secret:
    try:
        parts = urlsplit(str(value))
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or \
            parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"setting {setting} must be a proxy URL such as "
                          "http://proxy.example:3128 (http:// or https://, no path)")
    return Secret(str(value))


def _network_fields(prefix: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """verify_tls, ca_bundle and proxy, checked where they are written (prefix "" at the top
    level, "accounts.NAME." for an account, "accounts.NAME.SECTION." for a section)."""
    out: dict[str, Any] = {}
    if raw.get("verify_tls") is not None:
        out["verify_tls"] = _bool(f"{prefix}verify_tls", raw["verify_tls"])
    if raw.get("ca_bundle"):
        out["ca_bundle"] = _ca_bundle(f"{prefix}ca_bundle", raw["ca_bundle"])
    if raw.get("proxy"):
        out["proxy"] = _proxy(f"{prefix}proxy", raw["proxy"])
    return out


def _transport_fields(prefix: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _network_fields(f"{prefix}.", raw)
    for key in ("connect_timeout", "read_timeout", "rate_limit"):
        if raw.get(key) is not None:
            out[key] = _positive(f"{prefix}.{key}", raw[key])
    if raw.get("allow_resend") is not None:
        out["allow_resend"] = _bool(f"{prefix}.allow_resend", raw["allow_resend"])
    if raw.get("total_timeout") is not None:
        out["total_timeout"] = _positive(f"{prefix}.total_timeout", raw["total_timeout"])
    if raw.get("max_response_bytes") is not None:
        out["max_response_bytes"] = _positive(f"{prefix}.max_response_bytes",
                                              raw["max_response_bytes"], integer=True)
    out.update(_limit_fields(prefix, raw))
    if out.get("verify_tls") is False:
        log.warning("%s.verify_tls = false: TLS certificates are not checked for these calls; "
                    "anyone on the network path can read and change them (set ca_bundle for a "
                    "private CA instead)", prefix)
    return out


# Bounds of the shared limits: a cap or a count past these is a typo, not a setting.
MAX_IN_FLIGHT_MAX = 10_000
BREAKER_FAILURES_MAX = 1_000
BREAKER_COOLDOWN_MAX = 86_400.0


def _whole_in(setting: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        value_ok = False
    else:
        try:
            number = int(value)
            value_ok = str(number) == str(value).strip() and low <= number <= high
        except ValueError:
            value_ok = False
    if not value_ok:
        raise ConfigError(f"setting {setting} must be a whole number from {low} to {high:,}; "
                          f"got {value!r}")
    return int(value)


def _limit_fields(prefix: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """max_in_flight and the breaker_* settings of one provider section."""
    out: dict[str, Any] = {}
    if raw.get("max_in_flight") is not None:
        out["max_in_flight"] = _whole_in(f"{prefix}.max_in_flight", raw["max_in_flight"], 1,
                                         MAX_IN_FLIGHT_MAX)
    if raw.get("breaker_failures") is not None:
        out["breaker_failures"] = _whole_in(f"{prefix}.breaker_failures",
                                            raw["breaker_failures"], 0, BREAKER_FAILURES_MAX)
    for key in ("breaker_cooldown", "breaker_cooldown_max"):
        if raw.get(key) is not None:
            seconds = _positive(f"{prefix}.{key}", raw[key])
            if not math.isfinite(seconds) or seconds > BREAKER_COOLDOWN_MAX:
                raise ConfigError(f"setting {prefix}.{key} must be a number of seconds greater "
                                  f"than 0 and at most {BREAKER_COOLDOWN_MAX:g}; "
                                  f"got {raw[key]!r}")
            out[key] = seconds
    low = out.get("breaker_cooldown", Transport.breaker_cooldown)
    high = out.get("breaker_cooldown_max", Transport.breaker_cooldown_max)
    if high < low:
        raise ConfigError(f"setting {prefix}.breaker_cooldown_max ({high:g}) must be at least "
                          f"breaker_cooldown ({low:g})")
    return out


def _check_keys(prefix: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"unknown setting {prefix}.{key}; allowed: {', '.join(sorted(allowed))}"
            )


# Settable for a whole account ([accounts.NAME]) or globally (top level, SQLBRIDGE_*), and
# inherited by each provider section that does not set them itself.
_NETWORK_KEYS = {"verify_tls", "ca_bundle", "proxy"}
_TRANSPORT_KEYS = {"connect_timeout", "read_timeout", "rate_limit", "allow_resend",
                   "total_timeout", "max_response_bytes", "max_in_flight", "breaker_failures",
                   "breaker_cooldown", "breaker_cooldown_max"} | _NETWORK_KEYS


def _afilnet(prefix: str, raw: Mapping[str, Any]) -> AfilnetSettings:
    _check_keys(prefix, raw, _TRANSPORT_KEYS | {"url", "user", "password", "auth"})
    auth = str(raw.get("auth") or "post").lower()
    if auth not in ("post", "basic"):
        raise ConfigError(f"setting {prefix}.auth must be 'post' or 'basic'; got {auth!r}")
    default_url = AFILNET_BASIC_URL if auth == "basic" else AFILNET_POST_URL
    return AfilnetSettings(
        url=_url(f"{prefix}.url", raw["url"]) if raw.get("url") else default_url,
        user=_secret(f"{prefix}.user", raw.get("user")),
        password=_secret(f"{prefix}.password", raw.get("password")),
        auth=auth,
        **_transport_fields(prefix, raw),
    )


def _anna(prefix: str, raw: Mapping[str, Any]) -> AnnaSettings:
    _check_keys(prefix, raw, _TRANSPORT_KEYS | {"url", "company_hash", "user", "password",
                                               "token_lifetime"})
    extra: dict[str, Any] = {}
    if raw.get("token_lifetime") is not None:
        extra["token_lifetime"] = _positive(f"{prefix}.token_lifetime", raw["token_lifetime"])
    return AnnaSettings(
        url=_url(f"{prefix}.url", raw["url"]) if raw.get("url") else None,
        company_hash=_secret(f"{prefix}.company_hash", raw.get("company_hash")),
        user=_secret(f"{prefix}.user", raw.get("user")),
        password=_secret(f"{prefix}.password", raw.get("password")),
        **extra,
        **_transport_fields(prefix, raw),
    )


_ENTRY_HELP = ("a list of entries such as \"api.example.com\" (HTTPS on 443), "
               "\"https://*.example.com\", \"http://intranet:8080\", or tables "
               "{ url = \"http://intranet:8080\", allow_private = true }")


def _entry(setting: str, value: Any) -> Entry:
    allow_private = False
    if isinstance(value, Mapping):
        _check_keys(setting, value, {"url", "allow_private"})
        if value.get("allow_private") is not None:
            allow_private = _bool(f"{setting}.allow_private", value["allow_private"])
        value = value.get("url")
    if not isinstance(value, str):
        raise ConfigError(f"setting {setting} must be {_ENTRY_HELP}")
    try:
        return parse_entry(value, allow_private)
    except ValueError as exc:
        raise ConfigError(f"setting {setting}: {exc}") from None


def _http(prefix: str, raw: Mapping[str, Any]) -> HttpSettings:
    _check_keys(prefix, raw, _TRANSPORT_KEYS | {"allowed_hosts", "allow_private", "headers",
                                               "credentials"})
    hosts = raw.get("allowed_hosts") or ()
    if isinstance(hosts, str):
        hosts = [h.strip() for h in hosts.split(",") if h.strip()]
    if not isinstance(hosts, list | tuple):
        raise ConfigError(f"setting {prefix}.allowed_hosts must be {_ENTRY_HELP}")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"setting {prefix}.headers must be a table of header = value")
    extra: dict[str, Any] = {}
    if raw.get("allow_private") is not None:
        extra["allow_private"] = _bool(f"{prefix}.allow_private", raw["allow_private"])
    return HttpSettings(
        allowed_hosts=tuple(_entry(f"{prefix}.allowed_hosts[{i}]", h)
                            for i, h in enumerate(hosts)),
        headers={str(k): Secret(str(v)) for k, v in headers.items()},
        **extra,
        credentials=_http_credentials(f"{prefix}.credentials", raw.get("credentials") or {}),
        **_transport_fields(prefix, raw),
    )


def _http_credentials(prefix: str, raw: Any) -> dict[str, HttpCredential]:
    """``[accounts.X.http.credentials.NAME]`` tables, each with ``headers`` and/or ``query``
    (tables of name = secret value)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"setting {prefix} must be a table of [{prefix}.NAME] tables")
    out: dict[str, HttpCredential] = {}
    for name, body in raw.items():
        where = f"{prefix}.{name}"
        if not isinstance(body, Mapping):
            raise ConfigError(f"setting {where} must be a table with headers and/or query")
        _check_keys(where, body, {"headers", "query"})
        parts: dict[str, dict[str, Secret]] = {}
        for part in ("headers", "query"):
            table = body.get(part) or {}
            if not isinstance(table, Mapping) or not all(
                    isinstance(v, str) for v in table.values()):
                raise ConfigError(f"setting {where}.{part} must be a table of name = \"text\"")
            parts[part] = {str(k): Secret(v) for k, v in table.items()}
        if not parts["headers"] and not parts["query"]:
            raise ConfigError(f"setting {where} needs headers = {{...}} or query = {{...}}")
        out[str(name)] = HttpCredential(**parts)
    return out


def _account(name: str, raw: Mapping[str, Any],
             network: Mapping[str, Any] | None = None) -> Account:
    """One account; ``network`` holds the global verify_tls/ca_bundle/proxy, which the
    account's own keys and then each section's override."""
    prefix = f"accounts.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"setting {prefix} must be a table")
    _check_keys(prefix, raw, {"afilnet", "anna", "http"} | _NETWORK_KEYS)
    own = {k: raw[k] for k in _NETWORK_KEYS if k in raw}
    _network_fields(f"{prefix}.", own)
    inherited = {**(network or {}), **own}

    def section(key: str) -> dict[str, Any]:
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"setting {prefix}.{key} must be a table")
        return {**inherited, **value}

    return Account(
        name=name,
        afilnet=_afilnet(f"{prefix}.afilnet", section("afilnet")),
        anna=_anna(f"{prefix}.anna", section("anna")),
        http=_http(f"{prefix}.http", section("http")),
    )


def _retention(value: Any) -> float | None:
    from .durations import ALLOWED, parse_age

    if value in (None, "", "off", False):
        return None
    try:
        return parse_age(value)
    except ValueError:
        raise ConfigError(f"setting worker.retention must be {ALLOWED} (or \"off\"); "
                          f"got {value!r}") from None


def _worker(raw: Mapping[str, Any]) -> WorkerSettings:
    _check_keys("worker", raw, set(WorkerSettings.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "retention":
            values[key] = _retention(value)
            continue
        integer = key in ("concurrency", "batch", "max_attempts")
        values[key] = _positive(f"worker.{key}", value, integer=integer)
    return WorkerSettings(**values)


_ENV_DEFAULT_ACCOUNT = {
    "SQLBRIDGE_AFILNET_URL": ("afilnet", "url"),
    "SQLBRIDGE_AFILNET_USER": ("afilnet", "user"),
    "SQLBRIDGE_AFILNET_PASSWORD": ("afilnet", "password"),
    "SQLBRIDGE_AFILNET_AUTH": ("afilnet", "auth"),
    "SQLBRIDGE_ANNA_URL": ("anna", "url"),
    "SQLBRIDGE_ANNA_COMPANY_HASH": ("anna", "company_hash"),
    "SQLBRIDGE_ANNA_USER": ("anna", "user"),
    "SQLBRIDGE_ANNA_PASSWORD": ("anna", "password"),
    "SQLBRIDGE_HTTP_ALLOWED_HOSTS": ("http", "allowed_hosts"),
    "SQLBRIDGE_HTTP_ALLOW_PRIVATE": ("http", "allow_private"),
}
_ENV_NETWORK = {
    "SQLBRIDGE_VERIFY_TLS": "verify_tls",
    "SQLBRIDGE_CA_BUNDLE": "ca_bundle",
    "SQLBRIDGE_PROXY": "proxy",
}
_ENV_WORKER = {
    "SQLBRIDGE_WORKER_CONCURRENCY": "concurrency",
    "SQLBRIDGE_WORKER_BATCH": "batch",
    "SQLBRIDGE_WORKER_POLL_INTERVAL": "poll_interval",
    "SQLBRIDGE_WORKER_LEASE_SECONDS": "lease_seconds",
    "SQLBRIDGE_WORKER_MAX_ATTEMPTS": "max_attempts",
}


# Every variable that can also be given as NAME_FILE (SQLBRIDGE_CONFIG names a file already).
ENV_NAMES = (*_ENV_DEFAULT_ACCOUNT, *_ENV_NETWORK, *_ENV_WORKER, "SQLBRIDGE_DATABASE_URL")


def _with_files(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each ``SQLBRIDGE_X_FILE`` replaced by ``SQLBRIDGE_X`` = the file's text,
    less one trailing newline (how container secrets are mounted)."""
    out = dict(env)
    for name in ENV_NAMES:
        path = env.get(f"{name}_FILE")
        if not path:
            continue
        if env.get(name):
            raise ConfigError(f"set either {name} or {name}_FILE, not both")
        try:
            value = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else \
                (exc.strerror or type(exc).__name__)
            raise ConfigError(f"setting {name}_FILE: cannot read {path}: {reason}") from None
        out[name] = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    return out


_SECRET_KEYS = {"user", "password", "company_hash", "headers", "proxy"}
_warned_readable: set[str] = set()


def _holds_secrets(raw: Mapping[str, Any]) -> bool:
    database_url = raw.get("database_url")
    if isinstance(database_url, str) and "@" in database_url:  # user:password@host
        return True
    if raw.get("proxy"):
        return True
    for account in (raw.get("accounts") or {}).values():
        if not isinstance(account, Mapping):
            continue
        if account.get("proxy"):
            return True
        for section in account.values():
            if isinstance(section, Mapping) and any(section.get(k) for k in _SECRET_KEYS):
                return True
    return False


def _warn_if_readable(path: str, raw: Mapping[str, Any]) -> None:
    """One warning per file and process when a file holding secrets is group/world-readable."""
    if os.name != "posix" or path in _warned_readable or not _holds_secrets(raw):
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        _warned_readable.add(path)
        log.warning("configuration file %s holds secrets and can be read by group or others "
                    "(mode %04o); run: chmod 600 %s", path, mode, path)


def load(config_path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``--config``, ``SQLBRIDGE_CONFIG`` or ``./sqlbridge.toml`` if present),
    then let ``SQLBRIDGE_*`` variables (or ``SQLBRIDGE_*_FILE``) override it."""
    env = _with_files(os.environ if env is None else env)
    path = config_path or env.get("SQLBRIDGE_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"configuration file {path} does not exist")
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
        _warn_if_readable(str(path), raw)

    _check_keys("(top level)", raw, {"database_url", "accounts", "worker", "schedules"} |
                _NETWORK_KEYS)
    network = {k: raw[k] for k in _NETWORK_KEYS if k in raw}
    _network_fields("", network)
    for var, key in _ENV_NETWORK.items():
        if env.get(var):
            network[key] = env[var]
            try:
                _network_fields("", {key: env[var]})
            except ConfigError as exc:
                raise ConfigError(str(exc).replace(f"setting {key}", f"setting {var}")) from None
    accounts_raw: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v
                                    for k, v in (raw.get("accounts") or {}).items()}
    default = accounts_raw.setdefault("default", {})
    for var, (section, key) in _ENV_DEFAULT_ACCOUNT.items():
        if env.get(var):
            default.setdefault(section, {})
            default[section] = {**default[section], key: env[var]}

    worker_raw = dict(raw.get("worker") or {})
    for var, key in _ENV_WORKER.items():
        if env.get(var):
            worker_raw[key] = env[var]

    schedules = raw.get("schedules") or []
    if not isinstance(schedules, list) or not all(isinstance(s, Mapping) for s in schedules):
        raise ConfigError("setting schedules must be a list of tables ([[schedules]])")

    database_url = env.get("SQLBRIDGE_DATABASE_URL") or raw.get("database_url") or \
        DEFAULT_DATABASE_URL
    if not isinstance(database_url, str) or "://" not in database_url:
        raise ConfigError(
            "setting SQLBRIDGE_DATABASE_URL (database_url) must be an SQLAlchemy URL such as "
            "sqlite:///sqlbridge.db or mssql+pyodbc://user:pass@host/db?driver=..."
        )
    return Settings(
        database_url=database_url,
        accounts={name: _account(name, value, network)
                  for name, value in accounts_raw.items()},
        worker=_worker(worker_raw),
        schedules=tuple(schedules),
        config_path=str(path) if path else None,
    )

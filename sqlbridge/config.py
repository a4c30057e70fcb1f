"""Settings: environment variables ``SQLBRIDGE_*`` over an optional TOML file.

Credentials are grouped in named accounts; a request names its account, never its secrets. Every
secret is wrapped in ``Secret`` so that a stray ``repr``, log line or exception message shows
``***`` instead of the value. A bad setting raises ``ConfigError`` naming the setting and what
is allowed, which the CLI prints as one line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

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
    # Requests per second for this account and provider, shared by all threads of a worker.
    rate_limit: float | None = None
    # Send again a request whose outcome is unknown (read timeout, worker death) instead of
    # marking it `uncertain`. Off by default: a duplicate chat message is worse than a question.
    allow_resend: bool = False


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
class HttpSettings(Transport):
    # Hosts http.request may call; empty means none (an allowlist, like
    # sp_invoke_external_rest_endpoint's).
    allowed_hosts: tuple[str, ...] = ()
    # Headers added by the worker (e.g. Authorization); secret, never stored with the request.
    headers: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class Account:
    name: str
    afilnet: AfilnetSettings = field(default_factory=AfilnetSettings)
    anna: AnnaSettings = field(default_factory=AnnaSettings)
    http: HttpSettings = field(default_factory=HttpSettings)

    def secrets(self) -> list[str]:
        """Every secret value of the account, for scrubbing responses and messages."""
        values: list[Secret | None] = [
            self.afilnet.user, self.afilnet.password,
            self.anna.company_hash, self.anna.user, self.anna.password,
            *self.http.headers.values(),
        ]
        return [v.reveal() for v in values if v and len(v.reveal()) >= 3]


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 8
    batch: int = 50
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    max_attempts: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 600.0


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
        return [s for a in self.accounts.values() for s in a.secrets()]

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


def _transport_fields(prefix: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("connect_timeout", "read_timeout", "rate_limit"):
        if raw.get(key) is not None:
            out[key] = _positive(f"{prefix}.{key}", raw[key])
    if raw.get("allow_resend") is not None:
        out["allow_resend"] = _bool(f"{prefix}.allow_resend", raw["allow_resend"])
    return out


def _check_keys(prefix: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"unknown setting {prefix}.{key}; allowed: {', '.join(sorted(allowed))}"
            )


_TRANSPORT_KEYS = {"connect_timeout", "read_timeout", "rate_limit", "allow_resend"}


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


def _http(prefix: str, raw: Mapping[str, Any]) -> HttpSettings:
    _check_keys(prefix, raw, _TRANSPORT_KEYS | {"allowed_hosts", "headers"})
    hosts = raw.get("allowed_hosts") or ()
    if isinstance(hosts, str):
        hosts = [h.strip() for h in hosts.split(",") if h.strip()]
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"setting {prefix}.allowed_hosts must be a list of host names")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"setting {prefix}.headers must be a table of header = value")
    return HttpSettings(
        allowed_hosts=tuple(h.lower() for h in hosts),
        headers={str(k): Secret(str(v)) for k, v in headers.items()},
        **_transport_fields(prefix, raw),
    )


def _account(name: str, raw: Mapping[str, Any]) -> Account:
    prefix = f"accounts.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"setting {prefix} must be a table")
    _check_keys(prefix, raw, {"afilnet", "anna", "http"})
    return Account(
        name=name,
        afilnet=_afilnet(f"{prefix}.afilnet", raw.get("afilnet") or {}),
        anna=_anna(f"{prefix}.anna", raw.get("anna") or {}),
        http=_http(f"{prefix}.http", raw.get("http") or {}),
    )


def _worker(raw: Mapping[str, Any]) -> WorkerSettings:
    _check_keys("worker", raw, set(WorkerSettings.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key, value in raw.items():
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
}
_ENV_WORKER = {
    "SQLBRIDGE_WORKER_CONCURRENCY": "concurrency",
    "SQLBRIDGE_WORKER_BATCH": "batch",
    "SQLBRIDGE_WORKER_POLL_INTERVAL": "poll_interval",
    "SQLBRIDGE_WORKER_LEASE_SECONDS": "lease_seconds",
    "SQLBRIDGE_WORKER_MAX_ATTEMPTS": "max_attempts",
}


def load(config_path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``--config``, ``SQLBRIDGE_CONFIG`` or ``./sqlbridge.toml`` if present),
    then let ``SQLBRIDGE_*`` variables override it."""
    env = os.environ if env is None else env
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

    _check_keys("(top level)", raw, {"database_url", "accounts", "worker", "schedules"})
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
        accounts={name: _account(name, value) for name, value in accounts_raw.items()},
        worker=_worker(worker_raw),
        schedules=tuple(schedules),
        config_path=str(path) if path else None,
    )

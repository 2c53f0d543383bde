"""Every environment variable Backtor reads, read here, once, at the start of each process.

One table (`VARIABLES`) drives `Settings.from_env`, so a bad value fails at start naming
its variable, and docs/configuration.md is checked against the same table by the tests.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backtor.conductor.auth import DEFAULT_REFRESH_MINUTES, ConductorAuth, header_parts
from backtor.core.errors import SettingError
from backtor.core.specs import MAX_JITTER_SECONDS

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# /metrics: one series set per spec (the default: dashboards and alert rules rest on its
# `backup` label), or fleet-level figures only (docs/operations.md says when to switch).
METRICS_MODES = ("per-spec", "aggregated")
# `backtor worker`: Backtor's own tasks in threads of its one process (the default: a
# fifth of the memory, docs/performance.md#worker-footprint), or in conductor-python's
# runner processes, one per task type (docs/operations.md#worker-isolation says when).
WORKER_ISOLATIONS = ("thread", "process")
# BACKTOR_TICK_SHARDS: at most this many tick workflows.
MAX_TICK_SHARDS = 64
_TRUE = ("1", "true")
_FALSE = ("0", "false")


@dataclass(frozen=True)
class Settings:
    """One process's configuration (docs/configuration.md has every variable).

    The fields after `removal_retry_seconds` have defaults, so that callers that build
    Settings by hand keep working.
    """

    conductor_api_url: str
    database_url: str
    data_dir: Path
    log_level: str
    log_format: str
    api_token: str | None = field(repr=False)
    max_removals_per_run: int
    removal_retry_seconds: float
    api_host: str = "0.0.0.0"
    api_port: int = 6000
    migrate_on_start: bool = False
    worker_health_host: str = "0.0.0.0"
    worker_health_port: int = 6001
    storage_roots: tuple[str, ...] = ()
    # Conductor's credentials (secrets: kept out of the repr); `conductor_auth` combines them.
    conductor_auth_key: str | None = None
    conductor_auth_secret: str | None = field(default=None, repr=False)
    conductor_auth_header: tuple[str, str] | None = field(default=None, repr=False)
    conductor_auth_refresh_minutes: float = DEFAULT_REFRESH_MINUTES
    # Conductor's UI, for links from /ui to each backup's and removal's workflow.
    conductor_ui_url: str | None = None
    # Failure notifications (docs/notifications.md): the receiver of specs without their
    # own notifyUrl (its query may hold a token: kept out of the repr), and the signing key.
    notify_url: str | None = field(default=None, repr=False)
    notify_secret: str | None = field(default=None, repr=False)
    # jitterSeconds of a spec created or replaced without one.
    jitter_seconds: int = 0
    # verifySampleRate of a spec without one (read at each verifyCron fire).
    verify_sample_rate: float = 0.0
    # What the API's /metrics renders: METRICS_MODES.
    metrics_mode: str = "per-spec"
    # How `backtor worker` runs Backtor's own tasks: WORKER_ISOLATIONS.
    worker_isolation: str = "thread"
    # The worker id Backtor's tasks are polled under (conductor-python's variable, which
    # the storage workers' SDK reads itself); None: the host name.
    worker_id: str | None = None
    # How many tick shards the watchdog keeps (docs/scheduling.md, "Shards"); replicas
    # should agree: the one holding the watchdog lease writes its own into the database.
    tick_shards: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of `VARIABLES`; SettingError names the first bad one."""
        values = _read(VARIABLES, os.environ if env is None else env)
        _check_conductor_auth(values)
        if values["database_url"] is None:
            values["database_url"] = f"sqlite:///{values['data_dir'] / 'backtor.db'}"
        values["database_url"] = normalize_database_url(values["database_url"])
        return cls(**values)

    @property
    def conductor_auth(self) -> ConductorAuth | None:
        """The credentials every Conductor call of this process sends, or None (open)."""
        return _conductor_auth(
            self.conductor_auth_key,
            self.conductor_auth_secret,
            self.conductor_auth_header,
            self.conductor_auth_refresh_minutes,
        )


def conductor_auth_from_env(env: Mapping[str, str] | None = None) -> ConductorAuth | None:
    """Only the CONDUCTOR_AUTH_* variables, read and checked as `Settings.from_env` does.

    The default of every Conductor client and worker configuration
    (backtor.conductor.auth.resolve), so that one set of settings reaches every call.
    """
    values = _read(AUTH_VARIABLES, os.environ if env is None else env)
    _check_conductor_auth(values)
    return _conductor_auth(
        values["conductor_auth_key"],
        values["conductor_auth_secret"],
        values["conductor_auth_header"],
        values["conductor_auth_refresh_minutes"],
    )


def _read(variables: tuple[Variable, ...], source: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable in variables:
        # Unset and empty are the same: `FOO=` in a compose file means "the default".
        text = source.get(variable.name) or variable.default
        values[variable.field] = None if text is None else variable.parse(variable.name, text)
    return values


def _check_conductor_auth(values: Mapping[str, Any]) -> None:
    key, secret = values["conductor_auth_key"], values["conductor_auth_secret"]
    if key is not None and secret is None:
        raise SettingError("CONDUCTOR_AUTH_SECRET", "", "must be set when CONDUCTOR_AUTH_KEY is")
    if secret is not None and key is None:
        raise SettingError("CONDUCTOR_AUTH_KEY", "", "must be set when CONDUCTOR_AUTH_SECRET is")
    header = values["conductor_auth_header"]
    if key is not None and header is not None and header[0].lower() == "x-authorization":
        raise SettingError(
            "CONDUCTOR_AUTH_HEADER",
            f"{header[0]}: ***",
            "X-Authorization carries the token of CONDUCTOR_AUTH_KEY; name another header",
        )


def _conductor_auth(
    key: str | None,
    secret: str | None,
    header: tuple[str, str] | None,
    refresh_minutes: float,
) -> ConductorAuth | None:
    if key is None and header is None:
        return None
    return ConductorAuth(
        key_id=key,
        key_secret=secret,
        header_name=None if header is None else header[0],
        header_value=None if header is None else header[1],
        refresh_minutes=refresh_minutes,
    )


def normalize_database_url(url: str) -> str:
    """Route plain postgresql:// URLs to psycopg 3, the driver Backtor ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# -- how a variable's text becomes a value: (variable, text) -> value, or SettingError ------


def _text(_variable: str, text: str) -> str:
    return text


def _directory(_variable: str, text: str) -> Path:
    return Path(text).resolve()


def _paths(_variable: str, text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(os.pathsep) if p)


def _conductor_url(variable: str, text: str) -> str:
    url = text.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url, flags=re.IGNORECASE):
        raise SettingError(variable, text, "must be an http:// or https:// URL")
    return url


def _notify_url(variable: str, text: str) -> str:
    """An http(s) URL with a host; a bad one is shown without its query or password."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        good = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        good = False
    if not good or re.search(r"\s", url):
        shown = re.sub(r"[?#].*", "?***", text)  # a token may follow
        shown = re.sub(r"[^/@\s]*@", "***@", shown)  # user:password@
        raise SettingError(variable, shown, "must be an http:// or https:// URL")
    return url


def _database_url(variable: str, text: str) -> str:
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text.strip()):
        raise SettingError(
            variable,
            _hide_password(text),
            "must be a database URL, e.g. postgresql://user:password@host:5432/db",
        )
    return text.strip()


def _hide_password(text: str) -> str:
    """The value with any password replaced: an error message must not carry it."""
    text = re.sub(r":[^:/@\s]*@", ":***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


def _secret(_variable: str, text: str) -> str:
    return text


def _header(variable: str, text: str) -> tuple[str, str]:
    parts = header_parts(text)
    if parts is None:
        # The value is a secret: only a header name (the text before a colon) is shown, or
        # the whole text when nothing follows its colon.
        name, colon, value = text.partition(":")
        if not colon or not name.isprintable():
            shown = "***"
        elif value.strip():
            shown = f"{name.strip()}: ***"
        else:
            shown = text
        raise SettingError(
            variable, shown, "must be one HTTP header, 'Name: value', e.g. 'X-Api-Key: ...'"
        )
    return parts


def _positive(unit: str) -> Callable[[str, str], float]:
    def parse(variable: str, text: str) -> float:
        try:
            amount = float(text.strip())
        except ValueError:
            amount = math.nan
        if not (math.isfinite(amount) and amount > 0):
            raise SettingError(variable, text, f"must be a number of {unit} above 0")
        return amount

    return parse


def _port(first: int, why: str) -> Callable[[str, str], int]:
    def parse(variable: str, text: str) -> int:
        try:
            port = int(text.strip())
        except ValueError:
            raise SettingError(variable, text, why) from None
        if not first <= port <= 65535:
            raise SettingError(variable, text, why)
        return port

    return parse


def _positive_int(variable: str, text: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise SettingError(variable, text, "must be a whole number, 1 or more")
    return number


def _shards(variable: str, text: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_TICK_SHARDS:
        raise SettingError(variable, text, f"must be a whole number, 1 to {MAX_TICK_SHARDS}")
    return number


def _jitter(variable: str, text: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_JITTER_SECONDS:
        raise SettingError(
            variable, text, f"must be a whole number of seconds, 0 to {MAX_JITTER_SECONDS}"
        )
    return number


def _sample_rate(variable: str, text: str) -> float:
    try:
        rate = float(text.strip())
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise SettingError(variable, text, "must be a number from 0 to 1")
    return rate


def _choice(choices: tuple[str, ...], upper: bool = False) -> Callable[[str, str], str]:
    def parse(variable: str, text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise SettingError(variable, text, f"must be one of {', '.join(choices)}")
        return value.upper() if upper else value

    return parse


def _flag(variable: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE + _FALSE:
        raise SettingError(variable, text, "must be 1 or 0 (or true or false)")
    return value in _TRUE


@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it fills, its default and its parser.

    `default` None: no default text; the field is None (or derived, for DATABASE_URL).
    """

    name: str
    field: str
    default: str | None
    parse: Callable[[str, str], Any]


# The order matters only for DATA_DIR before DATABASE_URL (whose default lies under it).
VARIABLES: tuple[Variable, ...] = (
    Variable("CONDUCTOR_API_URL", "conductor_api_url", "http://localhost:8080/api", _conductor_url),
    Variable("DATA_DIR", "data_dir", "./data", _directory),
    Variable("DATABASE_URL", "database_url", None, _database_url),
    Variable("LOG_LEVEL", "log_level", "info", _choice(LOG_LEVELS, upper=True)),
    Variable("LOG_FORMAT", "log_format", "text", _choice(LOG_FORMATS)),
    Variable("BACKTOR_API_TOKEN", "api_token", None, _text),
    Variable("BACKTOR_MAX_REMOVALS_PER_RUN", "max_removals_per_run", "20", _positive_int),
    Variable("BACKTOR_REMOVAL_RETRY_SECONDS", "removal_retry_seconds", "30", _positive("seconds")),
    Variable("HOST", "api_host", "0.0.0.0", _text),
    Variable("PORT", "api_port", "6000", _port(1, "must be a port number, 1 to 65535")),
    Variable("BACKTOR_MIGRATE_ON_START", "migrate_on_start", "0", _flag),
    Variable("BACKTOR_WORKER_HEALTH_HOST", "worker_health_host", "0.0.0.0", _text),
    Variable(
        "BACKTOR_WORKER_HEALTH_PORT",
        "worker_health_port",
        "6001",
        _port(0, "must be a port number, 1 to 65535, or 0 for no probes"),
    ),
    Variable("BACKTOR_STORAGE_ROOTS", "storage_roots", "", _paths),
    Variable("CONDUCTOR_AUTH_KEY", "conductor_auth_key", None, _text),
    Variable("CONDUCTOR_AUTH_SECRET", "conductor_auth_secret", None, _secret),
    Variable("CONDUCTOR_AUTH_HEADER", "conductor_auth_header", None, _header),
    Variable(
        "CONDUCTOR_AUTH_REFRESH_MINUTES",
        "conductor_auth_refresh_minutes",
        "45",
        _positive("minutes"),
    ),
    Variable("CONDUCTOR_UI_URL", "conductor_ui_url", None, _conductor_url),
    Variable("BACKTOR_NOTIFY_URL", "notify_url", None, _notify_url),
    Variable("BACKTOR_NOTIFY_SECRET", "notify_secret", None, _secret),
    Variable("BACKTOR_JITTER_SECONDS", "jitter_seconds", "0", _jitter),
    Variable("BACKTOR_VERIFY_SAMPLE_RATE", "verify_sample_rate", "0", _sample_rate),
    Variable("BACKTOR_METRICS_MODE", "metrics_mode", "per-spec", _choice(METRICS_MODES)),
    Variable("BACKTOR_WORKER_ISOLATION", "worker_isolation", "thread", _choice(WORKER_ISOLATIONS)),
    Variable("CONDUCTOR_WORKER_ALL_WORKER_ID", "worker_id", None, _text),
    Variable("BACKTOR_TICK_SHARDS", "tick_shards", "1", _shards),
)
AUTH_VARIABLES = tuple(v for v in VARIABLES if v.name.startswith("CONDUCTOR_AUTH_"))

"""Every environment variable Backtor reads, read here, once, at the start of each process.

One table (`VARIABLES`) drives `Settings.from_env`, so a bad value fails at start naming
its variable, and docs/configuration.md is checked against the same table by the tests.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtor.core.errors import SettingError

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
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
    api_token: str | None
    max_removals_per_run: int
    removal_retry_seconds: float
    api_host: str = "0.0.0.0"
    api_port: int = 6000
    migrate_on_start: bool = False
    worker_health_host: str = "0.0.0.0"
    worker_health_port: int = 6001
    storage_roots: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of `VARIABLES`; SettingError names the first bad one."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            # Unset and empty are the same: `FOO=` in a compose file means "the default".
            text = source.get(variable.name) or variable.default
            values[variable.field] = None if text is None else variable.parse(variable.name, text)
        if values["database_url"] is None:
            values["database_url"] = f"sqlite:///{values['data_dir'] / 'backtor.db'}"
        values["database_url"] = normalize_database_url(values["database_url"])
        return cls(**values)


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


def _positive_seconds(variable: str, text: str) -> float:
    try:
        seconds = float(text.strip())
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise SettingError(variable, text, "must be a number of seconds above 0")
    return seconds


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
    Variable("BACKTOR_REMOVAL_RETRY_SECONDS", "removal_retry_seconds", "30", _positive_seconds),
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
)

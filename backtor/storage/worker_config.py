"""A spec's workerConfig, parsed and checked before anything is touched.

Pure: no file or network access. Every refusal is a TerminalError whose message says what
to fix, because retrying a workerConfig that cannot work only delays the operator. Messages
never quote the DSN (it may carry a password).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backtor.storage.errors import TerminalError

KINDS: tuple[str, ...] = ("filesystem", "postgres")
MASK = "***"


class ConfigError(TerminalError):
    """A workerConfig that can never work."""


@dataclass(frozen=True)
class FilesystemConfig:
    """Back up the directory `source` as a compressed tar into the directory `target`."""

    source: str
    target: str
    kind: Literal["filesystem"] = "filesystem"

    def secrets(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Dsn:
    """A libpq connection string (URI or key=value) that may hold a password.

    Only `connection()` and `secrets()` see the password: commands get
    `conninfo_without_password()` and the password through PGPASSWORD; messages `describe()`.
    """

    value: str = field(repr=False)

    def connection(self) -> dict[str, str]:
        """libpq parameters from the DSN, password included (for the environment only)."""
        return {k: str(v) for k, v in conninfo_to_dict(self.value).items() if v is not None}

    def password(self) -> str | None:
        return self.connection().get("password") or None

    def conninfo_without_password(self, **override: str) -> str:
        """What a command line may show: everything but the password (`override` wins)."""
        params = {k: v for k, v in self.connection().items() if k != "password"}
        return make_conninfo("", **(params | override))

    def conninfo(self, **override: str) -> str:
        """The full DSN for this process's own connections (psycopg), `override` applied."""
        return make_conninfo(self.value, **override) if override else self.value

    def describe(self, dbname: str | None = None) -> str:
        """Where it points, for messages: user@host:port/dbname, no password."""
        params = self.connection()
        user = params.get("user", "")
        where = f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"
        name = dbname if dbname is not None else params.get("dbname", user)
        return f"{user + '@' if user else ''}{where}/{name}"

    def secrets(self) -> tuple[str, ...]:
        password = self.password()
        return (self.value, password) if password else (self.value,)


@dataclass(frozen=True)
class PostgresConfig:
    """Dump the database `dsn` in pg_dump's custom format into the directory `target`."""

    dsn: str = field(repr=False)
    target: str
    kind: Literal["postgres"] = "postgres"

    @property
    def database(self) -> Dsn:
        return Dsn(self.dsn)

    def connection(self) -> dict[str, str]:
        """libpq parameters from the DSN, password included (for the environment only)."""
        return self.database.connection()

    def password(self) -> str | None:
        return self.database.password()

    def conninfo_without_password(self) -> str:
        """What pg_dump may see on its command line: everything but the password."""
        return self.database.conninfo_without_password()

    def describe(self) -> str:
        """Where the dump comes from, for messages: user@host:port/dbname, no password."""
        return self.database.describe()

    def secrets(self) -> tuple[str, ...]:
        return self.database.secrets()


WorkerConfig = FilesystemConfig | PostgresConfig

_FIELDS: dict[str, tuple[str, ...]] = {
    "filesystem": ("kind", "source", "target"),
    "postgres": ("kind", "dsn", "target"),
}


def parse_worker_config(raw: object) -> WorkerConfig:
    """The typed config a storage task's workerConfig input describes."""
    if raw is None:
        raise ConfigError("workerConfig is missing: set it on the spec (see the storage docs)")
    value = json_object(raw, "workerConfig")
    if value is None:
        raise ConfigError("workerConfig is empty: set it on the spec (see the storage docs)")
    kind = value.get("kind")
    if kind is None:
        raise ConfigError(f'workerConfig has no "kind" (one of: {", ".join(KINDS)})')
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ConfigError(
            f"workerConfig kind {short(kind)} is unknown (known kinds: {', '.join(KINDS)})"
        )
    allowed = _FIELDS[kind]
    check_fields(value, "workerConfig", allowed, kind)
    strings = {name: _required_string(value, name, kind) for name in allowed[1:]}
    if kind == "filesystem":
        return FilesystemConfig(source=strings["source"], target=strings["target"])
    config = PostgresConfig(dsn=strings["dsn"], target=strings["target"])
    check_dsn(config.database, "workerConfig dsn")
    return config


def json_object(raw: object, field: str) -> dict[str, Any] | None:
    """A JSON object given as a string or handed over as is; None when missing or blank."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{field} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
        except RecursionError:
            raise ConfigError(f"{field} is not valid JSON (nested too deeply)") from None
    elif isinstance(raw, dict):
        value = raw  # Conductor may hand over a JSON object as is
    else:
        raise ConfigError(f"{field} must be a JSON object string, got {type(raw).__name__}")
    if not isinstance(value, dict):
        raise ConfigError(f"{field} must be a JSON object, got {_json_type(value)}")
    return value


def check_fields(value: dict[str, Any], field: str, allowed: Iterable[str], kind: str) -> None:
    """Refuse fields other than `allowed`, so a typo fails instead of passing unnoticed."""
    names = tuple(allowed)
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise ConfigError(
            f"{field} has unknown field(s) {', '.join(map(short, unknown))} for kind "
            f"{kind} (allowed: {', '.join(names)})"
        )


def check_served(config: WorkerConfig, served: Iterable[str]) -> None:
    """Refuse a kind this process does not serve, naming the ones it does."""
    kinds = sorted(served)
    if config.kind not in kinds:
        raise ConfigError(
            f"workerConfig kind {config.kind} is not served by this storage worker (it serves: "
            f"{', '.join(kinds)}); run one with --kind {config.kind}"
        )


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, longest first (a DSN before its password)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def check_dsn(dsn: Dsn, field: str) -> None:
    """Refuse a DSN libpq cannot parse, without quoting it; `field` names it in messages."""
    try:
        params = dsn.connection()
    except psycopg.ProgrammingError as exc:
        detail = str(exc).strip()
        # libpq quotes the offending text for most errors; only an option name is safe to show.
        hint = f": {detail}" if detail.startswith("invalid connection option") else ""
        raise ConfigError(
            f"{field} is not a valid PostgreSQL URI or key=value string{hint}"
        ) from None
    port = params.get("port")
    if port is not None and not all(p.isdigit() for p in port.split(",")):
        raise ConfigError(f"{field} has a port that is not a number")


def _required_string(value: dict[str, Any], name: str, kind: str) -> str:
    item = value.get(name)
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f'workerConfig for kind {kind} needs "{name}" (a non-empty string)')
    if "\x00" in item:
        raise ConfigError(f'workerConfig "{name}" contains a NUL character')
    return item


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def short(value: object) -> str:
    """A value as JSON for a message, cut to 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + '..."'

"""The inputs `verify` and `restore` add to a storage task, parsed and checked before any I/O.

Pure, like worker_config.py: every refusal is a ConfigError (terminal) saying what to fix,
and no message quotes a DSN. restoreConfig and verifyConfig are JSON objects, given as a
string (as a spec's workerConfig is) or handed over as an object by Conductor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backtor.storage.worker_config import (
    ConfigError,
    Dsn,
    check_dsn,
    check_fields,
    json_object,
    short,
)

_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class FilesystemRestore:
    """Extract into the directory `target`; replace a non-empty one only with `overwrite`."""

    target: str
    overwrite: bool = False

    def secrets(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class PostgresRestore:
    """pg_restore into the existing database `dsn`.

    `overwrite`: restore into a database that already holds relations (pg_restore --clean
    --if-exists). `keep_owners`: restore owners and privileges as dumped; without it, the
    restoring role owns everything and no GRANT is replayed (--no-owner --no-privileges).
    """

    dsn: str = field(repr=False)
    overwrite: bool = False
    keep_owners: bool = False

    @property
    def database(self) -> Dsn:
        return Dsn(self.dsn)

    def secrets(self) -> tuple[str, ...]:
        return self.database.secrets()


RestoreConfig = FilesystemRestore | PostgresRestore


@dataclass(frozen=True)
class VerifyConfig:
    """How deep `verify` goes. `deep` (postgres): restore into a throwaway database, created
    on the server of `dsn` (default: the workerConfig's), and compare row counts."""

    deep: bool = False
    dsn: str | None = field(default=None, repr=False)

    @property
    def server(self) -> Dsn | None:
        return Dsn(self.dsn) if self.dsn is not None else None

    def secrets(self) -> tuple[str, ...]:
        server = self.server
        return server.secrets() if server is not None else ()


_RESTORE_FIELDS = {
    "filesystem": ("target", "overwrite"),
    "postgres": ("dsn", "overwrite", "keepOwners"),
}
_VERIFY_FIELDS = {"filesystem": ("deep",), "postgres": ("deep", "dsn")}


def parse_restore_config(raw: object, kind: str) -> RestoreConfig:
    """The restoreConfig of a `restore` task for a backup of `kind`."""
    value = json_object(raw, "restoreConfig")
    if value is None:
        wanted = '{"target": "/abs/dir"}' if kind == "filesystem" else '{"dsn": "postgresql://..."}'
        raise ConfigError(f"restoreConfig is missing: give one like {wanted}")
    check_fields(value, "restoreConfig", _RESTORE_FIELDS[kind], kind)
    overwrite = _flag(value, "overwrite", "restoreConfig")
    if kind == "filesystem":
        return FilesystemRestore(_string(value, "target", "restoreConfig", kind), overwrite)
    config = PostgresRestore(
        _string(value, "dsn", "restoreConfig", kind),
        overwrite,
        _flag(value, "keepOwners", "restoreConfig"),
    )
    check_dsn(config.database, "restoreConfig dsn")
    return config


def parse_verify_config(raw: object, kind: str) -> VerifyConfig:
    """The optional verifyConfig of a `verify` task; missing or blank means the defaults."""
    value = json_object(raw, "verifyConfig")
    if value is None:
        return VerifyConfig()
    check_fields(value, "verifyConfig", _VERIFY_FIELDS[kind], kind)
    deep = _flag(value, "deep", "verifyConfig")
    if "dsn" not in value:
        return VerifyConfig(deep)
    config = VerifyConfig(deep, _string(value, "dsn", "verifyConfig", kind))
    server = config.server
    assert server is not None
    check_dsn(server, "verifyConfig dsn")
    return config


def parse_checksum(raw: object) -> str | None:
    """The SHA-256 recorded at backup time (64 hex digits, `sha256:` prefix allowed)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    found = _SHA256.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if found is None:
        raise ConfigError(f"checksum {short(raw)} is not a SHA-256 digest (64 hex digits)")
    return found.group(1).lower()


def parse_row_counts(raw: object) -> dict[str, int] | None:
    """The per-table row counts recorded at backup time: {"schema.table": rows}."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    value: Any = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise ConfigError("rowCounts is not valid JSON") from None
    if not isinstance(value, Mapping):
        raise ConfigError('rowCounts must be a JSON object like {"public.orders": 42}')
    counts: dict[str, int] = {}
    for table, rows in value.items():
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ConfigError(f"rowCounts of {short(table)} is {short(rows)}, not a count of rows")
        counts[str(table)] = rows
    return counts


def _flag(value: Mapping[str, Any], name: str, where: str) -> bool:
    item = value.get(name, False)
    if not isinstance(item, bool):
        raise ConfigError(f'{where} "{name}" must be true or false, got {short(item)}')
    return item


def _string(value: Mapping[str, Any], name: str, where: str, kind: str) -> str:
    item = value.get(name)
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f'{where} for kind {kind} needs "{name}" (a non-empty string)')
    if "\x00" in item:
        raise ConfigError(f'{where} "{name}" contains a NUL character')
    return item

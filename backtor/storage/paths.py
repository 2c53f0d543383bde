"""Where a storage worker may read and write: its allowed roots, checked on real paths.

A workerConfig comes from whoever may write specs, so a path in it is checked against the
roots the operator gave the worker, after resolving symbolic links: neither `..` nor a link
leads out. A dataId must be a plain file name of the kind's backups inside the target, so
`remove` can never delete anything else.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backtor.core.specs import NAME_PATTERN
from backtor.storage.errors import RetryableError, TerminalError

_NAME_RE = re.compile(NAME_PATTERN, re.ASCII)


class PathNotAllowed(TerminalError):
    """A path in a task's input that the worker must not touch."""


@dataclass(frozen=True)
class AllowedRoots:
    """Directories (real paths) under which the worker reads sources and writes backups."""

    paths: tuple[Path, ...]

    @classmethod
    def from_paths(cls, raw: Iterable[str]) -> AllowedRoots:
        """Resolve the operator's roots once, at start; ValueError says what is wrong."""
        roots: list[Path] = []
        for item in raw:
            real = Path(os.path.realpath(item))
            if not real.is_dir():
                raise ValueError(f"allowed root {item} is not an existing directory")
            if real == Path(real.anchor):
                raise ValueError(f"allowed root {item} is the file system's root: name a directory")
            if real not in roots:
                roots.append(real)
        if not roots:
            raise ValueError(
                "no allowed roots: give --allow-root PATH or set BACKTOR_STORAGE_ROOTS"
            )
        return cls(tuple(roots))

    def resolve(self, raw: str, field: str) -> Path:
        """The real path of `raw`, or PathNotAllowed when it is not under a root."""
        if not os.path.isabs(raw):
            raise PathNotAllowed(f"{field} {raw!r} must be an absolute path")
        if ".." in PurePosixPath(raw).parts:
            raise PathNotAllowed(f"{field} {raw!r} may not contain '..'")
        real = Path(os.path.realpath(raw))
        if any(real == root or real.is_relative_to(root) for root in self.paths):
            return real
        shown = f"{raw!r}" if str(real) == raw else f"{raw!r} (really {real})"
        raise PathNotAllowed(
            f"{field} {shown} is outside the storage worker's allowed roots: "
            f"{', '.join(str(p) for p in self.paths)}"
        )

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)


def check_backup_name(name: object) -> str:
    """A spec name, safe in a file name (the API enforces the same rule)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TerminalError(f"backupName {name!r} is not a valid spec name")
    return name


def check_data_id(data_id: object, suffix: str) -> str:
    """A dataId `remove` may delete: a plain name ending in `suffix`, never a path."""
    if not isinstance(data_id, str) or not data_id:
        raise TerminalError("dataId is missing")
    if "/" in data_id or "\\" in data_id or "\x00" in data_id:
        raise TerminalError(f"dataId {data_id!r} must be a plain file name, not a path")
    if data_id.startswith("."):
        raise TerminalError(f"dataId {data_id!r} may not start with '.'")
    if not data_id.endswith(suffix) or data_id == suffix:
        raise TerminalError(f"dataId {data_id!r} is not a backup of this kind (*{suffix})")
    return data_id


def backup_file(roots: AllowedRoots, target: str, data_id: str) -> tuple[Path, Path]:
    """The store (`target`, inside the roots) and the backup file in it, which must exist
    as a regular file: what verify and restore read."""
    store = roots.resolve(target, "target")
    path = store / data_id
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise TerminalError(f"backup file {data_id} not found in {store}") from None
    except OSError as exc:
        raise RetryableError(f"cannot read {data_id} in {store}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise TerminalError(f"{data_id} in {store} is not a regular file")
    return store, path

"""Backup files: named once, written under a hidden temporary name, renamed when complete.

A crash leaves at most a hidden `.<name>.<random>.partial` file, never a half backup under a
real name; a failure deletes its partial file. The name is fixed by the task (scheduled time
and task id), so a task Conductor delivers again replaces its earlier file instead of
leaving an orphan beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from backtor.storage.errors import RetryableError, Stopping, TerminalError

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Budget:
    """When a running backup must give up: the spec's timeoutSeconds, or the worker stopping."""

    stopping: Callable[[], bool]
    timeout_seconds: float | None = None
    started: float = 0.0
    # Asked once, before a finished backup is kept: False when its run was terminated
    # meanwhile (Conductor then ignores the result, and the file would be orphaned).
    still_wanted: Callable[[], bool] = lambda: True
    activity: str = "backup"  # what runs, in messages: backup, verify, restore

    @classmethod
    def start(
        cls,
        timeout_seconds: object,
        stopping: Callable[[], bool],
        still_wanted: Callable[[], bool] = lambda: True,
        activity: str = "backup",
    ) -> Budget:
        seconds: float | None = None
        if isinstance(timeout_seconds, int | float) and not isinstance(timeout_seconds, bool):
            seconds = float(timeout_seconds) if timeout_seconds > 0 else None
        elif isinstance(timeout_seconds, str) and timeout_seconds.strip().isdigit():
            seconds = float(timeout_seconds) or None
        return cls(stopping, seconds, time.monotonic(), still_wanted, activity)

    def confirm(self) -> None:
        """Raise TerminalError when the finished backup is no longer wanted: it is not kept."""
        self.check()
        if not self.still_wanted():
            raise TerminalError("the run was terminated while the backup was taken; not kept")

    def check(self) -> None:
        """Raise Stopping or RetryableError when the backup must stop now."""
        if self.stopping():
            raise Stopping("the storage worker is stopping")
        limit = self.timeout_seconds
        if limit is not None and time.monotonic() - self.started > limit:
            raise RetryableError(
                f"the {self.activity} took longer than its timeoutSeconds ({limit:g})"
            )


@dataclass(frozen=True)
class Taken:
    """A finished backup: its file name in the target (the dataId), its size, the SHA-256 of
    its bytes (hex) and, for postgres, the rows per table in the dump's snapshot."""

    data_id: str
    size_bytes: int
    checksum: str = ""
    row_counts: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Verification:
    """What `verify` found: whether the backup restores, and a short account of why."""

    verified: bool
    details: str
    checksum: str  # SHA-256 of the backup file as read now, hex


@dataclass(frozen=True)
class Restored:
    """A finished restore: where to, whether existing data was replaced, what was read."""

    restored_to: str  # a directory, or user@host:port/dbname (never a password)
    replaced: bool
    checksum: str  # SHA-256 of the backup file as read, hex
    entries: int | None = None  # members extracted (filesystem)
    leftover: str | None = None  # the replaced tree, when it could not be deleted


def checksum_account(expected: str | None, actual: str) -> tuple[bool, str]:
    """Compare with the checksum recorded at backup time: (matches, a phrase for details)."""
    if expected is None:
        return True, f"no checksum recorded at backup time to compare (SHA-256 now {actual})"
    if expected == actual:
        return True, "SHA-256 matches the checksum recorded at backup time"
    return False, (
        f"SHA-256 {actual} differs from {expected}, recorded at backup time: the file changed since"
    )


def backup_file_name(backup_name: str, when: datetime, task_id: str, suffix: str) -> str:
    """`<spec>-<UTC time>-<task>`: sorts by time in a listing, unique per task."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = re.sub(r"[^A-Za-z0-9]", "", task_id)[:8] or uuid.uuid4().hex[:8]
    return f"{backup_name}-{stamp}-{tag}{suffix}"


class PendingOutput:
    """A backup file being written: `publish()` makes it real, leaving the block discards it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.final = directory / name
        self.path = directory / f".{name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)  # backups hold data: owner only
        except OSError as exc:
            raise RetryableError(f"cannot create a file in {directory}: {exc.strerror}") from None
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.published = False

    def __enter__(self) -> PendingOutput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.published:
            self.discard()

    def publish(self) -> int:
        """Flush to disk, rename to the real name; the size in bytes."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            size = self.path.stat().st_size
            os.replace(self.path, self.final)
            fsync_directory(self.final.parent)
        except OSError as exc:
            raise RetryableError(f"cannot finish {self.final.name}: {exc.strerror}") from None
        self.published = True
        return size

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


class GuardedWriter:
    """A write-only file that checks the budget before each write, so a stop is prompt, and
    hashes what it writes (SHA-256: the backup's checksum)."""

    def __init__(self, file: BinaryIO, budget: Budget) -> None:
        self._file = file
        self._budget = budget
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._budget.check()
        written = self._file.write(data)
        self._hash.update(data)
        return written

    def checksum(self) -> str:
        return self._hash.hexdigest()

    def flush(self) -> None:
        self._file.flush()


CHUNK = 1 << 20


def file_checksum(path: Path, budget: Budget) -> str:
    """SHA-256 (hex) of a whole file, read in chunks, the budget checked between them."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            budget.check()
            digest.update(chunk)
    return digest.hexdigest()


def remove_data(directory: Path, data_id: str) -> bool:
    """Delete one backup file; False when it was already gone (removal is idempotent)."""
    try:
        os.unlink(directory / data_id)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise TerminalError(f"{data_id} in {directory} is a directory, not a backup") from None
    except OSError as exc:
        raise RetryableError(f"cannot remove {data_id} from {directory}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        fsync_directory(directory)
    return True


def ensure_directory(path: Path, field: str) -> Path:
    """Create a missing target (it was checked to lie under an allowed root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TerminalError(f"{field} {path} exists and is not a directory") from None
    except OSError as exc:
        raise RetryableError(f"cannot create {field} {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise TerminalError(f"{field} {path} is not a directory")
    return path


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

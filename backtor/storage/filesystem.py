"""The filesystem kind: a directory archived as one gzip-compressed tar file in the target.

Members are relative to the source (`tar -xzf <archive> -C <dir>` restores it). Symbolic
links are stored as links, never followed, so the archive holds nothing from outside the
source. Entries that vanish while the archive is written (a live directory) are skipped.

`verify` reads a whole archive (archive.py); `restore` extracts one into a hidden sibling
of its target, in the same allowed root, and swaps that into place only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import stat
import tarfile
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from backtor.storage.archive import Extractor, read_archive, remove_tree
from backtor.storage.errors import RetryableError, TerminalError
from backtor.storage.output import (
    Budget,
    GuardedWriter,
    PendingOutput,
    Restored,
    Taken,
    Verification,
    backup_file_name,
    checksum_account,
    ensure_directory,
    fsync_directory,
)
from backtor.storage.paths import AllowedRoots, PathNotAllowed, backup_file
from backtor.storage.task_input import FilesystemRestore
from backtor.storage.worker_config import FilesystemConfig

log = logging.getLogger(__name__)

SUFFIX = ".tar.gz"
COMPRESS_LEVEL = 6  # gzip's own default: most of level 9's ratio at a fraction of its time


def take_backup(
    config: FilesystemConfig,
    roots: AllowedRoots,
    backup_name: str,
    when: datetime,
    task_id: str,
    budget: Budget,
) -> Taken:
    source = roots.resolve(config.source, "source")
    target = roots.resolve(config.target, "target")
    if target == source or target.is_relative_to(source):
        raise TerminalError(
            f"target {config.target!r} lies inside source {config.source!r}: "
            "the archive would contain itself"
        )
    if not source.is_dir():
        raise TerminalError(f"source {config.source!r} is not an existing directory")
    ensure_directory(target, "target")
    name = backup_file_name(backup_name, when, task_id, SUFFIX)
    with PendingOutput(target, name) as output:
        try:
            writer = GuardedWriter(output.file, budget)
            with (
                gzip.GzipFile(
                    filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=writer
                ) as compressed,
                tarfile.TarFile(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
            ):
                _add_tree(archive, source, budget)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise RetryableError(
                f"cannot archive {config.source} into {name}: {exc.strerror or exc}{where}"
            ) from None
        budget.confirm()
        size = output.publish()
    return Taken(name, size, writer.checksum())


def _add_tree(archive: tarfile.TarFile, source: Path, budget: Budget) -> None:
    pending: list[tuple[Path, str]] = [(source, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed while we archived its parent
        for entry in entries:
            budget.check()
            path = Path(entry.path)
            arcname = prefix + entry.name
            try:
                info = archive.gettarinfo(str(path), arcname)
            except FileNotFoundError:
                continue
            if info is None:
                continue  # a socket: nothing to keep
            if info.isreg():
                _add_file(archive, path, info)
            else:
                archive.addfile(info)
                if info.isdir():
                    pending.append((path, arcname + "/"))


def _add_file(archive: tarfile.TarFile, path: Path, info: tarfile.TarInfo) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # gone since it was listed
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return  # replaced by a link since it was listed
        raise
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return  # replaced by something else since it was listed
        archive.addfile(info, file)


def verify_backup(
    config: FilesystemConfig,
    roots: AllowedRoots,
    data_id: str,
    expected: str | None,
    budget: Budget,
) -> Verification:
    """Read the whole archive: gzip and tar structure, the restore rules, the checksum.

    A damaged archive is an answer (verified false), not an error; a missing one is a
    TerminalError naming it.
    """
    store, archive = backup_file(roots, config.target, data_id)
    try:
        read = read_archive(archive, budget)
    except OSError as exc:
        raise _read_error(exc, data_id, store) from None
    matches, account = checksum_account(expected, read.checksum)
    problems = [read.problem] if read.problem else []
    if not matches:
        problems.append(account)
    if problems:
        return Verification(False, "; ".join(problems), read.checksum)
    details = (
        f"read all {read.size_bytes} bytes: gzip and tar intact, {read.members} members, "
        f"all restorable; {account}"
    )
    return Verification(True, details, read.checksum)


def restore_backup(
    config: FilesystemConfig,
    restore: FilesystemRestore,
    roots: AllowedRoots,
    data_id: str,
    expected: str | None,
    budget: Budget,
    still_wanted: Callable[[], bool] = lambda: True,
) -> Restored:
    """Extract the archive into `restore.target`, replacing its contents only with overwrite.

    Everything is extracted into a hidden sibling directory first (same root, so the same
    file system as a rule); the target is touched only once that is complete and checked.
    A failure removes the sibling and leaves the target as it was.
    """
    store, archive = backup_file(roots, config.target, data_id)
    target = _restore_target(restore, roots, archive)
    existing = _existing(target, restore.overwrite)
    parent = ensure_directory(target.parent, "restoreConfig target's parent")
    tag = uuid.uuid4().hex[:8]
    staging = parent / f".{target.name}.restore-{tag}"
    try:
        os.mkdir(staging, 0o700)
    except OSError as exc:
        raise RetryableError(f"cannot create a directory in {parent}: {exc.strerror}") from None
    try:
        extractor = Extractor(staging)
        try:
            read = read_archive(archive, budget, extractor)
        except OSError as exc:
            raise _read_error(exc, data_id, store, staging) from None
        if read.problem:
            raise _refused(data_id, read.problem)
        matches, account = checksum_account(expected, read.checksum)
        if not matches:
            raise _refused(data_id, account)
        extractor.finish()
        mode = read.root_mode if read.root_mode is not None else existing
        if mode is not None:
            os.chmod(staging, stat.S_IMODE(mode) & 0o777)
        else:
            os.chmod(staging, 0o777 & ~_umask())
        os.sync()  # the new tree reaches the disk before it replaces anything
        budget.check()
        if not still_wanted():
            raise TerminalError(
                "the run was terminated during the restore; the target was left as it was"
            )
        replaced, leftover = _swap(staging, target, tag, restore.overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(staging)
        raise
    return Restored(str(target), replaced, read.checksum, extractor.created, leftover)


def _restore_target(restore: FilesystemRestore, roots: AllowedRoots, archive: Path) -> Path:
    """The target's real path: inside a root, not a root, holding neither the archive nor a
    root (the swap would move them away)."""
    target = roots.resolve(restore.target, "restoreConfig target")
    shown = f"restoreConfig target {restore.target!r}"
    if target in roots.paths:
        raise PathNotAllowed(f"{shown} is an allowed root itself: name a directory inside it")
    if archive.is_relative_to(target):
        raise TerminalError(f"{shown} holds the backup being restored: restore elsewhere")
    if any(root.is_relative_to(target) for root in roots.paths):
        raise PathNotAllowed(f"{shown} holds an allowed root: name a directory inside one")
    return target


def _existing(target: Path, overwrite: bool) -> int | None:
    """The mode of the directory already at `target` (None: nothing there); refuse a
    non-empty one without overwrite, and anything that is not a directory."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RetryableError(f"cannot look at {target}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TerminalError(f"restoreConfig target {target} exists and is not a directory")
    if not overwrite:
        try:
            with os.scandir(target) as scan:
                names = sorted(entry.name for _, entry in zip(range(3), scan, strict=False))
        except OSError as exc:
            raise TerminalError(
                f"cannot list restoreConfig target {target}: {exc.strerror}"
            ) from None
        if names:
            shown = ", ".join(names)
            raise TerminalError(
                f"restoreConfig target {target} is not empty (it holds {shown}...): restore "
                'into an empty or new directory, or set "overwrite": true to replace it'
            )
    return info.st_mode


def _swap(staging: Path, target: Path, tag: str, overwrite: bool) -> tuple[bool, str | None]:
    """Put the complete tree in place: (replaced a non-empty tree, what could not be deleted).

    Into a new or empty target: one rename. Over a non-empty one: the old tree is renamed
    aside, the new one into place (the old one is put back if that fails), then the old one
    is deleted. Between the two renames the target is briefly absent, never half-written.
    """
    try:
        os.rename(staging, target)  # replaces an empty directory in one step
    except FileNotFoundError:
        raise TerminalError(f"{target.parent} vanished during the restore") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and not overwrite:
            raise TerminalError(
                f"restoreConfig target {target} was filled during the restore; it was left as it "
                'was (set "overwrite": true to replace it)'
            ) from None
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise TerminalError(
                f"cannot move the restored tree to {target}: {exc.strerror}"
            ) from None
    else:
        _sync(target.parent)
        return False, None
    aside = target.parent / f".{target.name}.old-{tag}"
    try:
        os.rename(target, aside)
    except OSError as exc:
        raise TerminalError(
            f"cannot move the existing {target} aside: {exc.strerror}; it was left as it was"
        ) from None
    try:
        os.rename(staging, target)
    except OSError as exc:
        try:
            os.rename(aside, target)
        except OSError:
            raise TerminalError(
                f"cannot move the restored tree to {target}: {exc.strerror}; the existing tree "
                f"is kept, intact, in {aside}"
            ) from None
        raise TerminalError(
            f"cannot move the restored tree to {target}: {exc.strerror}; the existing tree "
            "was put back"
        ) from None
    _sync(target.parent)
    try:
        remove_tree(aside)
    except OSError as exc:
        log.warning("the replaced tree %s could not be deleted: %s", aside, exc)
        return True, str(aside)
    return True, None


def _sync(directory: Path) -> None:
    """Make the swap durable; it is done either way, so a failure here fails nothing."""
    with contextlib.suppress(OSError):
        fsync_directory(directory)


def _refused(data_id: str, why: str) -> TerminalError:
    return TerminalError(
        f"backup {data_id} cannot be restored: {why}; the target was left as it was"
    )


def _read_error(exc: OSError, data_id: str, store: Path, staging: Path | None = None) -> Exception:
    """An OSError while reading the archive or writing the restored tree: retryable (a full
    disk, an I/O error); the file vanishing meanwhile is terminal."""
    if isinstance(exc, FileNotFoundError) and exc.filename == str(store / data_id):
        return TerminalError(f"backup file {data_id} not found in {store}")
    where = ""
    if exc.filename:
        name = str(exc.filename)
        if staging is not None and name.startswith(str(staging)):
            name = "the restored tree"  # the hidden directory is an internal detail
        where = f" ({name})"
    doing = "restore" if staging is not None else "read"
    return RetryableError(f"cannot {doing} {data_id}: {exc.strerror or exc}{where}")


def _umask() -> int:
    """The process's umask, read from /proc (setting it to read it would race threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022

"""The filesystem kind: a directory archived as one gzip-compressed tar file in the target.

Members are relative to the source (`tar -xzf <archive> -C <dir>` restores it). Symbolic
links are stored as links, never followed, so the archive holds nothing from outside the
source. Entries that vanish while the archive is written (a live directory) are skipped.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import tarfile
from datetime import datetime
from pathlib import Path

from backtor.storage.errors import RetryableError, TerminalError
from backtor.storage.output import (
    Budget,
    GuardedWriter,
    PendingOutput,
    Taken,
    backup_file_name,
    ensure_directory,
)
from backtor.storage.paths import AllowedRoots
from backtor.storage.worker_config import FilesystemConfig

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
    return Taken(name, size)


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

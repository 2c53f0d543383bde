"""Reading a filesystem backup (a gzip-compressed tar) in one pass, for `verify` and `restore`.

The archive is read from its first byte to its last: the SHA-256 of the whole file, the gzip
stream to its end (its CRC and length are checked there), every tar header and every
member's data, and what follows the tar's end-of-archive marker (zeros only). A truncated
file, a flipped byte or trailing garbage all show as a `problem`, never as a crash.

Every member must also pass the restore rules (MemberRules), so an archive `verify` accepts
is one `restore` extracts: no absolute name, no `..`, nothing under a symbolic link, no
symbolic link that leads out of the restored tree (directly or through other links), a hard
link only to a regular file earlier in the archive, no device file or FIFO.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol, Self

from backtor.storage.output import CHUNK, Budget

MAX_LINK_HOPS = 40  # as the kernel's own limit on symbolic links in one lookup
BLOCK = tarfile.BLOCKSIZE


class ArchiveBroken(Exception):
    """Why the archive cannot be restored as it is: its structure, or a member refused."""


MemberKind = Literal["directory", "file", "symlink", "hardlink"]


@dataclass(frozen=True)
class Member:
    """A member the rules admitted: its normalized name and what to make of it."""

    kind: MemberKind
    parts: tuple[str, ...]  # the name's components, none empty, "." or ".."
    link: tuple[str, ...]  # a hard link's target member; empty otherwise
    symlink: str  # a symbolic link's target as stored; empty otherwise
    mode: int
    mtime: float

    @property
    def name(self) -> str:
        return "/".join(self.parts)


class MemberRules:
    """The restore rules, member by member, with what the archive has created so far."""

    def __init__(self) -> None:
        self.directories: set[str] = set()
        self.files: set[str] = set()
        self.links: dict[str, str] = {}
        self.count = 0
        self.root_mode: int | None = None  # the mode of a "." member, if the archive has one

    def admit(self, info: tarfile.TarInfo) -> Member | None:
        """The member to create, None for the archive's root entry; ArchiveBroken if refused."""
        parts = _split(info.name, "member")
        shown = repr(info.name)
        if not parts:
            if info.isdir():
                self.root_mode = info.mode
                return None
            raise ArchiveBroken(f"member {shown} names the restored directory itself")
        name = "/".join(parts)
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in self.links:
                raise ArchiveBroken(f"member {shown} lies under the symbolic link {prefix!r}")
            if prefix in self.files:
                raise ArchiveBroken(f"member {shown} lies under the file {prefix!r}")
        link: tuple[str, ...] = ()
        symlink = ""
        kind: MemberKind
        if info.isdir():
            if name in self.files or name in self.links:
                raise ArchiveBroken(f"directory member {shown} replaces a file of the same name")
            kind = "directory"
        elif info.ischr() or info.isblk():
            raise ArchiveBroken(f"member {shown} is a device file")
        elif info.isfifo():
            raise ArchiveBroken(f"member {shown} is a FIFO (named pipe)")
        elif name in self.directories:
            raise ArchiveBroken(f"member {shown} replaces a directory of the same name")
        elif info.issym():
            kind, symlink = "symlink", info.linkname
            self._check_symlink(name, symlink, shown)
        elif info.islnk():
            kind, link = "hardlink", _split(info.linkname, f"hard link {shown} to")
            if link == parts or "/".join(link) not in self.files:
                raise ArchiveBroken(
                    f"hard link {shown} points to {info.linkname!r}, which is not a regular "
                    "file earlier in the archive"
                )
        elif info.isreg() and info.type in tarfile.SUPPORTED_TYPES:
            kind = "file"
        else:
            raise ArchiveBroken(f"member {shown} has an unsupported type {info.type!r}")
        self._record(parts, name, kind, symlink)
        self.count += 1
        return Member(kind, parts, link, symlink, info.mode, info.mtime)

    def finish(self) -> None:
        """Check every symbolic link against the complete archive (links may chain)."""
        for name, target in self.links.items():
            if not self._inside(name.split("/")):
                raise ArchiveBroken(
                    f"symbolic link {name!r} -> {target!r} leads outside the restored tree "
                    "through other links in the archive"
                )

    def _check_symlink(self, name: str, target: str, shown: str) -> None:
        if not target:
            raise ArchiveBroken(f"symbolic link {shown} has an empty target")
        if target.startswith("/"):
            raise ArchiveBroken(
                f"symbolic link {shown} points to the absolute path {target!r}, outside the "
                "restored tree"
            )
        parent = name.split("/")[:-1]
        if not self._inside([*parent, *target.split("/")]):
            raise ArchiveBroken(
                f"symbolic link {shown} -> {target!r} leads outside the restored tree"
            )

    def _record(self, parts: Sequence[str], name: str, kind: MemberKind, link: str = "") -> None:
        for depth in range(1, len(parts)):
            self.directories.add("/".join(parts[:depth]))
        if kind == "directory":
            self.directories.add(name)
        elif kind == "symlink":
            self.files.discard(name)
            self.links[name] = link
        else:
            self.links.pop(name, None)
            self.files.add(name)

    def _inside(self, parts: Sequence[str]) -> bool:
        """Whether `parts`, followed through the archive's links, stays in the tree."""
        pending = list(parts)
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return False
                resolved.pop()
                continue
            resolved.append(part)
            target = self.links.get("/".join(resolved))
            if target is None:
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                return True  # a loop leads nowhere: the kernel refuses to follow it
            if target.startswith("/"):
                return False
            resolved.pop()
            pending[:0] = target.split("/")
        return True


def _split(name: str, what: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise ArchiveBroken(f"{what} {name!r} is an absolute path")
    raw = name.split("/")
    if ".." in raw:
        raise ArchiveBroken(f"{what} {name!r} contains '..'")
    if "\x00" in name:
        raise ArchiveBroken(f"{what} {name!r} contains a NUL character")
    return tuple(part for part in raw if part not in ("", "."))


class Sink(Protocol):
    """Where admitted members go (restore's Extractor); verify has none."""

    def directory(self, member: Member) -> None: ...
    def file(self, member: Member, chunks: Iterator[bytes]) -> None: ...
    def symlink(self, member: Member) -> None: ...
    def hardlink(self, member: Member) -> None: ...


@dataclass(frozen=True)
class ArchiveRead:
    """What one pass over an archive found: `problem` is None when it is intact."""

    checksum: str  # SHA-256 of the file's bytes, hex
    size_bytes: int
    members: int
    problem: str | None
    root_mode: int | None = None


def read_archive(path: Path, budget: Budget, sink: Sink | None = None) -> ArchiveRead:
    """Read the whole archive at `path`, handing each member to `sink` when given.

    Structure faults and refused members come back as `problem` (the checksum still covers
    the whole file). OSError other than a gzip fault (the file is missing, a read fails, the
    sink cannot write), Stopping and RetryableError (the budget) propagate.
    """
    rules = MemberRules()
    with open(path, "rb") as raw:
        source = _HashingReader(raw)
        problem: str | None = None
        try:
            _read(source, rules, budget, sink)
        except ArchiveBroken as exc:
            problem = str(exc)
        except gzip.BadGzipFile as exc:
            problem = f"the gzip stream is damaged: {exc}"
        except EOFError:
            problem = "the gzip stream ends early: the file is truncated"
        except zlib.error as exc:
            problem = f"the compressed data is damaged: {exc}"
        except tarfile.TarError as exc:
            text = str(exc)
            if text.startswith("zlib error"):
                problem = f"the compressed data is damaged: {text}"
            else:
                problem = f"the tar structure is damaged: {text}"
        source.drain(budget)
    return ArchiveRead(source.hexdigest(), source.size, rules.count, problem, rules.root_mode)


def _read(source: _HashingReader, rules: MemberRules, budget: Budget, sink: Sink | None) -> None:
    header = _recording_header()
    with (
        gzip.GzipFile(fileobj=source, mode="rb") as unzipped,
        tarfile.open(fileobj=unzipped, mode="r|", tarinfo=header) as tar,
    ):
        for info in tar:
            budget.check()
            member = rules.admit(info)
            if member is None:
                continue
            if member.kind == "file":
                chunks = _chunks(tar.extractfile(info), budget)
                if sink is None:
                    for _ in chunks:
                        pass
                else:
                    sink.file(member, chunks)
                    for _ in chunks:  # what the sink left unread
                        pass
            elif sink is None:
                continue
            elif member.kind == "directory":
                sink.directory(member)
            elif member.kind == "symlink":
                sink.symlink(member)
            else:
                sink.hardlink(member)
        rules.finish()
        _check_end(tar, header.last, budget)


def _recording_header() -> type[_RecordingHeader]:
    """A TarInfo class of this read's own that keeps the last header block it parsed.

    tarfile ends its iteration quietly on a damaged header after the first one; the block
    it stopped at tells a real end-of-archive marker (zeros) from damage.
    """
    return type("Header", (_RecordingHeader,), {"last": b""})


class _RecordingHeader(tarfile.TarInfo):
    last: bytes = b""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        cls.last = bytes(buf)
        return super().frombuf(buf, encoding, errors)


def _check_end(tar: tarfile.TarFile, last: bytes, budget: Budget) -> None:
    """After the last member: the end-of-archive marker, then zeros to the gzip's end."""
    if len(last) < BLOCK:
        raise ArchiveBroken(
            f"the tar stream ends at byte {tar.offset} without its end-of-archive marker "
            "(truncated)"
        )
    if last.count(0) != BLOCK:
        raise ArchiveBroken(f"the tar header at byte {tar.offset} is damaged")
    stream: IO[bytes] = tar.fileobj  # type: ignore[assignment]
    while chunk := stream.read(CHUNK):
        budget.check()
        if chunk.count(0) != len(chunk):
            raise ArchiveBroken("data follows the tar's end-of-archive marker")


def _chunks(data: IO[bytes] | None, budget: Budget) -> Iterator[bytes]:
    if data is None:
        return
    while chunk := data.read(CHUNK):
        budget.check()
        yield chunk


class _HashingReader:
    """The archive file as gzip reads it, hashed on the way."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        raise io.UnsupportedOperation("an archive is read once, from start to end")

    def drain(self, budget: Budget) -> None:
        """Hash what gzip left unread (all of it after a fault)."""
        while chunk := self._file.read(CHUNK):
            budget.check()
            self._hash.update(chunk)
            self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Extractor:
    """Creates admitted members under `root`: an empty directory of the restore's own.

    Files are created new (O_EXCL, O_NOFOLLOW), so nothing is written through a link; each
    member's parent must really lie in `root`. Modes keep the permission bits only (no
    setuid, setgid or sticky bit); owners are the worker's user; times are restored.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real = os.path.realpath(root)
        self._directories: list[tuple[Path, int, float]] = []
        self.created = 0

    def directory(self, member: Member) -> None:
        path = self._parent(member) / member.parts[-1]
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise ArchiveBroken(f"directory member {member.name!r} replaces a file") from None
        self._directories.append((path, member.mode, member.mtime))
        self.created += 1

    def file(self, member: Member, chunks: Iterator[bytes]) -> None:
        path = self._free(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), stat.S_IMODE(member.mode) & 0o777)
            os.utime(out.fileno(), (member.mtime, member.mtime))
        self.created += 1

    def symlink(self, member: Member) -> None:
        path = self._free(member)
        os.symlink(member.symlink, path)
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        self.created += 1

    def hardlink(self, member: Member) -> None:
        source = self.root.joinpath(*member.link)
        self._check_inside(source.parent, member)
        if not stat.S_ISREG(os.lstat(source).st_mode):
            raise ArchiveBroken(f"hard link {member.name!r} does not point to a regular file")
        path = self._free(member)
        os.link(source, path, follow_symlinks=False)
        self.created += 1

    def finish(self) -> None:
        """Directory modes and times, deepest first (a read-only one is filled by now)."""
        for path, mode, mtime in sorted(self._directories, key=lambda d: -len(d[0].parts)):
            os.chmod(path, stat.S_IMODE(mode) & 0o777)
            os.utime(path, (mtime, mtime))

    def _parent(self, member: Member) -> Path:
        parent = self.root.joinpath(*member.parts[:-1])
        if len(member.parts) > 1:
            parent.mkdir(parents=True, exist_ok=True)  # a directory the archive left implicit
        self._check_inside(parent, member)
        return parent

    def _free(self, member: Member) -> Path:
        """The member's path, whatever held that name before removed (a later member wins)."""
        path = self._parent(member) / member.parts[-1]
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path
        if stat.S_ISDIR(mode):
            raise ArchiveBroken(f"member {member.name!r} replaces a directory")
        os.unlink(path)
        return path

    def _check_inside(self, directory: Path, member: Member) -> None:
        real = os.path.realpath(directory)
        if real != self._real and not real.startswith(self._real + os.sep):
            raise ArchiveBroken(f"member {member.name!r} would be written outside the target")


def remove_tree(path: Path) -> None:
    """Delete a directory tree, read-only directories in it included; never follows links."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for top, directories, _ in os.walk(path):
        for name in directories:
            full = os.path.join(top, name)
            if not os.path.islink(full):
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o700)
    shutil.rmtree(path)

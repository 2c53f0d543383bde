"""Reading a filesystem backup in one pass (backtor.storage.archive): the structure checks and
the restore rules every member must pass, on archives built by hand on a temporary disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from backtor.storage.archive import ArchiveBroken, MemberRules, read_archive
from backtor.storage.output import Budget


def never() -> bool:
    return False


BUDGET = Budget.start(None, never)


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple:
    return (name, kind, data, link)


def write_archive(path: Path, entries: Iterable[tuple]) -> Path:
    """A tar.gz with exactly these members, whatever they say (tarfile writes them as given)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.mtime = 1_700_000_000
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def good(tmp_path: Path) -> Path:
    return write_archive(
        tmp_path / "good.tar.gz",
        [
            entry("dir", tarfile.DIRTYPE),
            entry("dir/a.txt", data=b"alpha\n" * 1000),
            entry("dir/link", tarfile.SYMTYPE, link="a.txt"),
            entry("dir/up", tarfile.SYMTYPE, link="../top.bin"),
            entry("top.bin", data=bytes(range(256)) * 400),
            entry("hard", tarfile.LNKTYPE, link="dir/a.txt"),
        ],
    )


def problem(path: Path) -> str:
    found = read_archive(path, BUDGET)
    assert found.problem is not None
    return found.problem


def test_an_intact_archive_reads_fully_with_its_checksum(tmp_path: Path) -> None:
    path = good(tmp_path)
    found = read_archive(path, BUDGET)
    assert found.problem is None
    assert found.members == 6
    assert found.size_bytes == path.stat().st_size
    assert found.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("members", "phrase"),
    [
        ([entry("../escape.txt", data=b"x")], "member '../escape.txt' contains '..'"),
        ([entry("a/../../x", data=b"x")], "contains '..'"),
        ([entry("/etc/cron.d/evil", data=b"x")], "is an absolute path"),
        (
            [entry("etc", tarfile.SYMTYPE, link="/etc")],
            "points to the absolute path '/etc', outside the restored tree",
        ),
        (
            [entry("up", tarfile.SYMTYPE, link="../..")],
            "symbolic link 'up' -> '../..' leads outside the restored tree",
        ),
        (
            [entry("d", tarfile.DIRTYPE), entry("d/up", tarfile.SYMTYPE, link="../../x")],
            "leads outside the restored tree",
        ),
        (
            # Each link is harmless by its text; together they lead out.
            [
                entry("x", tarfile.DIRTYPE),
                entry("x/b", tarfile.SYMTYPE, link=".."),
                entry("a", tarfile.SYMTYPE, link="x/b/.."),
            ],
            "symbolic link 'a' -> 'x/b/..' leads outside the restored tree",
        ),
        (
            # The later link redirects the earlier one, checked against the whole archive.
            [
                entry("a", tarfile.SYMTYPE, link="x/b/.."),
                entry("x", tarfile.DIRTYPE),
                entry("x/b", tarfile.SYMTYPE, link=".."),
            ],
            "leads outside the restored tree through other links",
        ),
        (
            [
                entry("sub", tarfile.DIRTYPE),
                entry("d", tarfile.SYMTYPE, link="sub"),
                entry("d/file", data=b"x"),
            ],
            "member 'd/file' lies under the symbolic link 'd'",
        ),
        (
            [entry("h", tarfile.LNKTYPE, link="../../outside/secret")],
            "contains '..'",
        ),
        (
            [entry("h", tarfile.LNKTYPE, link="/etc/passwd")],
            "hard link 'h' to '/etc/passwd' is an absolute path",
        ),
        (
            [entry("h", tarfile.LNKTYPE, link="not-there")],
            "hard link 'h' points to 'not-there', which is not a regular file earlier",
        ),
        (
            [entry("s", tarfile.SYMTYPE, link="x"), entry("h", tarfile.LNKTYPE, link="s")],
            "which is not a regular file earlier",
        ),
        ([entry("null", tarfile.CHRTYPE)], "member 'null' is a device file"),
        ([entry("disk", tarfile.BLKTYPE)], "member 'disk' is a device file"),
        ([entry("pipe", tarfile.FIFOTYPE)], "member 'pipe' is a FIFO"),
        (
            [entry("f", data=b"x"), entry("f/g", data=b"y")],
            "member 'f/g' lies under the file 'f'",
        ),
        (
            [entry("d", tarfile.DIRTYPE), entry("d", data=b"x")],
            "member 'd' replaces a directory",
        ),
        ([entry(".", data=b"x")], "names the restored directory itself"),
    ],
)
def test_a_member_restore_would_refuse_is_a_problem_naming_it(
    tmp_path: Path, members: list[tuple], phrase: str
) -> None:
    path = write_archive(tmp_path / "bad.tar.gz", members)
    found = read_archive(path, BUDGET)
    assert found.problem is not None
    assert phrase in found.problem
    assert found.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_links_inside_the_tree_and_loops_are_fine() -> None:
    rules = MemberRules()
    for name, kind, link in [
        ("a", tarfile.DIRTYPE, ""),
        ("a/b", tarfile.DIRTYPE, ""),
        ("a/b/to-top", tarfile.SYMTYPE, "../.."),
        ("a/b/sibling", tarfile.SYMTYPE, "../../a"),
        ("loop1", tarfile.SYMTYPE, "loop2"),
        ("loop2", tarfile.SYMTYPE, "loop1"),
        ("dangling", tarfile.SYMTYPE, "nowhere/at/all"),
        ("./c", tarfile.DIRTYPE, ""),
    ]:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        rules.admit(info)
    rules.finish()
    assert rules.count == 8


def test_a_flipped_byte_is_found(tmp_path: Path) -> None:
    path = good(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    assert "damaged" in problem(path)


def test_a_truncated_gzip_is_found(tmp_path: Path) -> None:
    path = good(tmp_path)
    data = path.read_bytes()
    for keep in (len(data) - 1, len(data) - 9, len(data) // 2, 11):
        path.write_bytes(data[:keep])
        assert problem(path), keep
    path.write_bytes(data[: len(data) - 4])
    assert "truncated" in problem(path) or "damaged" in problem(path)
    path.write_bytes(data[: len(data) // 2])
    assert problem(path) == "the gzip stream ends early: the file is truncated"


def test_garbage_after_the_gzip_stream_is_found(tmp_path: Path) -> None:
    path = good(tmp_path)
    path.write_bytes(path.read_bytes() + b"garbage")
    assert "the gzip stream is damaged" in problem(path)


def test_not_a_gzip_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"hello, not an archive")
    assert "the gzip stream is damaged: Not a gzipped file" in problem(path)
    path.write_bytes(b"")
    assert problem(path)


def test_an_intact_gzip_around_a_damaged_or_cut_tar_is_found(tmp_path: Path) -> None:
    """The gzip CRC cannot see damage that was compressed in: tarfile stops quietly at a bad
    header after the first, so the reader checks what it stopped at."""
    tar = gzip.decompress(good(tmp_path).read_bytes())
    path = tmp_path / "inner.tar.gz"
    # A later member's header (its name field, so its header checksum fails).
    header = tar.rindex(b"top.bin")
    assert header > 4 * 512  # not the first header, which tarfile does not pass over
    damaged = bytearray(tar)
    damaged[header : header + 7] = b"\xff" * 7
    path.write_bytes(gzip.compress(bytes(damaged)))
    assert "the tar header at byte" in problem(path)
    # Cut after a whole member, before the end-of-archive marker.
    end_of_members = len(tar.rstrip(b"\0"))
    cut = (end_of_members + 511) // 512 * 512
    path.write_bytes(gzip.compress(tar[:cut]))
    assert "without its end-of-archive marker" in problem(path)
    # Data after the end-of-archive marker.
    path.write_bytes(gzip.compress(tar + b"more data"))
    assert problem(path) == "data follows the tar's end-of-archive marker"


def test_an_empty_archive_is_intact(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "empty.tar.gz", [])
    found = read_archive(path, BUDGET)
    assert found.problem is None and found.members == 0


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_archive(tmp_path / "gone.tar.gz", BUDGET)


def test_the_archive_broken_error_is_not_raised_for_a_problem(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "bad.tar.gz", [entry("../x", data=b"x")])
    try:
        read_archive(path, BUDGET)
    except ArchiveBroken:  # pragma: no cover - the failure this test guards against
        pytest.fail("a refused member must come back as a problem")

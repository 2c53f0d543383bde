"""Backup files on a real temporary file system: archives, names, cleanup, pg_dump's call."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backtor.storage import filesystem, postgres
from backtor.storage.errors import RetryableError, Stopping, TerminalError
from backtor.storage.output import Budget, PendingOutput, backup_file_name, remove_data
from backtor.storage.paths import AllowedRoots
from backtor.storage.worker_config import FilesystemConfig, PostgresConfig

WHEN = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)
TASK_ID = "6f1c2a9e-0b7d-4c1e-9d2a-1234567890ab"


def never() -> bool:
    return False


def tree(directory: Path) -> dict[str, str]:
    """Every entry under `directory`: a file's checksum, a link's target, or 'dir'."""
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink():
            found[name] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    source = tmp_path / "root" / "source"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "empty-dir").mkdir()
    (source / "a.txt").write_text("alpha\n")
    (source / "café €.txt").write_text("unicode name\n")
    (source / "empty").write_bytes(b"")
    (source / "sub" / "random.bin").write_bytes(os.urandom(300_000))
    (source / "sub" / "deeper" / "z.csv").write_text("id,name\n1,x\n" * 1000)
    (source / "link-to-a").symlink_to("a.txt")
    (source / "link-out").symlink_to("/etc/hostname")
    os.link(source / "a.txt", source / "sub" / "hard-a.txt")
    return tmp_path / "root"


def config(root: Path, target: str = "store") -> FilesystemConfig:
    return FilesystemConfig(source=str(root / "source"), target=str(root / target))


def test_an_archive_restores_to_the_same_files(root: Path, tmp_path: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    taken = filesystem.take_backup(
        config(root), roots, "docs", WHEN, TASK_ID, Budget.start(None, never)
    )
    assert taken.data_id == "docs-20260301T123005Z-6f1c2a9e.tar.gz"
    archive = root / "store" / taken.data_id
    assert taken.size_bytes == archive.stat().st_size > 0
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert os.listdir(root / "store") == [taken.data_id]  # no partial file left
    restored = tmp_path / "restored"
    with tarfile.open(archive) as tar:
        assert not any(m.name.startswith(("/", "..")) for m in tar.getmembers())
        tar.extractall(restored, filter="tar")
    assert tree(restored) == tree(root / "source")
    # Links are stored as links: nothing from outside the source is in the archive.
    assert os.readlink(restored / "link-out") == "/etc/hostname"


def test_the_same_task_delivered_again_replaces_its_file(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    for _ in range(2):
        filesystem.take_backup(
            config(root), roots, "docs", WHEN, TASK_ID, Budget.start(3600, never)
        )
    assert len(os.listdir(root / "store")) == 1


def test_a_missing_target_is_created_under_the_root(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    taken = filesystem.take_backup(
        config(root, "new/store"), roots, "docs", WHEN, TASK_ID, Budget.start(None, never)
    )
    assert (root / "new" / "store" / taken.data_id).is_file()


def test_a_target_inside_the_source_is_refused_before_writing(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    before = tree(root)
    with pytest.raises(TerminalError, match="lies inside source"):
        filesystem.take_backup(
            config(root, "source/backups"), roots, "d", WHEN, TASK_ID, Budget.start(None, never)
        )
    with pytest.raises(TerminalError, match="is not an existing directory"):
        filesystem.take_backup(
            FilesystemConfig(source=str(root / "nope"), target=str(root / "store")),
            roots,
            "d",
            WHEN,
            TASK_ID,
            Budget.start(None, never),
        )
    assert tree(root) == before


def test_a_stop_mid_archive_leaves_nothing_behind(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    calls = iter(range(1_000_000))

    def stop_after_a_few_writes() -> bool:
        return next(calls) > 5

    with pytest.raises(Stopping):
        filesystem.take_backup(
            config(root), roots, "d", WHEN, TASK_ID, Budget.start(None, stop_after_a_few_writes)
        )
    assert os.listdir(root / "store") == []


def test_a_backup_over_its_timeout_fails_retryably_and_leaves_nothing(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    late = Budget(never, timeout_seconds=1, started=time.monotonic() - 2)
    with pytest.raises(RetryableError, match=r"longer than its timeoutSeconds \(1\)"):
        filesystem.take_backup(config(root), roots, "d", WHEN, TASK_ID, late)
    assert os.listdir(root / "store") == []


def test_budget_reads_timeout_seconds_as_given() -> None:
    assert Budget.start(7200, never).timeout_seconds == 7200
    assert Budget.start("60", never).timeout_seconds == 60
    for none in (None, 0, -5, "soon", True, ""):
        assert Budget.start(none, never).timeout_seconds is None


def test_pending_output_is_hidden_until_published(tmp_path: Path) -> None:
    with PendingOutput(tmp_path, "x.dump") as output:
        output.file.write(b"data")
        assert output.path.name.startswith(".x.dump.") and output.path.name.endswith(".partial")
        assert not (tmp_path / "x.dump").exists()
        assert output.publish() == 4
    assert os.listdir(tmp_path) == ["x.dump"]
    with pytest.raises(RuntimeError), PendingOutput(tmp_path, "y.dump") as output:
        output.file.write(b"half")
        raise RuntimeError("crash")
    assert os.listdir(tmp_path) == ["x.dump"]


def test_removal_is_idempotent_and_never_removes_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").write_bytes(b"x")
    assert remove_data(tmp_path, "a.tar.gz") is True
    assert remove_data(tmp_path, "a.tar.gz") is False
    assert remove_data(tmp_path / "gone", "a.tar.gz") is False
    (tmp_path / "d.tar.gz").mkdir()
    with pytest.raises(TerminalError, match="is a directory"):
        remove_data(tmp_path, "d.tar.gz")
    assert (tmp_path / "d.tar.gz").is_dir()


def test_backup_file_names_sort_by_time_and_name_the_task() -> None:
    name = backup_file_name("db", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "a-b_c", ".dump")
    assert name == "db-20260102T030405Z-abc.dump"
    assert backup_file_name("db", WHEN, "", ".dump").startswith("db-20260301T123005Z-")


def test_pg_dump_gets_the_password_through_its_environment_only() -> None:
    config = PostgresConfig(
        dsn="postgresql://alice:pa%20ss@db:5433/orders?sslmode=require", target="/b"
    )
    command = postgres.pg_dump_command(config, Path("/b/.x.partial"))
    assert command[:3] == ["pg_dump", "--format=custom", "--no-password"]
    assert "--file=/b/.x.partial" in command
    assert not any("pa ss" in arg or "pa%20ss" in arg for arg in command)
    env = postgres.pg_dump_environment(config, {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "PGPASSWORD": "pa ss", "PGCONNECT_TIMEOUT": "10"}
    bare = PostgresConfig(dsn="dbname=app", target="/b")
    assert postgres.pg_dump_environment(bare, {"PGCONNECT_TIMEOUT": "3"}) == {
        "PGCONNECT_TIMEOUT": "3"
    }


def test_a_backup_whose_run_was_terminated_meanwhile_is_not_kept(root: Path) -> None:
    """Defect 9: Conductor ignores the result of a canceled task, so the file would be
    orphaned; the worker asks before it keeps the file, and keeps nothing."""
    roots = AllowedRoots.from_paths([str(root)])
    asked: list[bool] = []

    def terminated() -> bool:
        asked.append(True)
        return False

    with pytest.raises(TerminalError, match="terminated"):
        filesystem.take_backup(
            config(root), roots, "docs", WHEN, TASK_ID, Budget.start(None, never, terminated)
        )
    assert asked == [True]
    assert os.listdir(root / "store") == []

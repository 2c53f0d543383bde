"""The filesystem `restore`: byte-for-byte round trips, and the rules that keep it from writing
outside its target or leaving a half-written tree in place of the old one.

On a real temporary file system; no Conductor (the task function gets a TaskRun).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.storage import archive, filesystem, worker
from backtor.storage.errors import RetryableError, Stopping, TerminalError
from backtor.storage.output import Budget
from backtor.storage.paths import AllowedRoots, PathNotAllowed
from backtor.storage.task_input import FilesystemRestore
from backtor.storage.worker import StorageWorkerSettings, backup_task, restore_task
from backtor.storage.worker_config import FilesystemConfig

WHEN = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)


def never() -> bool:
    return False


def budget() -> Budget:
    return Budget.start(None, never, activity="restore")


def tree(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under `directory`: content hash or link target, mode, mtime (files)."""
    found: dict[str, tuple[str, int, int]] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        info = path.lstat()
        if path.is_symlink():
            found[name] = ("link:" + os.readlink(path), 0, 0)
        elif path.is_dir():
            found[name] = ("dir", stat.S_IMODE(info.st_mode), 0)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[name] = (digest, stat.S_IMODE(info.st_mode), int(info.st_mtime))
    return found


def hidden(directory: Path) -> list[str]:
    """The restore's own hidden directories (staging, old tree) left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if ".restore-" in p.name or ".old-" in p.name)


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
    (source / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(source / "run.sh", 0o750)  # noqa: S103 - a mode the restore must keep
    os.chmod(source / "sub" / "deeper", 0o700)
    os.utime(source / "a.txt", (1_600_000_000, 1_600_000_000))
    (source / "link-to-a").symlink_to("a.txt")
    (source / "sub" / "link-up").symlink_to("../a.txt")
    os.link(source / "a.txt", source / "sub" / "hard-a.txt")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("untouched\n")
    return tmp_path / "root"


def roots_of(root: Path) -> AllowedRoots:
    return AllowedRoots.from_paths([str(root)])


def config(root: Path) -> FilesystemConfig:
    return FilesystemConfig(source=str(root / "source"), target=str(root / "store"))


def backed_up(root: Path) -> tuple[str, str]:
    """A real backup of the source: its dataId and checksum."""
    taken = filesystem.take_backup(config(root), roots_of(root), "docs", WHEN, "t1", budget())
    assert (
        taken.checksum == hashlib.sha256((root / "store" / taken.data_id).read_bytes()).hexdigest()
    )
    return taken.data_id, taken.checksum


def restore(root: Path, data_id: str, target: str, **more: Any) -> Any:
    checksum = more.pop("checksum", None)
    return filesystem.restore_backup(
        config(root),
        FilesystemRestore(target, **more),
        roots_of(root),
        data_id,
        checksum,
        budget(),
    )


def test_a_round_trip_is_byte_for_byte(root: Path) -> None:
    data_id, checksum = backed_up(root)
    done = restore(root, data_id, str(root / "restored"), checksum=checksum)
    assert tree(root / "restored") == tree(root / "source")
    assert done.restored_to == str(root / "restored")
    assert done.replaced is False and done.leftover is None
    assert done.checksum == checksum
    assert done.entries == len(tree(root / "source"))
    restored = root / "restored"
    assert os.stat(restored / "a.txt").st_ino == os.stat(restored / "sub" / "hard-a.txt").st_ino
    assert os.readlink(restored / "sub" / "link-up") == "../a.txt"
    assert hidden(root) == []


def test_a_new_target_may_be_nested_and_an_empty_one_is_used(root: Path) -> None:
    data_id, _ = backed_up(root)
    restore(root, data_id, str(root / "a" / "b" / "restored"))
    assert tree(root / "a" / "b" / "restored") == tree(root / "source")
    (root / "empty-target").mkdir()
    os.chmod(root / "empty-target", 0o710)  # noqa: S103 - a mode the restore must keep
    done = restore(root, data_id, str(root / "empty-target"))
    assert done.replaced is False
    assert tree(root / "empty-target") == tree(root / "source")
    assert stat.S_IMODE((root / "empty-target").stat().st_mode) == 0o710  # its mode is kept


def test_a_non_empty_target_is_refused_without_overwrite(root: Path) -> None:
    data_id, _ = backed_up(root)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    before = tree(root / "live")
    with pytest.raises(TerminalError) as refused:
        restore(root, data_id, str(root / "live"))
    assert "is not empty (it holds precious.txt...)" in str(refused.value)
    assert '"overwrite": true' in str(refused.value)
    assert tree(root / "live") == before
    assert hidden(root) == []


def test_overwrite_replaces_the_tree_whole(root: Path) -> None:
    data_id, _ = backed_up(root)
    (root / "live" / "old-dir").mkdir(parents=True)
    (root / "live" / "old-dir" / "stale.txt").write_text("stale\n")
    (root / "live" / "a.txt").write_text("changed since\n")
    os.chmod(root / "live" / "old-dir", 0o500)  # read-only: still removed with the old tree
    done = restore(root, data_id, str(root / "live"), overwrite=True)
    assert done.replaced is True and done.leftover is None
    assert tree(root / "live") == tree(root / "source")  # nothing of the old tree is left
    assert hidden(root) == []


def test_a_failure_mid_extract_leaves_the_old_tree_intact(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_id, _ = backed_up(root)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    before = tree(root / "live")
    real_file = archive.Extractor.file
    written: list[str] = []

    def fail_on_the_third(self: archive.Extractor, member: Any, chunks: Iterator[bytes]) -> None:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / member.name))
        written.append(member.name)
        real_file(self, member, chunks)

    monkeypatch.setattr(archive.Extractor, "file", fail_on_the_third)
    with pytest.raises(RetryableError) as failed:
        restore(root, data_id, str(root / "live"), overwrite=True)
    assert "No space left on device (the restored tree)" in str(failed.value)
    assert len(written) == 2  # it did fail mid-way
    assert tree(root / "live") == before
    assert hidden(root) == []


def test_a_failed_swap_puts_the_old_tree_back(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_id, _ = backed_up(root)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    before = tree(root / "live")
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".restore-" in str(src) and Path(dst) == root / "live" and not (root / "live").exists():
            raise OSError(errno.EIO, "Input/output error")  # the second step of the swap
        real_rename(src, dst)

    monkeypatch.setattr(filesystem.os, "rename", rename)
    with pytest.raises(TerminalError, match="the existing tree was put back"):
        restore(root, data_id, str(root / "live"), overwrite=True)
    assert tree(root / "live") == before
    assert hidden(root) == []


def test_a_stop_mid_restore_leaves_nothing_behind(root: Path) -> None:
    data_id, _ = backed_up(root)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    calls = iter(range(1_000_000))

    def stop_after_a_few() -> bool:
        return next(calls) > 3

    with pytest.raises(Stopping):
        filesystem.restore_backup(
            config(root),
            FilesystemRestore(str(root / "live"), overwrite=True),
            roots_of(root),
            data_id,
            None,
            Budget.start(None, stop_after_a_few),
        )
    assert (root / "live" / "precious.txt").read_text() == "mine\n"
    assert hidden(root) == []


def test_a_corrupted_archive_is_refused_and_the_target_untouched(root: Path) -> None:
    data_id, _ = backed_up(root)
    path = root / "store" / data_id
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(data)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    before = tree(root / "live")
    with pytest.raises(TerminalError) as refused:
        restore(root, data_id, str(root / "live"), overwrite=True)
    assert str(refused.value).startswith(f"backup {data_id} cannot be restored: the ")
    assert "damaged" in str(refused.value)
    assert "the target was left as it was" in str(refused.value)
    assert tree(root / "live") == before
    assert not (root / "new").exists()
    assert hidden(root) == []


def test_a_checksum_mismatch_is_refused(root: Path) -> None:
    data_id, _ = backed_up(root)
    with pytest.raises(TerminalError) as refused:
        restore(root, data_id, str(root / "new"), checksum="0" * 64)
    assert "differs from " + "0" * 64 in str(refused.value)
    assert not (root / "new").exists()
    assert hidden(root) == []


def test_a_truncated_archive_is_refused(root: Path) -> None:
    data_id, _ = backed_up(root)
    path = root / "store" / data_id
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TerminalError, match="cannot be restored: the gzip stream ends early"):
        restore(root, data_id, str(root / "new"))
    assert not (root / "new").exists()
    assert hidden(root) == []


def test_a_missing_archive_is_a_terminal_error_naming_it(root: Path) -> None:
    (root / "store").mkdir()
    with pytest.raises(TerminalError) as refused:
        restore(root, "docs-20260301T123005Z-gone.tar.gz", str(root / "new"))
    assert str(refused.value) == (
        f"backup file docs-20260301T123005Z-gone.tar.gz not found in {root / 'store'}"
    )


@pytest.mark.parametrize(
    ("target", "phrase"),
    [
        ("{tmp}/outside/restored", "is outside the storage worker's allowed roots"),
        ("{root}/../outside/restored", "may not contain '..'"),
        ("relative/dir", "must be an absolute path"),
        ("{root}", "is an allowed root itself"),
        ("{root}/store", "holds the backup being restored"),
        ("{root}/escape/restored", "is outside the storage worker's allowed roots"),
    ],
)
def test_a_target_outside_the_roots_is_refused_before_anything_is_written(
    root: Path, target: str, phrase: str
) -> None:
    data_id, _ = backed_up(root)
    (root / "escape").symlink_to(root.parent / "outside")
    before = tree(root.parent)
    with pytest.raises(TerminalError) as refused:
        restore(root, data_id, target.format(tmp=root.parent, root=root))
    assert phrase in str(refused.value)
    assert tree(root.parent) == before


def test_a_target_holding_another_root_is_refused(root: Path) -> None:
    data_id, _ = backed_up(root)
    (root / "holder" / "inner").mkdir(parents=True)
    roots = AllowedRoots.from_paths([str(root), str(root / "holder" / "inner")])
    for target in (root / "holder", root / "holder" / "inner"):
        with pytest.raises(PathNotAllowed, match=r"(holds|is) an allowed root"):
            filesystem.restore_backup(
                config(root), FilesystemRestore(str(target), True), roots, data_id, None, budget()
            )
    assert list((root / "holder").iterdir()) == [root / "holder" / "inner"]


def hostile(root: Path, name: str, members: list[tuple[str, bytes, bytes, str]]) -> str:
    """Put a hand-made archive into the store: (name, type, data, linkname) per member."""
    (root / "store").mkdir(exist_ok=True)
    data_id = f"{name}-20260301T123005Z-evil.tar.gz"
    with tarfile.open(root / "store" / data_id, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member, kind, data, link in members:
            info = tarfile.TarInfo(member)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return data_id


FILE, DIR, SYM, HARD = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
EVIL = b"evil\n"


@pytest.mark.parametrize(
    ("members", "phrase"),
    [
        (
            [("ok.txt", FILE, b"ok", ""), ("../../outside/evil.txt", FILE, EVIL, "")],
            "member '../../outside/evil.txt' contains '..'",
        ),
        ([("ok.txt", FILE, b"ok", ""), ("{outside}/evil.txt", FILE, EVIL, "")], "absolute path"),
        (
            [("out", SYM, b"", "{outside}"), ("out/evil.txt", FILE, EVIL, "")],
            "symbolic link 'out' points to the absolute path",
        ),
        (
            [("out", SYM, b"", "../../outside"), ("out/evil.txt", FILE, EVIL, "")],
            "symbolic link 'out' -> '../../outside' leads outside the restored tree",
        ),
        (
            [("in", DIR, b"", ""), ("in/b", SYM, b"", ".."), ("a", SYM, b"", "in/b/..")],
            "symbolic link 'a' -> 'in/b/..' leads outside",
        ),
        (
            [("ok.txt", FILE, b"ok", ""), ("h", HARD, b"", "../../outside/keep.txt")],
            "hard link 'h' to '../../outside/keep.txt' contains '..'",
        ),
        ([("h", HARD, b"", "{outside}/keep.txt")], "is an absolute path"),
        ([("null", tarfile.CHRTYPE, b"", "")], "member 'null' is a device file"),
        ([("fifo", tarfile.FIFOTYPE, b"", "")], "member 'fifo' is a FIFO"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written_anywhere(
    root: Path, members: list[tuple[str, bytes, bytes, str]], phrase: str
) -> None:
    outside = str(root.parent / "outside")
    members = [(n.format(outside=outside), k, d, link.format(outside=outside)) for n, k, d, link
               in members]  # fmt: skip
    data_id = hostile(root, "evil", members)
    (root / "live").mkdir()
    (root / "live" / "precious.txt").write_text("mine\n")
    before = tree(root.parent)
    with pytest.raises(TerminalError) as refused:
        restore(root, data_id, str(root / "live"), overwrite=True)
    assert phrase in str(refused.value)
    assert "the target was left as it was" in str(refused.value)
    assert tree(root.parent) == before  # the target, the outside, everything as it was
    verified = filesystem.verify_backup(config(root), roots_of(root), data_id, None, budget())
    assert verified.verified is False and phrase in verified.details


def test_a_later_member_replaces_an_earlier_one_as_tar_does(root: Path) -> None:
    data_id = hostile(
        root,
        "dup",
        [("f", FILE, b"first", ""), ("l", SYM, b"", "f"), ("f", FILE, b"second", ""),
         ("l", FILE, b"not a link any more", "")],
    )  # fmt: skip
    restore(root, data_id, str(root / "new"))
    assert (root / "new" / "f").read_bytes() == b"second"
    assert not (root / "new" / "l").is_symlink()
    assert (root / "new" / "l").read_bytes() == b"not a link any more"


def test_setuid_bits_are_not_restored(root: Path) -> None:
    (root / "store").mkdir()
    data_id = "s-20260301T123005Z-suid.tar.gz"
    with tarfile.open(root / "store" / data_id, "w:gz") as tar:
        info = tarfile.TarInfo("tool")
        info.mode, info.size = 0o4755, 2
        tar.addfile(info, io.BytesIO(b"hi"))
    restore(root, data_id, str(root / "new"))
    assert stat.S_IMODE((root / "new" / "tool").stat().st_mode) == 0o755


# -- the task ---------------------------------------------------------------------------------


def task(root: Path, **more: Any) -> TaskRun:
    data = {
        "backupName": "docs",
        "workerConfig": json.dumps(
            {"kind": "filesystem", "source": str(root / "source"), "target": str(root / "store")}
        ),
        **more,
    }
    return TaskRun(
        task_id="task-1",
        task_type="restore",
        reference_name="restore",
        status=TaskStatus.IN_PROGRESS,
        workflow_id="wf-1",
        input=data,
        scheduled_time=from_epoch_ms(1),
    )


def served(root: Path) -> StorageWorkerSettings:
    return StorageWorkerSettings(("filesystem",), roots_of(root))


def test_the_restore_task_outputs_its_contract(root: Path) -> None:
    taken = backup_task(served(root), task(root))
    assert taken.status == "COMPLETED", taken.reason
    data_id, checksum = taken.output["dataId"], taken.output["checksum"]
    assert checksum == hashlib.sha256((root / "store" / data_id).read_bytes()).hexdigest()
    restore_config = json.dumps({"target": str(root / "restored")})
    done = restore_task(
        served(root), task(root, dataId=data_id, restoreConfig=restore_config, checksum=checksum)
    )
    assert done.status == "COMPLETED", done.reason
    assert done.output == {
        "dataId": data_id,
        "restoredTo": str(root / "restored"),
        "replaced": False,
        "checksum": checksum,
        "entries": len(tree(root / "source")),
    }
    assert tree(root / "restored") == tree(root / "source")


@pytest.mark.parametrize(
    ("restore_config", "phrase"),
    [
        (None, 'restoreConfig is missing: give one like {"target": "/abs/dir"}'),
        ("not json", "restoreConfig is not valid JSON"),
        ('{"target": "/x", "overwrite": "yes"}', '"overwrite" must be true or false'),
        ('{"target": "/x", "dsn": "y"}', 'unknown field(s) "dsn" for kind filesystem'),
        ('{"overwrite": true}', 'needs "target"'),
        ('{"target": "/etc/restored"}', "is outside the storage worker's allowed roots"),
    ],
)
def test_bad_restore_input_fails_terminally_naming_the_cause(
    root: Path, restore_config: str | None, phrase: str
) -> None:
    taken = backup_task(served(root), task(root))
    data_id = taken.output["dataId"]
    answer = restore_task(served(root), task(root, dataId=data_id, restoreConfig=restore_config))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason is not None and phrase in answer.reason


def test_the_restore_task_refuses_a_non_empty_target_and_a_missing_backup(root: Path) -> None:
    taken = backup_task(served(root), task(root))
    (root / "live").mkdir()
    (root / "live" / "x").write_text("x")
    restore_config = {"target": str(root / "live")}
    answer = restore_task(
        served(root), task(root, dataId=taken.output["dataId"], restoreConfig=restore_config)
    )
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason and "is not empty" in answer.reason
    gone = restore_task(
        served(root), task(root, dataId="docs-1-x.tar.gz", restoreConfig=restore_config)
    )
    assert gone.status == "FAILED_WITH_TERMINAL_ERROR"
    assert gone.reason == f"backup file docs-1-x.tar.gz not found in {root / 'store'}"
    bad_sum = restore_task(
        served(root),
        task(root, dataId=taken.output["dataId"], restoreConfig=restore_config, checksum="abc"),
    )
    assert bad_sum.reason == 'checksum "abc" is not a SHA-256 digest (64 hex digits)'


def test_a_stopping_worker_hands_the_restore_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "stopping", lambda: True)
    answer = restore_task(
        served(root), task(root, dataId="x.tar.gz", restoreConfig={"target": str(root / "t")})
    )
    assert answer.status == "IN_PROGRESS" and answer.callback_after_seconds == 0
    assert not (root / "t").exists()

"""The `verify` task on filesystem backups, the checksum `backup` now outputs, and the parsing
of the inputs `verify` and `restore` add (checksum, rowCounts, verifyConfig, restoreConfig).

No Conductor and no PostgreSQL: a TaskRun goes in, a TaskOutcome comes out.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backtor.conductor import sdk
from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.runtime.settings import Settings
from backtor.storage import postgres, worker
from backtor.storage.errors import TerminalError
from backtor.storage.paths import AllowedRoots
from backtor.storage.postgres import compare_row_counts
from backtor.storage.task_input import (
    FilesystemRestore,
    PostgresRestore,
    VerifyConfig,
    parse_checksum,
    parse_restore_config,
    parse_row_counts,
    parse_verify_config,
)
from backtor.storage.worker import StorageWorkerSettings, backup_task, verify_task
from backtor.workers import runner

PASSWORD = "pa55-w0rd-Secret"
DSN = f"postgresql://alice:{PASSWORD}@db:5432/orders"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "source" / "sub").mkdir(parents=True)
    (tmp_path / "source" / "a.txt").write_text("alpha\n")
    (tmp_path / "source" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    return tmp_path


def served(root: Path, *kinds: str) -> StorageWorkerSettings:
    return StorageWorkerSettings(kinds or ("filesystem",), AllowedRoots.from_paths([str(root)]))


def filesystem(root: Path) -> dict[str, str]:
    return {"kind": "filesystem", "source": str(root / "source"), "target": str(root / "store")}


def task(config: dict[str, str], **more: Any) -> TaskRun:
    return TaskRun(
        task_id="task-1",
        task_type="verify",
        reference_name="verify",
        status=TaskStatus.IN_PROGRESS,
        workflow_id="wf-1",
        input={"backupName": "docs", "workerConfig": json.dumps(config), **more},
        scheduled_time=from_epoch_ms(1),
    )


def backed_up(root: Path) -> dict[str, Any]:
    taken = backup_task(served(root), task(filesystem(root)))
    assert taken.status == "COMPLETED", taken.reason
    return dict(taken.output)


def test_backup_outputs_the_checksum_of_its_file_beside_the_old_fields(root: Path) -> None:
    output = backed_up(root)
    assert set(output) == {"dataId", "dataSizeMB", "checksum"}
    data = (root / "store" / output["dataId"]).read_bytes()
    assert output["checksum"] == hashlib.sha256(data).hexdigest()
    assert output["dataSizeMB"] == round(len(data) / 1_000_000, 6)


def test_an_intact_backup_verifies(root: Path) -> None:
    output = backed_up(root)
    before = datetime.now(UTC).replace(microsecond=0)
    answer = verify_task(
        served(root),
        task(filesystem(root), dataId=output["dataId"], checksum=output["checksum"]),
    )
    assert answer.status == "COMPLETED", answer.reason
    assert set(answer.output) == {"dataId", "verified", "details", "checkedAt", "checksum"}
    assert answer.output["verified"] is True
    assert answer.output["checksum"] == output["checksum"]
    details = answer.output["details"]
    assert "gzip and tar intact, 3 members, all restorable" in details
    assert "SHA-256 matches the checksum recorded at backup time" in details
    checked_at = answer.output["checkedAt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", checked_at)
    when = datetime.fromisoformat(checked_at.replace("Z", "+00:00"))
    assert before <= when <= datetime.now(UTC) + timedelta(seconds=1)


def test_without_a_recorded_checksum_the_structure_is_still_checked(root: Path) -> None:
    output = backed_up(root)
    answer = verify_task(served(root), task(filesystem(root), dataId=output["dataId"]))
    assert answer.output["verified"] is True
    assert "no checksum recorded at backup time to compare" in answer.output["details"]
    path = root / "store" / output["dataId"]
    path.write_bytes(path.read_bytes()[:-50])
    broken = verify_task(served(root), task(filesystem(root), dataId=output["dataId"]))
    assert broken.status == "COMPLETED"
    assert broken.output["verified"] is False
    assert broken.output["details"] == "the gzip stream ends early: the file is truncated"


def test_a_flipped_byte_fails_verification_with_its_cause(root: Path) -> None:
    output = backed_up(root)
    path = root / "store" / output["dataId"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    answer = verify_task(
        served(root),
        task(filesystem(root), dataId=output["dataId"], checksum=output["checksum"]),
    )
    assert answer.status == "COMPLETED"
    assert answer.output["verified"] is False
    details = answer.output["details"]
    # Where a flipped bit lands in the deflate stream (the gzip header carries the time)
    # decides which of the two the decoder meets first.
    assert "damaged" in details or "truncated" in details
    assert f"differs from {output['checksum']}, recorded at backup time" in details
    assert answer.output["checksum"] == hashlib.sha256(data).hexdigest()


def test_a_checksum_mismatch_alone_fails_verification(root: Path) -> None:
    """An archive replaced by another intact one: the structure passes, the checksum not."""
    output = backed_up(root)
    other = hashlib.sha256(b"another archive").hexdigest()
    answer = verify_task(
        served(root), task(filesystem(root), dataId=output["dataId"], checksum=f"sha256:{other}")
    )
    assert answer.output["verified"] is False
    assert answer.output["details"] == (
        f"SHA-256 {output['checksum']} differs from {other}, recorded at backup time: "
        "the file changed since"
    )


def test_a_missing_backup_is_a_terminal_error_naming_it(root: Path) -> None:
    (root / "store").mkdir()
    answer = verify_task(served(root), task(filesystem(root), dataId="docs-1-gone.tar.gz"))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason == f"backup file docs-1-gone.tar.gz not found in {root / 'store'}"


@pytest.mark.parametrize(
    ("more", "phrase"),
    [
        ({"dataId": "../etc/passwd"}, "must be a plain file name"),
        ({"dataId": "x.tar.gz", "checksum": "12ab"}, "is not a SHA-256 digest"),
        ({"dataId": "x.tar.gz", "verifyConfig": '{"deep": 1}'}, '"deep" must be true or false'),
        ({"dataId": "x.tar.gz", "verifyConfig": '{"dsn": "x"}'}, 'unknown field(s) "dsn"'),
    ],
)
def test_bad_verify_input_fails_terminally(root: Path, more: dict[str, str], phrase: str) -> None:
    answer = verify_task(served(root), task(filesystem(root), **more))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason is not None and phrase in answer.reason


def test_verify_of_an_unserved_kind_is_refused_and_masked(root: Path) -> None:
    config = {"kind": "postgres", "dsn": DSN, "target": str(root / "store")}
    answer = verify_task(served(root), task(config, dataId="x.dump"))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason and "is not served by this storage worker" in answer.reason
    assert PASSWORD not in answer.reason


def test_a_stopping_worker_hands_the_verify_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "stopping", lambda: True)
    answer = verify_task(served(root), task(filesystem(root), dataId="x.tar.gz"))
    assert answer.status == "IN_PROGRESS" and answer.callback_after_seconds == 0


# -- the inputs, parsed -----------------------------------------------------------------------


def test_checksums_are_sha256_hex() -> None:
    digest = "AB" * 32
    assert parse_checksum(digest) == "ab" * 32
    assert parse_checksum(f"sha256:{digest}") == "ab" * 32
    assert parse_checksum(None) is None and parse_checksum("  ") is None
    for bad in ("ab" * 31, "md5:" + "ab" * 32, 42, "zz" * 32):
        with pytest.raises(TerminalError, match="is not a SHA-256 digest"):
            parse_checksum(bad)


def test_row_counts_are_a_json_object_of_counts() -> None:
    assert parse_row_counts({"public.a": 3}) == {"public.a": 3}
    assert parse_row_counts('{"public.a": 0, "\\"S\\".\\"T\\"": 7}') == {
        "public.a": 0,
        '"S"."T"': 7,
    }
    assert parse_row_counts(None) is None and parse_row_counts("") is None
    for bad, phrase in [
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
        ({"t": -1}, "not a count of rows"),
        ({"t": True}, "not a count of rows"),
        ({"t": "3"}, "not a count of rows"),
    ]:
        with pytest.raises(TerminalError, match=re.escape(phrase)):
            parse_row_counts(bad)


def test_verify_config_defaults_and_fields() -> None:
    assert parse_verify_config(None, "postgres") == VerifyConfig()
    assert parse_verify_config("", "filesystem") == VerifyConfig()
    assert parse_verify_config({"deep": True}, "filesystem") == VerifyConfig(deep=True)
    config = parse_verify_config(json.dumps({"deep": True, "dsn": DSN}), "postgres")
    assert config.deep is True and config.dsn == DSN
    assert PASSWORD not in repr(config)
    assert config.secrets() == (DSN, PASSWORD)
    with pytest.raises(TerminalError, match="verifyConfig dsn has a port that is not a number"):
        parse_verify_config({"dsn": "postgresql://a:b@h:port/x"}, "postgres")


def test_restore_config_per_kind() -> None:
    assert parse_restore_config('{"target": "/r"}', "filesystem") == FilesystemRestore("/r")
    assert parse_restore_config(
        {"target": "/r", "overwrite": True}, "filesystem"
    ) == FilesystemRestore("/r", overwrite=True)
    config = parse_restore_config(
        json.dumps({"dsn": DSN, "overwrite": True, "keepOwners": True}), "postgres"
    )
    assert config == PostgresRestore(DSN, overwrite=True, keep_owners=True)
    assert PASSWORD not in repr(config)
    assert config.secrets() == (DSN, PASSWORD)
    for raw, kind, phrase in [
        (None, "postgres", 'restoreConfig is missing: give one like {"dsn"'),
        ("[]", "filesystem", "restoreConfig must be a JSON object, got an array"),
        ('{"target": "/r"}', "postgres", 'unknown field(s) "target" for kind postgres'),
        ('{"dsn": ""}', "postgres", 'needs "dsn" (a non-empty string)'),
        ('{"dsn": "nonsense=1"}', "postgres", "restoreConfig dsn is not a valid"),
        ('{"target": "/r", "keepOwners": true}', "filesystem", 'unknown field(s) "keepOwners"'),
    ]:
        with pytest.raises(TerminalError) as refused:
            parse_restore_config(raw, kind)
        assert phrase in str(refused.value)
        assert PASSWORD not in str(refused.value)


def test_row_count_comparison_names_the_differences() -> None:
    same = compare_row_counts({"public.a": 1, "public.b": 0}, {"public.a": 1, "public.b": 0})
    assert same == (True, "deep: restored into a throwaway database, the row counts of all 2 "
                    "tables match")  # fmt: skip
    assert compare_row_counts(None, {"public.a": 1})[0] is True
    ok, details = compare_row_counts(
        {"public.a": 1, "public.gone": 4}, {"public.a": 2, "public.new": 0}
    )
    assert ok is False
    assert details == (
        "deep: row counts differ: public.a: 1 rows at backup time, 2 restored; public.gone "
        "missing after restore (4 rows at backup time); public.new restored (0 rows) but not "
        "recorded at backup time"
    )
    many = {f"t{i}": i for i in range(9)}
    _, cut = compare_row_counts(many, {})
    assert cut.endswith("; 4 more")


# -- the worker -------------------------------------------------------------------------------


def test_the_worker_polls_verify_and_restore_beside_backup_and_remove(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled: list[str] = []

    class Handler:
        def start_processes(self) -> None:
            pass

        def stop_processes(self) -> None:
            pass

    def task_handler(url: str, workers: list[Any], **kwargs: Any) -> Handler:
        polled.extend(w.task_definition_name for w in workers)
        return Handler()

    stopped = threading.Event()
    stopped.set()
    monkeypatch.setattr(sdk, "task_handler", task_handler)
    monkeypatch.setattr(runner, "stop_on_signals", lambda: stopped)
    monkeypatch.setattr(worker, "configure_logging", lambda *args: None)
    assert worker.run_storage_worker(served(root), Settings.from_env(), 1) == 0
    assert polled == ["backup", "remove", "verify", "restore"]


def test_kind_postgres_needs_pg_restore_too(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setattr(postgres, "pg_dump_available", lambda: True)
    monkeypatch.setattr(postgres, "pg_restore_available", lambda: False)
    with pytest.raises(ValueError, match="kind postgres needs pg_restore on PATH"):
        worker.storage_settings(["postgres"], [str(root)])

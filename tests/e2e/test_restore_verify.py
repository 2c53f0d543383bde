"""Restore and verify end to end: the real Conductor, PostgreSQL, `backtor api`, `backtor
worker` (whose scheduler pass follows the runs) and `backtor storage-worker filesystem`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.e2e import test_storage_workers
from tests.e2e.test_storage_workers import (
    Storage,
    checksums,
    contents,
    finished,
    make_source,
    plain_dsn,
    seed,
)
from tests.support import processes
from tests.support.conductor import hand_back, hold_task, stop_open_runs, workflow, workflows
from tests.support.scheduler import SchedulerWatch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

# The storage worker stack of test_storage_workers (API, backtor worker, storage workers).
storage = test_storage_workers.storage


def post(sw: Storage, name: str, backup_id: int, action: str, body: Any) -> requests.Response:
    return requests.post(
        f"{sw.api}/backup/{name}/materialized/{backup_id}/{action}", json=body, timeout=30
    )


def shown(sw: Storage, name: str, backup_id: int) -> dict[str, Any]:
    [row] = [b for b in sw.backups(name) if b["id"] == backup_id]
    return row


def passes_after_now(sw: Storage, count: int) -> None:
    """Wait until the scheduler has begun `count` passes after now (scheduler_state)."""
    with SchedulerWatch(sw.env["DATABASE_URL"], sw.conductor) as watch:
        for _ in range(count):
            before = watch.state().last_tick_at
            wait_until(
                lambda: watch.state().last_tick_at != before,  # noqa: B023 (awaited here)
                timeout=60,
                what="a scheduler pass",
            )


def run_ended(sw: Storage, name: str, backup_id: int, key: str) -> dict[str, Any]:
    """Wait until Backtor has recorded the end of the backup's last `key` run."""

    def ended() -> dict[str, Any]:
        row = shown(sw, name, backup_id)
        run = row[key]
        return row if run is not None and run["status"] not in ("STARTING", "RUNNING") else {}

    return wait_until(ended, timeout=90, what=f"{key} of backup {backup_id} to be recorded")


def test_restore_and_verify_a_filesystem_backup_through_the_api(
    storage: Storage,
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    make_source(source)
    before = checksums(source)
    storage.start_worker("filesystem", "--allow-root", str(root))
    name = storage.create(
        "restore",
        {"kind": "filesystem", "source": str(source), "target": str(store)},
        backupCronString="0 0 0 1 1 *",
    )
    try:
        _exercise(storage, name, root, source, store, before)
    finally:
        for kind in ("restore_backup", "verify_backup"):
            stop_open_runs(storage.conductor, kind, name)


def _exercise(
    sw: Storage,
    name: str,
    root: Path,
    source: Path,
    store: Path,
    before: dict[str, str],
) -> None:
    run = finished(sw.conductor, sw.trigger(name), timeout=90)
    assert run["status"] == "COMPLETED", run.get("reasonForIncompletion")
    [backup] = wait_until(
        lambda: [b for b in sw.backups(name) if b["status"] == "COMPLETED"],
        timeout=30,
        what="the backup to be recorded",
    )
    archive = store / backup["dataId"]
    # The checksum the backup task output is recorded: the archive's SHA-256.
    assert backup["checksum"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert backup["verifyStatus"] == "NEVER" and backup["lastRestore"] is None

    # The source changes after the backup; the restore gives back the backup's state.
    (source / "README.txt").write_text("changed since\n")
    (source / "new.txt").write_text("not in the backup\n")
    target = root / "restored" / "www"
    answer = post(
        sw,
        name,
        backup["id"],
        "restore",
        {"restoreConfig": json.dumps({"target": str(target)})},
    )
    assert answer.status_code == 202, answer.text
    workflow_id = answer.json()["workflowId"]
    row = run_ended(sw, name, backup["id"], "lastRestore")
    assert row["lastRestore"]["workflowId"] == workflow_id
    assert row["lastRestore"]["status"] == "COMPLETED", row["lastRestore"]
    assert str(target) in row["lastRestore"]["details"]
    assert checksums(target) == before  # byte for byte, links and directories too
    assert checksums(source) != before

    # A non-empty target without overwrite, and one outside the roots: refused, the cause
    # recorded on the backup, nothing written.
    for config, cause in (
        ({"target": str(target)}, "not empty"),
        ({"target": str(root.parent / "elsewhere")}, "allowed roots"),
    ):
        answer = post(sw, name, backup["id"], "restore", {"restoreConfig": json.dumps(config)})
        assert answer.status_code == 202, answer.text
        row = run_ended(sw, name, backup["id"], "lastRestore")
        assert row["lastRestore"]["status"] == "FAILED", row["lastRestore"]
        assert cause in row["lastRestore"]["details"], row["lastRestore"]
    assert checksums(target) == before
    assert not (root.parent / "elsewhere").exists()

    # Verify: the archive is intact.
    answer = post(sw, name, backup["id"], "verify", None)
    assert answer.status_code == 202, answer.text
    row = run_ended(sw, name, backup["id"], "lastVerify")
    assert row["verifyStatus"] == "VERIFIED", row
    assert row["lastVerifiedAt"] is not None
    assert "matches the checksum recorded at backup time" in row["verifyDetails"]
    verified_at = row["lastVerifiedAt"]

    # One byte flipped on disk: the verification fails and says why.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    answer = post(sw, name, backup["id"], "verify", {"verifyConfig": '{"deep": true}'})
    assert answer.status_code == 202, answer.text
    row = run_ended(sw, name, backup["id"], "lastVerify")
    assert row["verifyStatus"] == "FAILED", row
    assert row["lastVerifiedAt"] >= verified_at
    assert "recorded at backup time" in row["verifyDetails"], row["verifyDetails"]
    assert "differs" in row["verifyDetails"], row["verifyDetails"]
    # A damaged backup is never restored either: the checksum refuses it.
    elsewhere = root / "restored" / "again"
    answer = post(
        sw,
        name,
        backup["id"],
        "restore",
        {"restoreConfig": json.dumps({"target": str(elsewhere)})},
    )
    assert answer.status_code == 202, answer.text
    row = run_ended(sw, name, backup["id"], "lastRestore")
    assert row["lastRestore"]["status"] == "FAILED", row["lastRestore"]
    assert not elsewhere.exists()


def test_a_verification_holds_off_the_removal_of_its_backup(
    storage: Storage, tmp_path: Path
) -> None:
    """A backup under verification is purged: its removal starts only once the
    verification ended, which found the archive intact; then the purge ends cleanly."""
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    make_source(source)
    worker = storage.start_worker("filesystem", "--allow-root", str(root))
    name = storage.create(
        "race",
        {"kind": "filesystem", "source": str(source), "target": str(store)},
        backupCronString="0 0 0 1 1 *",
    )
    try:
        run = finished(storage.conductor, storage.trigger(name), timeout=90)
        assert run["status"] == "COMPLETED", run.get("reasonForIncompletion")
        [backup] = wait_until(
            lambda: [b for b in storage.backups(name) if b["status"] == "COMPLETED"],
            timeout=30,
            what="the backup to be recorded",
        )
        processes.stop(worker)  # the verification waits in Conductor's queue
        answer = post(storage, name, backup["id"], "verify", None)
        assert answer.status_code == 202, answer.text
        verify_id = answer.json()["workflowId"]
        purge = requests.delete(
            f"{storage.api}/backup/{name}", params={"purge": "true"}, timeout=10
        )
        assert purge.status_code == 202, purge.text
        assert shown(storage, name, backup["id"])["status"] == "REMOVING"
        # Retried restores and verifications of a backup being removed are refused.
        again = post(storage, name, backup["id"], "restore", {"restoreConfig": '{"target": "/x"}'})
        assert again.status_code == 409, again.text
        passes_after_now(storage, 3)  # three scheduler passes: none starts the removal
        assert workflows(storage.conductor, "remove_backup", name) == []
        assert shown(storage, name, backup["id"])["removeWorkflowId"] is None

        storage.start_worker("filesystem", "--allow-root", str(root), log="storage-2.log")
        verified = finished(storage.conductor, verify_id, timeout=90)
        assert verified["status"] == "COMPLETED", verified.get("reasonForIncompletion")
        assert verified["output"]["verified"] is True, verified["output"]
        [removal] = wait_until(
            lambda: [
                w
                for w in workflows(storage.conductor, "remove_backup", name)
                if w["status"] == "COMPLETED"
            ],
            timeout=90,
            what="the removal to complete",
        )
        assert removal["startTime"] >= verified["endTime"]
        wait_until(
            lambda: requests.get(f"{storage.api}/backup/{name}", timeout=10).status_code == 404,
            timeout=60,
            what="the purge to delete the spec",
        )
        assert list(store.iterdir()) == []  # nothing orphaned
    finally:
        stop_open_runs(storage.conductor, "verify_backup", name)


def test_a_verification_racing_a_retention_removal_ends_cleanly_and_orphans_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    """Retention marks a backup for removal while its verification runs: the removal starts
    only once the verification ended (VERIFIED), then removes the backup; both end cleanly,
    and the store holds exactly the kept backups.

    The verification runs while backup B is taken, so it must outlast it: the test plays
    a slow verifying worker (it polls the verify task and holds it) while the storage worker
    takes B, then hands the task back, and the storage worker verifies for real.
    """
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    make_source(source)
    worker = storage.start_worker("filesystem", "--allow-root", str(root))
    name = storage.create(
        "retention-race",
        {"kind": "filesystem", "source": str(source), "target": str(store)},
        backupCronString="0 0 0 1 1 *",  # no fire during the test: manual triggers only
        # Keep one backup: each new one removes the one before.
        retentionMinutely="1",
        retentionHourly="0",
        retentionDaily="0",
        retentionWeekly="0",
        retentionMonthly="0",
        retentionYearly="0",
    )
    try:
        run = finished(storage.conductor, storage.trigger(name), timeout=90)
        assert run["status"] == "COMPLETED", run.get("reasonForIncompletion")
        [a] = wait_until(
            lambda: storage.backups(name, status="COMPLETED"),
            timeout=30,
            what="backup A to be recorded",
        )
        processes.stop(worker)  # nobody polls the verify task but the test
        answer = post(storage, name, a["id"], "verify", None)
        assert answer.status_code == 202, answer.text
        verify_id = answer.json()["workflowId"]
        held = hold_task(storage.conductor, "verify", verify_id)

        # Backup B, taken by a new storage worker while A's verification is held.
        storage.start_worker("filesystem", "--allow-root", str(root), log="storage-2.log")
        run = finished(storage.conductor, storage.trigger(name), timeout=90)
        assert run["status"] == "COMPLETED", run.get("reasonForIncompletion")
        # Its apply_retention ran inside its create_backup: A is marked, its run still open.
        b = next(x for x in storage.backups(name) if x["id"] != a["id"])
        assert b["status"] == "COMPLETED", b
        row = shown(storage, name, a["id"])
        assert row["status"] == "REMOVING", row
        assert row["lastVerify"]["workflowId"] == verify_id
        assert row["lastVerify"]["status"] == "RUNNING", row["lastVerify"]
        # A backup being removed is neither verified nor restored again.
        again = post(storage, name, a["id"], "verify", None)
        assert again.status_code == 409, again.text
        assert "REMOVING" in again.json()["message"], again.text
        elsewhere = root / "restored"
        again = post(
            storage,
            name,
            a["id"],
            "restore",
            {"restoreConfig": json.dumps({"target": str(elsewhere)})},
        )
        assert again.status_code == 409, again.text
        assert "REMOVING" in again.json()["message"], again.text

        passes_after_now(storage, 3)  # three scheduler passes: none starts the removal
        assert workflows(storage.conductor, "remove_backup", name) == []
        row = shown(storage, name, a["id"])
        assert row["status"] == "REMOVING" and row["removeWorkflowId"] is None, row
        assert (store / a["dataId"]).is_file()
        assert workflow(storage.conductor, verify_id)["status"] == "RUNNING"

        # The verification goes on: the storage worker takes the task and verifies A.
        hand_back(storage.conductor, held)
        verified = finished(storage.conductor, verify_id, timeout=90)
        assert verified["status"] == "COMPLETED", verified.get("reasonForIncompletion")
        assert verified["output"]["verified"] is True, verified["output"]
        again = post(storage, name, a["id"], "verify", None)
        assert again.status_code == 409, again.text  # no new run holds the removal off
        [removal] = wait_until(
            lambda: [
                w
                for w in workflows(storage.conductor, "remove_backup", name)
                if w["status"] == "COMPLETED"
            ],
            timeout=90,
            what="the removal of A to complete",
        )
        assert removal["startTime"] >= verified["endTime"]
        row = wait_until(
            lambda: (r := shown(storage, name, a["id"]))["status"] == "REMOVED" and r,
            timeout=60,
            what="A to be recorded REMOVED",
        )
        assert row["removeWorkflowId"] == removal["workflowId"], row
        # The verdict was recorded before the removal, on the run that held it off.
        assert row["verifyStatus"] == "VERIFIED", row
        assert row["lastVerify"]["workflowId"] == verify_id
        assert row["lastVerify"]["status"] == "COMPLETED", row["lastVerify"]

        # Both ended cleanly: no run left open, B kept; the store holds exactly the files
        # of the COMPLETED records, nothing orphaned.
        for kind in ("verify_backup", "restore_backup", "remove_backup", "create_backup"):
            assert workflows(storage.conductor, kind, name, include_closed=False) == [], kind
        backups = storage.backups(name)
        assert {x["id"]: x["status"] for x in backups} == {a["id"]: "REMOVED", b["id"]: "COMPLETED"}
        kept = {x["dataId"] for x in backups if x["status"] == "COMPLETED"}
        assert {p.name for p in store.iterdir()} == kept == {b["dataId"]}
        assert not elsewhere.exists()
    finally:
        for kind in ("verify_backup", "restore_backup"):
            stop_open_runs(storage.conductor, kind, name)


def test_a_postgres_dump_is_verified_deeply_and_restored_through_the_api(
    storage: Storage, make_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    source_dsn = plain_dsn(make_postgres_database())
    restored_dsn = plain_dsn(make_postgres_database())
    seed(source_dsn)
    original = contents(source_dsn)
    root = tmp_path / "root"
    root.mkdir()
    storage.start_worker("--kind", "postgres", "--allow-root", str(root))
    name = storage.create(
        "pg", {"kind": "postgres", "dsn": source_dsn, "target": f"{root}/dumps"}, enabled=0
    )
    try:
        run = finished(storage.conductor, storage.trigger(name), timeout=90)
        assert run["status"] == "COMPLETED", storage.log_text()[-5000:]
        (backup,) = wait_until(
            lambda: storage.backups(name, status="COMPLETED"), timeout=30, what="the dump"
        )
        dump = root / "dumps" / backup["dataId"]
        assert backup["checksum"] == hashlib.sha256(dump.read_bytes()).hexdigest()

        # A deep verification restores into a throwaway database and compares the row
        # counts recorded at backup time.
        answer = post(storage, name, backup["id"], "verify", {"verifyConfig": '{"deep": true}'})
        assert answer.status_code == 202, answer.text
        row = run_ended(storage, name, backup["id"], "lastVerify")
        assert row["verifyStatus"] == "VERIFIED", row
        assert "row" in row["verifyDetails"], row["verifyDetails"]

        # The data is lost; the restore through the API brings it back, row for row.
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute("DROP VIEW cheap; DROP TABLE items")
        config = json.dumps({"dsn": restored_dsn})
        answer = post(storage, name, backup["id"], "restore", {"restoreConfig": config})
        assert answer.status_code == 202, answer.text
        row = run_ended(storage, name, backup["id"], "lastRestore")
        assert row["lastRestore"]["status"] == "COMPLETED", row["lastRestore"]
        assert contents(restored_dsn) == original
        # Again into the same database, now not empty: refused, and the data is untouched.
        answer = post(storage, name, backup["id"], "restore", {"restoreConfig": config})
        assert answer.status_code == 202, answer.text
        row = run_ended(storage, name, backup["id"], "lastRestore")
        assert row["lastRestore"]["status"] == "FAILED", row["lastRestore"]
        assert "not empty" in row["lastRestore"]["details"], row["lastRestore"]
        assert contents(restored_dsn) == original
        # No password reached a log or an answer of Backtor's.
        password = make_url(restored_dsn).password
        assert f":{password}@" not in storage.log_text()
        assert f":{password}@" not in json.dumps(storage.backups(name))
    finally:
        for kind in ("restore_backup", "verify_backup"):
            stop_open_runs(storage.conductor, kind, name)


def verify_count(sw: Storage, name: str, result: str) -> float:
    """backtor_verify_total{backup=name, result=result} as /metrics shows it now."""
    text = requests.get(f"{sw.api}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "backtor_verify_total"
                and sample.labels.get("backup") == name
                and sample.labels.get("result") == result
            ):
                return float(sample.value)
    return 0.0


def test_a_scheduled_verification_finds_a_flipped_byte_and_the_metric_moves(
    storage: Storage,
    tmp_path: Path,
) -> None:
    """verifyCronString verifies the newest backup on its own schedule: VERIFIED while the
    archive is intact, FAILED (with the cause) once one byte of it is flipped on disk, and
    backtor_verify_total{result="FAILED"} counts it. The alert on it is promtool-tested
    (tests/integration/test_metrics_deploy.py)."""
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    make_source(source)
    storage.start_worker("filesystem", "--allow-root", str(root))
    name = storage.create(
        "scheduled",
        {"kind": "filesystem", "source": str(source), "target": str(store)},
        backupCronString="0 0 0 1 1 *",
        verifyCronString="*/2 * * * * *",
    )
    try:
        run = finished(storage.conductor, storage.trigger(name), timeout=90)
        assert run["status"] == "COMPLETED", run.get("reasonForIncompletion")
        [backup] = wait_until(
            lambda: [b for b in storage.backups(name) if b["verifyStatus"] == "VERIFIED"],
            timeout=90,
            what="the scheduled verification of the new backup",
        )
        # Nobody asked through the API: the runs came from the schedule (the next one may
        # already be starting, so the row's lastVerify can be a newer run than the verdict's).
        runs = workflows(storage.conductor, "verify_backup", name, include_closed=True)
        assert runs and all(r["input"]["backupId"] == backup["id"] for r in runs), runs
        assert verify_count(storage, name, "VERIFIED") >= 1
        failed_before = verify_count(storage, name, "FAILED")

        archive = store / backup["dataId"]
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        row = wait_until(
            lambda: next((b for b in storage.backups(name) if b["verifyStatus"] == "FAILED"), None),
            timeout=90,
            what="a scheduled verification to find the flipped byte",
        )
        assert row is not None and row["id"] == backup["id"]
        assert "differs" in row["verifyDetails"], row["verifyDetails"]
        wait_until(
            lambda: verify_count(storage, name, "FAILED") > failed_before,
            timeout=30,
            what="backtor_verify_total{result=FAILED} to move",
        )
    finally:
        storage.disable(name)
        stop_open_runs(storage.conductor, "verify_backup", name)

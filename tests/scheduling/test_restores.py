"""Restores and verifications on the scheduling core (SQLite, the twin, simulated time):
the checksum a backup records, the runs followed to their end, and removal held off while
one runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from backtor.conductor.names import (
    APPLY_RETENTION,
    BACKUP,
    RESTORE,
    RESTORE_BACKUP,
    VERIFY,
    VERIFY_BACKUP,
)
from backtor.conductor.payloads import WorkflowStatus
from backtor.conductor.registration import register_definitions
from backtor.core.errors import ConductorUnavailable
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling import restores
from backtor.scheduling.handlers import record_backup
from backtor.scheduling.removals import start_pending_removals
from backtor.scheduling.tick import run_tick
from tests.scheduling.conftest import Core

SUM = "ab" * 32
COUNTS = {"public.orders": 12, "public.items": 3}


def take(core: Core, name: str = "db") -> int:
    """One scheduled backup through create_backup: the storage worker outputs a checksum
    and row counts; apply_retention records them. Returns the backup's id."""
    core.advance_to(core.due(name), plus=0.2)
    run_tick(core.services)
    task = core.twin.poll_task(BACKUP, "storage-1")
    assert task is not None
    core.twin.update_task(
        task,
        "COMPLETED",
        {"dataId": f"{name}-{task.task_id}.dump", "dataSizeMB": 1.0, "checksum": SUM}
        | {"rowCounts": COUNTS},
    )
    recording = core.twin.poll_task(APPLY_RETENTION, "backtor-1")
    assert recording is not None
    outcome = record_backup(core.services, recording.input, recording.workflow_id)
    core.twin.update_task(recording, outcome.status, outcome.output)
    return int(outcome.output["backupId"])


def backup(core: Core, backup_id: int) -> Backup:
    with core.services.db() as session:
        row = session.get(Backup, backup_id)
        assert row is not None
        session.expunge(row)
        return row


def request(core: Core, backup_id: int, kind: restores.Kind, config: str | None) -> str:
    with core.services.db.begin() as session:
        spec = session.scalar(
            select(BackupSpec)
            .join(Backup, Backup.spec_id == BackupSpec.id)
            .where(Backup.id == backup_id)
        )
        assert spec is not None
        job = restores.claim(session, spec, backup_id, kind, core.now())
    started = restores.start(core.services, job, config)
    assert started.workflow_id is not None
    return started.workflow_id


def test_a_backup_records_the_checksum_and_row_counts_of_its_backup_task(core: Core) -> None:
    core.add_spec("db")
    row = backup(core, take(core))
    assert row.checksum == SUM
    assert row.row_counts is not None and json.loads(row.row_counts) == COUNTS
    assert row.verify_status == "NEVER" and row.last_verified_at is None


def test_a_verification_is_started_with_the_recorded_checksum_and_its_verdict_recorded(
    core: Core,
) -> None:
    core.add_spec("db", worker_config='{"kind": "postgres"}')
    backup_id = take(core)
    workflow_id = request(core, backup_id, restores.VERIFY, '{"deep": true}')
    run = core.twin.get_workflow(workflow_id)
    assert run.name == VERIFY_BACKUP and run.correlation_id == "db"
    task = core.twin.poll_task(VERIFY, "storage-1")
    assert task is not None and task.workflow_id == workflow_id
    assert task.input["checksum"] == SUM
    assert json.loads(task.input["rowCounts"]) == COUNTS
    assert task.input["verifyConfig"] == '{"deep": true}'
    assert task.input["workerConfig"] == '{"kind": "postgres"}'
    assert backup(core, backup_id).verify_run_status == "RUNNING"

    core.twin.update_task(
        task,
        "COMPLETED",
        {
            "verified": False,
            "details": "public.orders: 11 rows, 12 recorded at backup time",
            "checkedAt": "2026-03-01T03:00:12Z",
        },
    )
    run_tick(core.services)
    row = backup(core, backup_id)
    assert row.verify_status == "FAILED"
    assert row.verify_details == "public.orders: 11 rows, 12 recorded at backup time"
    assert row.last_verified_at == datetime(2026, 3, 1, 3, 0, 12, tzinfo=UTC)
    assert row.verify_run_status == "COMPLETED" and row.verify_workflow_id == workflow_id

    again = request(core, backup_id, restores.VERIFY, None)
    task = core.twin.poll_task(VERIFY, "storage-1")
    assert task is not None and task.workflow_id == again
    core.twin.update_task(task, "COMPLETED", {"verified": True, "details": "all good"})
    run_tick(core.services)
    row = backup(core, backup_id)
    assert row.verify_status == "VERIFIED" and row.verify_details == "all good"
    assert row.last_verified_at is not None and row.verify_workflow_id == again


def test_a_verify_that_fails_terminally_records_failed_with_the_cause(core: Core) -> None:
    core.add_spec("db")
    backup_id = take(core)
    request(core, backup_id, restores.VERIFY, None)
    task = core.twin.poll_task(VERIFY, "storage-1")
    assert task is not None
    core.twin.update_task(
        task, "FAILED_WITH_TERMINAL_ERROR", {}, reason="the backup file db-1.dump is missing"
    )
    run_tick(core.services)
    row = backup(core, backup_id)
    assert row.verify_status == "FAILED" and row.verify_run_status == "FAILED"
    assert row.verify_details is not None and "db-1.dump is missing" in row.verify_details


def test_a_restore_is_followed_to_its_end_and_its_outcome_recorded(core: Core) -> None:
    core.add_spec("db")
    backup_id = take(core)
    config = '{"dsn": "postgresql://app:s3cret@db/orders_restored"}'
    workflow_id = request(core, backup_id, restores.RESTORE, config)
    assert core.twin.get_workflow(workflow_id).name == RESTORE_BACKUP
    task = core.twin.poll_task(RESTORE, "storage-1")
    assert task is not None and task.input["restoreConfig"] == config
    assert task.input["checksum"] == SUM
    core.twin.update_task(
        task, "COMPLETED", {"restoredTo": "app@db:5432/orders_restored", "replaced": False}
    )
    run_tick(core.services)
    row = backup(core, backup_id)
    assert row.restore_status == "COMPLETED" and row.restore_workflow_id == workflow_id
    assert row.restore_details == "restored to app@db:5432/orders_restored"

    second = request(core, backup_id, restores.RESTORE, config)
    task = core.twin.poll_task(RESTORE, "storage-1")
    assert task is not None and task.workflow_id == second
    core.twin.update_task(
        task,
        "FAILED_WITH_TERMINAL_ERROR",
        {},
        reason="the database app@db:5432/orders_restored holds relations; overwrite is false",
    )
    run_tick(core.services)
    row = backup(core, backup_id)
    assert row.restore_status == "FAILED"
    assert row.restore_details is not None and "holds relations" in row.restore_details
    assert row.verify_status == "NEVER"  # a restore is no verdict on the backup


def test_only_a_completed_backup_is_claimed_and_one_run_of_a_kind_at_a_time(core: Core) -> None:
    core.add_spec("db")
    backup_id = take(core)
    request(core, backup_id, restores.VERIFY, None)
    with core.services.db() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "db"))
        assert spec is not None
        with pytest.raises(restores.RunUnderway):
            restores.claim(session, spec, backup_id, restores.VERIFY, core.now())
        # A restore may run beside a verification: both only read the backup.
        restores.claim(session, spec, backup_id, restores.RESTORE, core.now())
        session.rollback()
        for status in ("EXPIRING", "REMOVING", "REMOVE_FAILED", "REMOVED", "FAILED"):
            session.execute(update(Backup).where(Backup.id == backup_id).values(status=status))
            with pytest.raises(restores.NotRestorable, match=f"is {status}"):
                restores.claim(session, spec, backup_id, restores.RESTORE, core.now())
        session.rollback()


def test_a_removal_waits_for_the_verification_under_way(core: Core) -> None:
    core.add_spec("db")
    backup_id = take(core)
    workflow_id = request(core, backup_id, restores.VERIFY, None)
    # Retention marks it for removal while it is verified.
    with core.services.db.begin() as session:
        session.execute(
            update(Backup)
            .where(Backup.id == backup_id)
            .values(status=BackupStatus.REMOVING.value, next_attempt_at=core.now())
        )
    assert start_pending_removals(core.services) == 0
    run_tick(core.services)
    assert backup(core, backup_id).remove_workflow_id is None

    task = core.twin.poll_task(VERIFY, "storage-1")
    assert task is not None and task.workflow_id == workflow_id
    core.twin.update_task(task, "COMPLETED", {"verified": True, "details": "ok"})
    run_tick(core.services)  # follows the verification, then starts the removal
    row = backup(core, backup_id)
    assert row.verify_status == "VERIFIED"
    assert row.remove_workflow_id is not None
    assert core.twin.get_workflow(row.remove_workflow_id).status is WorkflowStatus.RUNNING


def test_a_start_without_an_answer_is_adopted_or_failed_once_it_lapsed(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    core.add_spec("db")
    real_start = core.twin.start_workflow
    lost: list[str] = []

    def start_then_lose_the_answer(*args: object, **kwargs: object) -> str:
        lost.append(real_start(*args, **kwargs))  # type: ignore[arg-type]
        raise ConductorUnavailable("read timed out")

    def never_arrives(*args: object, **kwargs: object) -> str:
        raise ConductorUnavailable("connection refused")

    taken = []
    for fake in (start_then_lose_the_answer, never_arrives):
        # The second backup's retention run may mark the first for removal: held off.
        backup_id = take(core)
        taken.append(backup_id)
        monkeypatch.setattr(core.twin, "start_workflow", fake)
        with core.services.db.begin() as session:
            spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "db"))
            assert spec is not None
            job = restores.claim(session, spec, backup_id, restores.VERIFY, core.now())
        started = restores.start(core.services, job, None)
        assert started.workflow_id is None and started.unconfirmed
        monkeypatch.setattr(core.twin, "start_workflow", real_start)
    first, second = taken

    run_tick(core.services)  # not lapsed yet: left as they are, and no removal may start
    assert backup(core, first).verify_run_status == "STARTING"
    core.advance(restores.START_LAPSE.total_seconds() + 1)
    run_tick(core.services)
    adopted, failed = backup(core, first), backup(core, second)
    assert adopted.verify_run_status == "RUNNING" and adopted.verify_workflow_id == lost[0]
    assert adopted.remove_workflow_id is None  # its verification runs: no removal yet
    assert failed.verify_run_status == "FAILED" and failed.verify_workflow_id is None
    assert failed.verify_details is not None and "not confirmed" in failed.verify_details
    assert failed.verify_status == "NEVER"


def test_verify_and_restore_are_registered_only_when_absent(core: Core) -> None:
    twin = core.twin
    for name in (VERIFY, RESTORE):
        tuned = twin.get_task_def(name)
        assert tuned is not None
        twin.update_task_def({**tuned, "retryCount": 7, "responseTimeoutSeconds": 99})
    report = register_definitions(twin)
    assert report.created == [] and report.updated == []
    for name in (VERIFY, RESTORE):
        kept = twin.get_task_def(name)
        assert kept is not None and kept["retryCount"] == 7
    assert {f"workflow {RESTORE_BACKUP} v1", f"workflow {VERIFY_BACKUP} v1"} <= set(
        report.unchanged
    )

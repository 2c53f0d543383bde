"""Verification and restore figures on /metrics, against real databases: the verdicts and
restore ends counted in the transaction that records them (backtor.scheduling.restores),
and the per-spec verification gauges read from the backups' state at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from backtor.conductor.payloads import WorkflowStatus
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import counters, repository
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.observability.collector import MetricsCollector
from backtor.scheduling import restores
from tests.support import metrics
from tests.support.metrics import Samples, parse, value

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
# The migrated test database (tests.support.metrics), for every test here.
engine = metrics.engine
sessions = metrics.sessions


def add_spec(session: Session, name: str) -> int:
    draft = SpecDraft(name=name, backup_cron_string="0 0 3 * * *")
    return repository.create_spec(session, normalise_spec(draft), NOW - timedelta(days=30)).id


def add_backup(
    session: Session,
    spec_id: int,
    status: BackupStatus = BackupStatus.COMPLETED,
    *,
    verify_status: str = "NEVER",
    verified_at: datetime | None = None,
    running: str | None = None,
    ended: datetime = NOW - timedelta(days=1),
) -> int:
    """A backup; `running` names a verify_backup and restore_backup run under way."""
    backup = Backup(
        spec_id=spec_id,
        status=status.value,
        scheduled_at=ended - timedelta(minutes=5),
        start_time=ended - timedelta(minutes=5),
        end_time=ended,
        data_id=f"data-{spec_id}-{verify_status}-{verified_at}-{running}",
        verify_status=verify_status,
        last_verified_at=verified_at,
    )
    if running is not None:
        backup.verify_workflow_id = f"verify-{running}"
        backup.verify_run_status = restores.RUNNING
        backup.restore_workflow_id = f"restore-{running}"
        backup.restore_status = restores.RUNNING
    session.add(backup)
    session.flush()
    return backup.id


def scrape(sessions: sessionmaker[Session]) -> Samples:
    return parse(MetricsCollector(sessions, clock=lambda: NOW).exposition())


def end(
    session: Session,
    kind: restores.Kind,
    backup_id: int,
    run: str,
    status: WorkflowStatus,
    output: dict[str, object] | None = None,
) -> bool:
    return restores.record_end(
        session,
        kind,
        backup_id,
        f"{kind.name}-{run}",
        status,
        output or {},
        "the worker said no" if status is not WorkflowStatus.COMPLETED else None,
        NOW,
    )


def test_verdicts_and_restore_ends_are_counted_with_the_transaction_that_records_them(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        spec = add_spec(session, "www")
        good = add_backup(session, spec, running="good")
        bad = add_backup(session, spec, running="bad")
        broken = add_backup(session, spec, running="broken")
        stopped = add_backup(session, spec, running="stopped")
    # A rolled-back recording counts nothing.
    with sessions() as session:
        assert end(session, restores.VERIFY, good, "good", WorkflowStatus.COMPLETED)
        assert counters.pending(session)
        session.rollback()
    with sessions() as session:
        assert counters.read_all(session) == []
    with sessions.begin() as session:
        ok = {"verified": True, "details": "ok", "checkedAt": "2026-06-10T11:00:00Z"}
        assert end(session, restores.VERIFY, good, "good", WorkflowStatus.COMPLETED, ok)
        damaged = {"verified": False, "details": "gzip: bad CRC"}
        assert end(session, restores.VERIFY, bad, "bad", WorkflowStatus.COMPLETED, damaged)
        assert end(session, restores.VERIFY, broken, "broken", WorkflowStatus.FAILED)
        # Terminated: no verdict, nothing counted under verify.
        assert end(session, restores.VERIFY, stopped, "stopped", WorkflowStatus.TERMINATED)
        assert end(session, restores.RESTORE, good, "good", WorkflowStatus.COMPLETED)
        assert end(session, restores.RESTORE, bad, "bad", WorkflowStatus.FAILED)
        assert end(session, restores.RESTORE, broken, "broken", WorkflowStatus.FAILED)
    # Recorded once: a second report of the same end changes and counts nothing.
    with sessions.begin() as session:
        assert not end(session, restores.VERIFY, good, "good", WorkflowStatus.COMPLETED, ok)
    with sessions() as session:
        rows = {(n, b, label): v for n, b, label, v in counters.read_all(session)}
    assert rows == {
        (counters.VERIFY, "www", "VERIFIED"): 1,
        (counters.VERIFY, "www", "FAILED"): 2,
        (counters.RESTORE, "www", "COMPLETED"): 1,
        (counters.RESTORE, "www", "FAILED"): 2,
    }
    samples = scrape(sessions)
    assert value(samples, "backtor_verify_total", backup="www", result="VERIFIED") == 1
    assert value(samples, "backtor_verify_total", backup="www", result="FAILED") == 2
    assert value(samples, "backtor_restore_total", backup="www", status="COMPLETED") == 1
    assert value(samples, "backtor_restore_total", backup="www", status="FAILED") == 2
    checked = datetime(2026, 6, 10, 11, 0, tzinfo=UTC).timestamp()
    assert value(samples, "backtor_backup_last_verified_timestamp_seconds", backup="www") == (
        checked
    )
    assert value(samples, "backtor_backup_verify_failures", backup="www") == 2


def test_a_restore_conductor_refuses_counts_as_failed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        spec = add_spec(session, "db")
        backup_id = add_backup(session, spec)
    job = restores.RunJob(restores.RESTORE, backup_id, "db", "d", NOW, None, None, None)
    with sessions.begin() as session:
        session.get_one(Backup, backup_id).restore_status = restores.STARTING
        session.get_one(Backup, backup_id).restore_requested_at = NOW
    with sessions.begin() as session:
        restores._end(session, job, None, "FAILED", "Conductor refused the start: 400")
    with sessions.begin() as session:  # already ended: not counted twice
        restores._end(session, job, None, "FAILED", "Conductor refused the start: 400")
    samples = scrape(sessions)
    assert value(samples, "backtor_restore_total", backup="db", status="FAILED") == 1


def test_the_verification_gauges_follow_the_held_backups(
    sessions: sessionmaker[Session],
) -> None:
    older = NOW - timedelta(days=3)
    newer = NOW - timedelta(hours=2)
    newest = NOW - timedelta(minutes=5)
    taken = NOW - timedelta(days=2)
    with sessions.begin() as session:
        mixed = add_spec(session, "mixed")
        # The newest backup proven restorable was taken 2 days ago, verified 3 days ago (a
        # backup of last week was verified more recently).
        add_backup(session, mixed, verify_status="VERIFIED", verified_at=older, ended=taken)
        week = NOW - timedelta(days=7)
        add_backup(session, mixed, verify_status="VERIFIED", verified_at=newer, ended=week)
        # A later FAILED verdict is not a verification: the gauges stay where they are.
        add_backup(session, mixed, verify_status="FAILED", verified_at=newest, ended=NOW)
        add_backup(session, mixed, ended=NOW)  # never verified
        add_backup(session, mixed, BackupStatus.EXPIRING, verify_status="FAILED", verified_at=older)
        # A removed backup's verdicts no longer count: its data is gone.
        add_backup(session, mixed, BackupStatus.REMOVED, verify_status="VERIFIED", verified_at=NOW)
        add_backup(session, mixed, BackupStatus.REMOVED, verify_status="FAILED", verified_at=NOW)
        never = add_spec(session, "never")
        add_backup(session, never)
        add_spec(session, "empty")
        failing = add_spec(session, "failing")
        add_backup(session, failing, verify_status="FAILED", verified_at=newest)
    samples = scrape(sessions)
    assert value(samples, "backtor_backup_newest_verified_timestamp_seconds", backup="mixed") == (
        taken.timestamp()
    )
    assert (
        value(samples, "backtor_backup_newest_verified_timestamp_seconds", backup="never") is None
    )
    last = "backtor_backup_last_verified_timestamp_seconds"
    assert value(samples, last, backup="mixed") == newer.timestamp()
    assert value(samples, last, backup="never") is None
    assert value(samples, last, backup="empty") is None
    assert value(samples, last, backup="failing") is None
    failures = "backtor_backup_verify_failures"
    assert value(samples, failures, backup="mixed") == 2
    assert value(samples, failures, backup="never") == 0
    assert value(samples, failures, backup="empty") == 0
    assert value(samples, failures, backup="failing") == 1


def test_an_empty_database_declares_the_verification_families(
    sessions: sessionmaker[Session],
) -> None:
    text = MetricsCollector(sessions, clock=lambda: NOW).exposition()
    for family, kind in (
        ("backtor_verify_total", "counter"),
        ("backtor_restore_total", "counter"),
        ("backtor_backup_newest_verified_timestamp_seconds", "gauge"),
        ("backtor_backup_last_verified_timestamp_seconds", "gauge"),
        ("backtor_backup_verify_failures", "gauge"),
        ("backtor_backup_verify_expected_period_seconds", "gauge"),
    ):
        assert f"# TYPE {family} {kind}\n" in text


def test_the_verify_period_is_reported_for_active_specs_that_verify_on_a_schedule(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        crons = {"daily": "0 0 4 * * *", "weekly": "0 0 4 * * MON", "paused": "0 0 4 * * *"}
        for name, verify in crons.items():
            spec = session.get_one(BackupSpec, add_spec(session, name))
            spec.verify_cron_string = verify  # what a PUT with verifyCronString stores
            spec.enabled = name != "paused"
        add_spec(session, "unscheduled")
    samples = scrape(sessions)
    period = "backtor_backup_verify_expected_period_seconds"
    assert value(samples, period, backup="daily") == 86400
    assert value(samples, period, backup="weekly") == 7 * 86400
    assert value(samples, period, backup="paused") is None  # no expected period either
    assert value(samples, "backtor_backup_expected_period_seconds", backup="paused") is None
    assert value(samples, period, backup="unscheduled") is None
    assert value(samples, "backtor_backup_expected_period_seconds", backup="unscheduled") == 86400

"""Backups marked REMOVING become remove_backup workflows; their outcomes become records.

REMOVING rows are the outbox: a row is claimed, its workflow started, the workflow id
stored. A removal that fails is tried again with a growing delay, never dropped; after a
few failures its status says REMOVE_FAILED, so operators see it (it is still retried).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from backtor.conductor.names import REMOVE_BACKUP
from backtor.conductor.payloads import WorkflowStatus
from backtor.conductor.registration import DEFINITIONS
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.repository import finish_purge_if_done, mark_purge_removals
from backtor.runtime.services import Services

log = logging.getLogger(__name__)

CLAIM = timedelta(seconds=30)
FAILURES_SHOWN = 3
OPEN = (BackupStatus.REMOVING.value, BackupStatus.REMOVE_FAILED.value)


def backoff(attempts: int, base_seconds: float = 30.0) -> timedelta:
    """`base_seconds` after the first failure, doubling, at most an hour."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 3600.0))


@dataclass(frozen=True)
class RemovalJob:
    backup_id: int
    spec_name: str
    data_id: str | None
    worker_config: str | None


def start_pending_removals(services: Services, limit: int = 200) -> int:
    """Start remove_backup for REMOVING backups that have no workflow yet; returns how many."""
    now = services.clock()
    with services.db.begin() as session:
        jobs = _claim(session, now, limit)
    if not jobs:
        return 0
    version = DEFINITIONS.workflow_version(REMOVE_BACKUP)
    try:
        # A start whose answer was lost may have created the workflow: adopt it, never
        # start a second removal of the same backup.
        underway = _open_removals(services, sorted({job.spec_name for job in jobs}))
    except (ConductorUnavailable, ConductorRefused) as exc:
        log.warning("removals not started this pass: %s", exc)
        _release(services, jobs, str(exc))
        return 0

    def start(job: RemovalJob) -> tuple[RemovalJob, str | None, str | None]:
        if job.backup_id in underway:
            return job, underway[job.backup_id], None
        try:
            workflow_id = services.conductor.start_workflow(
                REMOVE_BACKUP,
                version=version,
                correlation_id=job.spec_name,
                input={
                    "backupName": job.spec_name,
                    "dataId": job.data_id,
                    "workerConfig": job.worker_config,
                    "backupId": job.backup_id,
                },
            )
        except (ConductorUnavailable, ConductorRefused) as exc:
            return job, None, str(exc)[:500]
        return job, workflow_id, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(start, jobs))
    rows: list[dict[str, Any]] = []
    for job, workflow_id, error in results:
        if workflow_id is not None:
            rows.append(
                {"id": job.backup_id, "remove_workflow_id": workflow_id, "claimed_until": None}
            )
            log.info(
                "spec %s: remove_backup %s started for backup %s",
                job.spec_name,
                workflow_id,
                job.backup_id,
                extra={"backup": job.spec_name, "workflow_id": workflow_id},
            )
        else:
            rows.append({"id": job.backup_id, "claimed_until": None, "last_error": error})
    with services.db.begin() as session:
        session.execute(update(Backup), rows)
    return sum(1 for _, workflow_id, _ in results if workflow_id is not None)


def _open_removals(services: Services, names: Sequence[str]) -> dict[int, str]:
    """Open remove_backup runs of these specs, by the backup they remove."""
    found = services.conductor.workflows_by_correlation(REMOVE_BACKUP, names, include_closed=False)
    underway: dict[int, str] = {}
    for runs in found.values():
        for run in runs:
            backup_id = run.input.get("backupId")
            if run.status.is_open and isinstance(backup_id, int):
                underway[backup_id] = run.workflow_id
    return underway


def _release(services: Services, jobs: Sequence[RemovalJob], error: str) -> None:
    rows = [{"id": j.backup_id, "claimed_until": None, "last_error": error[:500]} for j in jobs]
    with services.db.begin() as session:
        session.execute(update(Backup), rows)


def _claim(session: Session, now: datetime, limit: int) -> list[RemovalJob]:
    claimable = and_(
        Backup.status.in_(OPEN),
        Backup.remove_workflow_id.is_(None),
        or_(Backup.next_attempt_at.is_(None), Backup.next_attempt_at <= now),
        or_(Backup.claimed_until.is_(None), Backup.claimed_until < now),
    )
    ids = list(
        session.scalars(
            select(Backup.id).where(claimable).order_by(Backup.scheduled_at, Backup.id).limit(limit)
        )
    )
    if not ids:
        return []
    claimed = list(
        session.scalars(
            update(Backup)
            .where(Backup.id.in_(ids), claimable)
            .values(claimed_until=now + CLAIM)
            .returning(Backup.id)
        )
    )
    rows = session.execute(
        select(Backup.id, BackupSpec.name, Backup.data_id, BackupSpec.worker_config)
        .join(BackupSpec, BackupSpec.id == Backup.spec_id)
        .where(Backup.id.in_(claimed))
    ).all()
    return [RemovalJob(*row) for row in rows]


def record_removed(session: Session, backup_id: int, now: datetime) -> bool:
    """Mark a backup REMOVED (idempotent); finish its spec's purge when it was the last."""
    spec_id = session.scalar(select(Backup.spec_id).where(Backup.id == backup_id))
    if spec_id is None:
        return False
    changed = session.execute(  # type: ignore[attr-defined]  # a CursorResult at run time
        update(Backup)
        .where(Backup.id == backup_id, Backup.status.in_(OPEN))
        .values(
            status=BackupStatus.REMOVED.value,
            removed_at=now,
            last_error=None,
            next_attempt_at=None,
            claimed_until=None,
        )
    ).rowcount
    if changed:
        name = session.scalar(select(BackupSpec.name).where(BackupSpec.id == spec_id)) or ""
        counters.increment(session, counters.RETENTION_DELETE, name, "COMPLETED")
    finish_purge_if_done(session, spec_id)
    return bool(changed)


def reconcile_removals(services: Services, limit: int = 500) -> None:
    """Find how started removals ended, however they ended, and record it."""
    with services.db.begin() as session:
        tracked = session.execute(
            select(Backup.id, Backup.remove_workflow_id, BackupSpec.name, Backup.remove_attempts)
            .join(BackupSpec, BackupSpec.id == Backup.spec_id)
            .where(Backup.status.in_(OPEN), Backup.remove_workflow_id.is_not(None))
            .order_by(Backup.id)
            .limit(limit)
        ).all()
    if not tracked:
        return
    names = sorted({row.name for row in tracked})
    open_ids = {
        w.workflow_id
        for workflows in services.conductor.workflows_by_correlation(
            REMOVE_BACKUP, names, include_closed=False
        ).values()
        for w in workflows
        if w.status.is_open
    }
    for row in tracked:
        if row.remove_workflow_id in open_ids:
            continue
        try:
            workflow = services.conductor.get_workflow(row.remove_workflow_id, include_tasks=False)
            status, reason = workflow.status, workflow.reason
        except ConductorNotFound:
            status, reason = (
                WorkflowStatus.FAILED,
                "the remove_backup workflow is gone from Conductor",
            )
        except (ConductorUnavailable, ConductorRefused) as exc:
            # One run Conductor cannot show now must not hold up the removals behind it.
            log.warning(
                "spec %s: remove_backup %s not followed this pass: %s",
                row.name,
                row.remove_workflow_id,
                exc,
                extra={"backup": row.name, "workflow_id": row.remove_workflow_id},
            )
            continue
        if status.is_open:
            continue
        now = services.clock()
        with services.db.begin() as session:
            if status is WorkflowStatus.COMPLETED:
                record_removed(session, row.id, now)
            else:
                _record_failure(
                    session,
                    row.id,
                    row.remove_attempts,
                    row.name,
                    status,
                    reason,
                    now + backoff(row.remove_attempts + 1, services.settings.removal_retry_seconds),
                )


def _record_failure(
    session: Session,
    backup_id: int,
    attempts: int,
    spec_name: str,
    status: str,
    reason: object,
    retry_at: datetime,
) -> None:
    attempts += 1
    session.execute(
        update(Backup)
        .where(Backup.id == backup_id, Backup.status.in_(OPEN))
        .values(
            remove_attempts=attempts,
            remove_workflow_id=None,
            next_attempt_at=retry_at,
            status=(
                BackupStatus.REMOVE_FAILED.value
                if attempts >= FAILURES_SHOWN
                else BackupStatus.REMOVING.value
            ),
            last_error=f"remove_backup {status}: {reason or 'no reason given'}"[:2000],
        )
    )
    counters.increment(session, counters.RETENTION_DELETE, spec_name, status)
    counters.increment(session, counters.WARN, spec_name, "error")
    log.warning(
        "spec %s: removal of backup %s failed (%s, attempt %d); retrying at %s",
        spec_name,
        backup_id,
        status,
        attempts,
        retry_at.isoformat(),
        extra={"backup": spec_name},
    )


def advance_purges(session: Session, now: datetime, max_removals: int) -> None:
    """For specs being deleted (DELETE ?purge=true): mark their backups for removal."""
    spec_ids = list(session.scalars(select(BackupSpec.id).where(BackupSpec.deleting.is_(True))))
    for spec_id in spec_ids:
        mark_purge_removals(session, spec_id, now, max_removals)
        finish_purge_if_done(session, spec_id)

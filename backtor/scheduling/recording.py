"""A backup taken becomes a record, and a spec's records get their retention plan applied.

Records are keyed on the storage worker's `backup` task execution: a workflow that is
retried or rerun and produces a second dataId gets a second record, so no stored data is
ever left without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backtor.core.policy import RetentionPolicy
from backtor.core.retention import COMPLETED, BackupRecord, RetentionPlan, plan_retention
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.repository import retention_fields

log = logging.getLogger(__name__)

FAILED_STATUSES = (BackupStatus.FAILED.value, BackupStatus.TIMED_OUT.value)


@dataclass(frozen=True)
class TakenBackup:
    """What a completed `backup` task produced."""

    spec_name: str
    task_id: str
    workflow_id: str
    data_id: str
    size_mb: float | None
    scheduled_at: datetime
    start_time: datetime | None
    end_time: datetime | None


def parse_size(value: Any) -> float | None:
    """A storage worker's dataSizeMB; anything that is not a number is unknown."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def policy_of(spec: BackupSpec) -> RetentionPolicy:
    return RetentionPolicy.from_fields(retention_fields(spec))


def record_taken(session: Session, spec: BackupSpec, taken: TakenBackup) -> Backup:
    """Record a backup once per `backup` task execution (idempotent).

    A FAILED or TIMED_OUT record of the same workflow (written when an earlier attempt
    failed) becomes this record: the retry from Conductor's UI succeeded.
    """
    existing = session.scalar(select(Backup).where(Backup.backup_task_id == taken.task_id))
    if existing is not None:
        return existing
    backup = session.scalar(
        select(Backup)
        .where(
            Backup.spec_id == spec.id,
            Backup.create_workflow_id == taken.workflow_id,
            Backup.backup_task_id.is_(None),
            Backup.status.in_(FAILED_STATUSES),
        )
        .limit(1)
    )
    if backup is None:
        backup = Backup(spec_id=spec.id, create_workflow_id=taken.workflow_id)
        session.add(backup)
    backup.status = BackupStatus.COMPLETED.value
    backup.backup_task_id = taken.task_id
    backup.data_id = taken.data_id
    backup.size_mb = taken.size_mb
    backup.scheduled_at = taken.scheduled_at
    backup.start_time = taken.start_time
    backup.end_time = taken.end_time
    backup.last_error = None
    session.flush()
    log.info(
        "spec %s: backup %s recorded (dataId %s)",
        spec.name,
        backup.id,
        taken.data_id,
        extra={"backup": spec.name, "workflow_id": taken.workflow_id},
    )
    return backup


def record_failed(
    session: Session,
    spec: BackupSpec,
    *,
    workflow_id: str,
    status: BackupStatus,
    scheduled_at: datetime,
    start_time: datetime | None,
    end_time: datetime | None,
    error: str | None,
) -> None:
    """Record a create_backup run that produced no data (once per workflow).

    The unique index on no-data runs decides, not a look first: two passes that see the
    run end at the same moment write one record.
    """
    exists = session.scalar(
        select(Backup.id).where(Backup.spec_id == spec.id, Backup.create_workflow_id == workflow_id)
    )
    if exists is not None:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(Backup)
        .values(
            spec_id=spec.id,
            create_workflow_id=workflow_id,
            status=status.value,
            scheduled_at=scheduled_at,
            start_time=start_time,
            end_time=end_time,
            last_error=(error or "")[:2000] or None,
        )
        .on_conflict_do_nothing(
            index_elements=["create_workflow_id"],
            index_where=Backup.backup_task_id.is_(None),
        )
    )


def completed_records(session: Session, spec_id: int) -> list[BackupRecord]:
    """The spec's retention candidates: its COMPLETED backups, read in SQL (the index on
    (spec_id, status)). The plan ignores every other status (docs/retention.md, step 1), so
    the REMOVED history, which grows without bound, is never read."""
    rows = session.execute(
        select(Backup.id, Backup.scheduled_at, Backup.pinned).where(
            Backup.spec_id == spec_id, Backup.status == BackupStatus.COMPLETED.value
        )
    ).all()
    return [BackupRecord(str(row.id), row.scheduled_at, COMPLETED, row.pinned) for row in rows]


def plan_for(
    session: Session, spec: BackupSpec, policy: RetentionPolicy | None = None
) -> RetentionPlan:
    """The retention plan over the spec's COMPLETED backups (nothing changes).

    One decision per candidate, none for other statuses: the plan would only have marked
    them "ignore", and its keep/remove decisions do not depend on them.
    """
    records = completed_records(session, spec.id)
    return plan_retention(records, policy or policy_of(spec), ZoneInfo(spec.timezone))


def store_tags(session: Session, spec: BackupSpec, plan: RetentionPlan) -> int:
    """Store the plan's tags on the spec's COMPLETED backups; returns how many rows changed.

    Only rows whose tags differ are written, so refreshing an unchanged plan is cheap.
    Other statuses keep the tags they had when they left COMPLETED: only COMPLETED rows are
    read and written (a row that left COMPLETED since the plan was made is left alone).
    """
    current = {
        row.id: row.tags
        for row in session.execute(
            select(Backup.id, Backup.tags).where(
                Backup.spec_id == spec.id, Backup.status == BackupStatus.COMPLETED.value
            )
        )
    }
    tag_rows = []
    for decision in plan.decisions:
        backup_id = int(decision.id)
        if backup_id in current:
            tags = ",".join(tier.value for tier in decision.tags)
            if current[backup_id] != tags:
                tag_rows.append({"id": backup_id, "tags": tags})
    if tag_rows:
        session.execute(update(Backup), tag_rows)
    return len(tag_rows)


def apply_plan(session: Session, spec: BackupSpec, now: datetime, max_removals: int) -> list[int]:
    """Store each backup's tags and mark the plan's removals (oldest first, capped) REMOVING.

    The removals are started by the removal outbox (scheduling.removals); the rest of the plan's
    removals follow in later runs.
    """
    plan = plan_for(session, spec)
    store_tags(session, spec, plan)
    counters.increment(session, counters.RETENTION_TASKS)
    counters.increment(session, counters.TAG, spec.name, "success")
    removals = [int(d.id) for d in reversed(plan.decisions) if d.action == "remove"]
    chosen = removals[:max_removals]
    if chosen:
        session.execute(
            update(Backup)
            .where(
                Backup.id.in_(chosen),
                Backup.status == BackupStatus.COMPLETED.value,
                Backup.pinned.is_(False),
            )
            .values(status=BackupStatus.REMOVING.value, next_attempt_at=now)
        )
        log.info(
            "spec %s: retention removes %d backup(s)%s",
            spec.name,
            len(chosen),
            f" ({len(removals) - len(chosen)} more in later runs)"
            if len(removals) > len(chosen)
            else "",
            extra={"backup": spec.name},
        )
    return chosen

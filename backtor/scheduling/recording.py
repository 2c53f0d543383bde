"""A backup taken becomes a record, and a spec's records get their retention plan applied.

Records are keyed on the storage worker's `backup` task execution: a workflow that is
retried or rerun and produces a second dataId gets a second record, so no stored data is
ever left without one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session

from backtor.core.policy import KEEP_WITHIN_FIELD, LAST_FIELD, RetentionPolicy
from backtor.core.retention import COMPLETED, BackupRecord, RetentionPlan, plan_retention
from backtor.core.specs import MAX_PAUSED_REASON_CHARS
from backtor.db import counters
from backtor.db.inserts import dialect_insert
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.repository import finish_purge_if_done, retention_fields
from backtor.scheduling import notices

log = logging.getLogger(__name__)

FAILED_STATUSES = (BackupStatus.FAILED.value, BackupStatus.TIMED_OUT.value)
# Retention candidates: COMPLETED backups, and EXPIRING ones (the plan removed them, their
# removal waits out removalDelaySeconds): a plan that keeps one again puts it back.
CANDIDATE_STATUSES = (BackupStatus.COMPLETED.value, BackupStatus.EXPIRING.value)
AUTO_PAUSE_REASON = "auto-paused after {count} consecutive failed backups; last: {error}"


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
    # The backup task's checksum (SHA-256) and, for postgres, its rowCounts as a JSON
    # object's text: handed back to verify and restore (docs/restore.md).
    checksum: str | None = None
    row_counts: str | None = None


def recorded_checksum(value: Any) -> str | None:
    """A backup task's checksum: kept as given when it is a plausible digest string."""
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 80:
        return None
    return value.strip()


def parse_row_counts(value: Any) -> str | None:
    """A backup task's rowCounts ({"schema.table": rows}, or its JSON text) as JSON text;
    anything else is unknown (a verify then compares no counts)."""
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or not all(
        isinstance(rows, int) and not isinstance(rows, bool) for rows in value.values()
    ):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_size(value: Any) -> float | None:
    """A storage worker's dataSizeMB; anything that is not a number is unknown."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def policy_of(spec: BackupSpec) -> RetentionPolicy:
    return RetentionPolicy.from_fields(
        {
            **retention_fields(spec),
            KEEP_WITHIN_FIELD: spec.retention_keep_within,
            LAST_FIELD: spec.retention_last,
        }
    )


# record_taken's reads, built once: they run for every backup recorded.
_BY_TASK = select(Backup).where(Backup.backup_task_id == bindparam("task_id"))
_FAILED_RECORD = (
    select(Backup)
    .where(
        Backup.spec_id == bindparam("spec_id"),
        Backup.create_workflow_id == bindparam("run"),
        Backup.backup_task_id.is_(None),
        Backup.status.in_(FAILED_STATUSES),
    )
    .limit(1)
)


def record_taken(session: Session, spec: BackupSpec, taken: TakenBackup) -> Backup:
    """Record a backup once per `backup` task execution (idempotent).

    A FAILED or TIMED_OUT record of the same workflow (written when an earlier attempt
    failed) becomes this record: the retry from Conductor's UI succeeded.
    """
    existing = session.scalar(_BY_TASK, {"task_id": taken.task_id})
    if existing is not None:
        return existing
    backup = session.scalar(_FAILED_RECORD, {"spec_id": spec.id, "run": taken.workflow_id})
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
    backup.checksum = taken.checksum
    backup.row_counts = taken.row_counts
    backup.last_error = None
    session.flush()
    reset_failures(session, spec.id)
    notices.backup_succeeded(session, spec, backup)
    log.info(
        "spec %s: backup %s recorded (dataId %s)",
        spec.name,
        backup.id,
        taken.data_id,
        extra={"backup": spec.name, "workflow_id": taken.workflow_id},
    )
    return backup


@dataclass(frozen=True)
class FailureRecorded:
    """What record_failed did: `recorded` a new no-data record (False: one existed);
    `consecutive` failures of the spec so far (0 when not counted); `paused`: this failure
    auto-paused the spec (autoPauseAfterFailures reached)."""

    recorded: bool
    consecutive: int = 0
    paused: bool = False


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
    now: datetime | None = None,
    counts_as_failure: bool = True,
) -> FailureRecorded:
    """Record a create_backup run that produced no data (once per workflow).

    The unique index on no-data runs decides, not a look first: two passes that see the
    run end at the same moment write one record. A record written (not one that existed)
    counts as a consecutive failure of the spec, in this transaction, unless
    `counts_as_failure` is False (a run Backtor itself ended on purpose); reaching the
    spec's autoPauseAfterFailures disables it (count_failure). `now` is when the record
    is written (default: `end_time`).
    """
    exists = session.scalar(
        select(Backup.id).where(Backup.spec_id == spec.id, Backup.create_workflow_id == workflow_id)
    )
    if exists is not None:
        return FailureRecorded(recorded=False)
    written = session.execute(
        dialect_insert(session, Backup)
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
        .returning(Backup.id)
    ).first()
    if written is None:
        return FailureRecorded(recorded=False)  # another pass wrote it (and counted it)
    if not counts_as_failure:
        return FailureRecorded(recorded=True)
    moment = now or end_time or scheduled_at
    notices.backup_failed(session, spec, status.value, workflow_id, error, moment)
    return count_failure(
        session, spec, moment, error or f"create_backup {status.value}", workflow_id
    )


def count_failure(
    session: Session,
    spec: BackupSpec,
    now: datetime,
    error: str,
    workflow_id: str | None = None,
) -> FailureRecorded:
    """One more consecutive failed backup of `spec`; auto-pause it at its threshold.

    The count is incremented in SQL (`consecutive_failures + 1`), so concurrent recordings
    each add one; the UPDATE also takes the spec's row lock (PostgreSQL; SQLite's writes are
    serialised), so the pause below is decided on the row as it now is. A spec reaching
    autoPauseAfterFailures (> 0) while enabled is disabled as a PUT with enabled 0 would
    disable it: a fire already due is settled first (taken, not lost), next_fire_at is
    cleared, and pausedReason says why. Once disabled, later failures only count.
    """
    row = session.execute(
        update(BackupSpec)
        .where(BackupSpec.id == spec.id)
        .values(consecutive_failures=BackupSpec.consecutive_failures + 1)
        .returning(
            BackupSpec.consecutive_failures,
            BackupSpec.auto_pause_after_failures,
            BackupSpec.enabled,
            BackupSpec.deleting,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return FailureRecorded(recorded=True)
    count, threshold, enabled, deleting = row
    if threshold <= 0 or count < threshold or not enabled or deleting:
        return FailureRecorded(recorded=True, consecutive=count)
    _auto_pause(session, spec, now, count, error, workflow_id)
    return FailureRecorded(recorded=True, consecutive=count, paused=True)


def _auto_pause(
    session: Session,
    spec: BackupSpec,
    now: datetime,
    count: int,
    error: str,
    workflow_id: str | None,
) -> None:
    # Imported here: fires imports outcomes, which imports this module.
    from backtor.scheduling.fires import settle_due_fire

    session.flush()
    session.refresh(spec)  # the row as locked by count_failure's UPDATE
    settle_due_fire(session, spec, now)  # a due fire is taken, as before a PUT's disable
    reason = AUTO_PAUSE_REASON.format(count=count, error=" ".join(error.split()))
    spec.enabled = False
    spec.next_fire_at = None
    spec.paused_reason = reason[:MAX_PAUSED_REASON_CHARS]
    spec.last_update = now
    session.flush()
    notices.auto_paused(session, spec, count, spec.paused_reason, now, workflow_id)
    log.warning(
        "spec %s: %s",
        spec.name,
        spec.paused_reason,
        extra={"backup": spec.name},
    )


def reset_failures(session: Session, spec_id: int) -> None:
    """A backup succeeded: the spec's consecutive failures start again from 0."""
    session.execute(_RESET_FAILURES, {"spec_id": spec_id})


_RESET_FAILURES = (
    update(BackupSpec)
    .where(BackupSpec.id == bindparam("spec_id"), BackupSpec.consecutive_failures != 0)
    .values(consecutive_failures=0)
    .execution_options(synchronize_session=False)
)


def completed_records(session: Session, spec_id: int) -> list[BackupRecord]:
    """The spec's retention candidates: its COMPLETED and EXPIRING backups (both as
    COMPLETED to the plan: an EXPIRING one still holds its data, and a plan may keep it
    again), read in SQL (the index on (spec_id, status)). The plan ignores every other
    status (docs/retention.md, step 1), so the REMOVED history, which grows without bound,
    is never read."""
    return [
        BackupRecord(str(row.id), row.scheduled_at, COMPLETED, row.pinned)
        for row in _candidate_rows(session, spec_id)
    ]


def _candidate_rows(session: Session, spec_id: int) -> list[Any]:
    """(id, scheduled_at, pinned, status) of the spec's retention candidates."""
    return list(session.execute(_CANDIDATE_ROWS, {"spec_id": spec_id}).all())


# The retention candidates' reads, built once: they run for every plan made.
_CANDIDATE_ROWS = select(Backup.id, Backup.scheduled_at, Backup.pinned, Backup.status).where(
    Backup.spec_id == bindparam("spec_id"), Backup.status.in_(CANDIDATE_STATUSES)
)
_CANDIDATE_TAGS = select(Backup.id, Backup.tags).where(
    Backup.spec_id == bindparam("spec_id"), Backup.status.in_(CANDIDATE_STATUSES)
)


def plan_for(
    session: Session, spec: BackupSpec, policy: RetentionPolicy | None = None
) -> RetentionPlan:
    """The retention plan over the spec's COMPLETED and EXPIRING backups (nothing changes).

    One decision per candidate, none for other statuses: the plan would only have marked
    them "ignore", and its keep/remove decisions do not depend on them.
    """
    records = completed_records(session, spec.id)
    return plan_retention(records, policy or policy_of(spec), ZoneInfo(spec.timezone))


def store_tags(session: Session, spec: BackupSpec, plan: RetentionPlan) -> int:
    """Store the plan's tags on the spec's candidates (COMPLETED, EXPIRING); returns how
    many rows changed.

    Only rows whose tags differ are written, so refreshing an unchanged plan is cheap.
    Other statuses keep the tags they had when they left the candidates: only candidate
    rows are read and written (a row that left them since the plan was made is left alone).
    """
    current = {row.id: row.tags for row in session.execute(_CANDIDATE_TAGS, {"spec_id": spec.id})}
    tag_rows = []
    for decision in plan.decisions:
        backup_id = int(decision.id)
        if backup_id in current:
            tags = ",".join(tier.value for tier in decision.tags)
            if current[backup_id] != tags:
                tag_rows.append({"b_id": backup_id, "b_tags": tags})
    if tag_rows:
        # Core, by id and still a candidate: a row that changed or went meanwhile is skipped
        # (an ORM bulk UPDATE by primary key raises StaleDataError on it instead).
        table = cast(Table, Backup.__table__)
        session.execute(
            update(table)
            .where(
                table.c.id == bindparam("b_id"),
                # no IN in an executemany
                or_(*(table.c.status == status for status in CANDIDATE_STATUSES)),
            )
            .values(tags=bindparam("b_tags")),
            tag_rows,
        )
    return len(tag_rows)


def apply_plan(session: Session, spec: BackupSpec, now: datetime, max_removals: int) -> list[int]:
    """Store each backup's tags and mark the plan's removals (oldest first, capped).

    With removalDelaySeconds 0 they become REMOVING; with a delay, EXPIRING with expires_at =
    now + delay, and the removal outbox (scheduling.removals) moves them to REMOVING once it
    has passed. EXPIRING backups are candidates like COMPLETED ones: one the plan keeps
    again goes back to COMPLETED; one it still removes keeps its expires_at and takes no
    place under the cap (it was counted when it was marked). The removals are started by
    the removal outbox; the rest of the plan's removals follow in later runs. Returns the
    ids marked by this run.
    """
    rows = _candidate_rows(session, spec.id)
    records = [BackupRecord(str(row.id), row.scheduled_at, COMPLETED, row.pinned) for row in rows]
    plan = plan_retention(records, policy_of(spec), ZoneInfo(spec.timezone))
    store_tags(session, spec, plan)
    counters.increment(session, counters.RETENTION_TASKS)
    counters.increment(session, counters.TAG, spec.name, "success")
    expiring = {row.id for row in rows if row.status == BackupStatus.EXPIRING.value}
    _rescue(session, spec, [i for i in expiring if str(i) in plan.keep_ids])
    removals = [
        int(d.id)
        for d in reversed(plan.decisions)
        if d.action == "remove" and int(d.id) not in expiring
    ]
    chosen = removals[:max_removals]
    if chosen:
        delay = spec.removal_delay_seconds or 0
        values: dict[str, Any] = (
            {
                "status": BackupStatus.EXPIRING.value,
                "expires_at": now + timedelta(seconds=delay),
            }
            if delay > 0
            else {"status": BackupStatus.REMOVING.value, "next_attempt_at": now}
        )
        session.execute(
            update(Backup)
            .where(
                Backup.id.in_(chosen),
                Backup.status == BackupStatus.COMPLETED.value,
                Backup.pinned.is_(False),
            )
            .values(**values)
        )
        log.info(
            "spec %s: retention removes %d backup(s)%s%s",
            spec.name,
            len(chosen),
            f" after {delay} s (EXPIRING)" if delay > 0 else "",
            f" ({len(removals) - len(chosen)} more in later runs)"
            if len(removals) > len(chosen)
            else "",
            extra={"backup": spec.name},
        )
    return chosen


def rescue_kept(session: Session, spec: BackupSpec, plan: RetentionPlan | None = None) -> list[int]:
    """Put the spec's EXPIRING backups that its plan keeps back to COMPLETED (expires_at
    cleared): after a policy change (PUT) or a pin. Returns their ids.

    Nothing is planned when the spec has no EXPIRING backup (most PUTs): one indexed look.
    """
    expiring = list(
        session.scalars(
            select(Backup.id).where(
                Backup.spec_id == spec.id, Backup.status == BackupStatus.EXPIRING.value
            )
        )
    )
    if not expiring:
        return []
    if plan is None:
        plan = plan_for(session, spec)
    return _rescue(session, spec, [i for i in expiring if str(i) in plan.keep_ids])


def _rescue(session: Session, spec: BackupSpec, ids: list[int]) -> list[int]:
    """EXPIRING rows among `ids` become COMPLETED again (a conditional UPDATE: one the
    removal outbox moved to REMOVING meanwhile stays there)."""
    if not ids:
        return []
    rescued = list(
        session.scalars(
            update(Backup)
            .where(
                Backup.id.in_(ids),
                Backup.spec_id == spec.id,
                Backup.status == BackupStatus.EXPIRING.value,
            )
            .values(status=BackupStatus.COMPLETED.value, expires_at=None)
            .returning(Backup.id)
        )
    )
    if rescued:
        log.info(
            "spec %s: %d EXPIRING backup(s) kept again: %s",
            spec.name,
            len(rescued),
            ", ".join(str(i) for i in sorted(rescued)),
            extra={"backup": spec.name},
        )
    return rescued


# A backup whose removal is under way: REMOVING, or REMOVE_FAILED waiting for its retry.
REMOVAL_OPEN = (BackupStatus.REMOVING.value, BackupStatus.REMOVE_FAILED.value)


def record_removed(
    session: Session, backup_id: int, now: datetime, *, open_run: str | None
) -> bool:
    """Mark a backup REMOVED (idempotent); finish its spec's purge when it was the last.

    `open_run`: the remove_backup run recording it from inside (its record_removal), whose
    end is still to come: the row stays followed until the scheduler sees that end.
    """
    spec_id = session.scalar(select(Backup.spec_id).where(Backup.id == backup_id))
    if spec_id is None:
        return False
    changed = session.execute(  # type: ignore[attr-defined]  # a CursorResult at run time
        update(Backup)
        .where(Backup.id == backup_id, Backup.status.in_(REMOVAL_OPEN))
        .values(
            status=BackupStatus.REMOVED.value,
            removed_at=now,
            last_error=None,
            next_attempt_at=None,
            claimed_until=None,
            removed_by_open_run=open_run,
        )
    ).rowcount
    if changed:
        name = session.scalar(select(BackupSpec.name).where(BackupSpec.id == spec_id)) or ""
        counters.increment(session, counters.RETENTION_DELETE, name, "COMPLETED")
    finish_purge_if_done(session, spec_id)
    return bool(changed)

"""Restores and verifications: a restore_backup or verify_backup run per request, followed
to its end and recorded on the backup (docs/restore.md).

A request claims the backup in one conditional UPDATE (COMPLETED, its spec not purged, no
run of the same kind open): the run's status becomes STARTING, then the workflow is
started and its id stored (RUNNING). STARTING and RUNNING hold off the backup's removal
(the removal outbox skips such rows: backtor.scheduling.removals), and a backup that is
not COMPLETED (EXPIRING, REMOVING...) is never claimed: a restore or a verification never
overlaps a removal of the same backup.

The scheduler's pass follows the runs (`follow_runs`): a run that ended is recorded (a
verification's verdict, a restore's status and reason); a STARTING row whose start had no
clear answer is settled once its start can no longer land: the run it created is adopted
(matched on backupId and requestedAt), or the row is marked FAILED. No Backtor task runs
inside these workflows: the storage worker's task is the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from backtor.conductor.names import RESTORE_BACKUP, VERIFY_BACKUP
from backtor.conductor.payloads import ConductorBadAnswer, WorkflowRun, WorkflowStatus
from backtor.conductor.registration import DEFINITIONS
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable, Conflict
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.runtime.services import Services
from backtor.scheduling.pins import BackupNotFound
from backtor.scheduling.shards import WHOLE, Part, owned

log = logging.getLogger(__name__)

STARTING = "STARTING"
RUNNING = "RUNNING"
OPEN_RUN = (STARTING, RUNNING)
VERIFIED = "VERIFIED"
VERIFY_FAILED = "FAILED"
NEVER = "NEVER"
# A start with no clear answer may still land for about the client's timeout; after this a
# STARTING row is settled by looking for the run it may have created.
START_LAPSE = timedelta(minutes=2)
DETAILS_CHARS = 500


@dataclass(frozen=True)
class Kind:
    """One kind of run and the backup columns that follow it."""

    name: str  # restore, verify
    past: str  # restored, verified
    workflow: str
    config_input: str  # restoreConfig, verifyConfig
    workflow_id: InstrumentedAttribute[str | None]
    status: InstrumentedAttribute[str | None]
    requested_at: InstrumentedAttribute[datetime | None]


RESTORE = Kind(
    "restore",
    "restored",
    RESTORE_BACKUP,
    "restoreConfig",
    Backup.restore_workflow_id,
    Backup.restore_status,
    Backup.restore_requested_at,
)
VERIFY = Kind(
    "verify",
    "verified",
    VERIFY_BACKUP,
    "verifyConfig",
    Backup.verify_workflow_id,
    Backup.verify_run_status,
    Backup.verify_requested_at,
)
KINDS = (RESTORE, VERIFY)


def run_open(kind: Kind) -> ColumnElement[bool]:
    """The backup has a run of this kind STARTING or RUNNING."""
    return and_(kind.status.is_not(None), kind.status.in_(OPEN_RUN))


def no_open_run() -> ColumnElement[bool]:
    """Neither a restore nor a verification is open: the removal outbox's condition."""
    return and_(*(or_(k.status.is_(None), k.status.not_in(OPEN_RUN)) for k in KINDS))


class NotRestorable(Conflict):
    """Only a COMPLETED backup is restored or verified; one being removed never is."""

    def __init__(self, kind: Kind, backup_id: int, status: str) -> None:
        why = {
            BackupStatus.EXPIRING.value: "retention removes it (its removal delay runs)",
            BackupStatus.REMOVING.value: "its removal is under way",
            BackupStatus.REMOVE_FAILED.value: "its removal is under way (and being retried)",
            BackupStatus.REMOVED.value: "its data was removed",
            BackupStatus.RUNNING.value: "it is still being taken",
        }.get(status, "it holds no data")
        super().__init__(
            f"backup {backup_id} is {status}: {why}; only a COMPLETED backup can be {kind.past}",
            "id",
        )


class RunUnderway(Conflict):
    def __init__(self, kind: Kind, backup_id: int, workflow_id: str | None) -> None:
        run = f" ({kind.workflow} {workflow_id})" if workflow_id else " (being started)"
        super().__init__(f"a {kind.name} of backup {backup_id} is under way{run}", "id")


class SpecPurging(Conflict):
    def __init__(self, kind: Kind, spec_name: str) -> None:
        super().__init__(
            f"backup spec {spec_name!r} is being purged: its backups cannot be {kind.past}"
        )


@dataclass(frozen=True)
class RunJob:
    """A claimed request: what the workflow's input needs. Secrets: never in a log."""

    kind: Kind
    backup_id: int
    spec_name: str
    data_id: str | None
    requested_at: datetime
    worker_config: str | None
    checksum: str | None
    row_counts: str | None

    def __repr__(self) -> str:  # workerConfig may hold a password
        return f"RunJob({self.kind.name}, backup={self.backup_id}, spec={self.spec_name!r})"


def claim(session: Session, spec: BackupSpec, backup_id: int, kind: Kind, now: datetime) -> RunJob:
    """Claim a COMPLETED backup of `spec` for a run of `kind` (the caller commits).

    One conditional UPDATE, so a retention run or purge marking the row concurrently either
    sees the claim (the removal waits for the run) or wins (the claim then fails: 409).
    """
    if spec.deleting:
        raise SpecPurging(kind, spec.name)
    claimable = and_(
        Backup.id == backup_id,
        Backup.spec_id == spec.id,
        Backup.status == BackupStatus.COMPLETED.value,
        or_(
            kind.status.is_(None),
            kind.status.not_in(OPEN_RUN),
        ),
    )
    changed = session.execute(
        update(Backup)
        .where(claimable)
        .values({kind.status: STARTING, kind.workflow_id: None, kind.requested_at: now})
        .returning(Backup.id)
    ).first()
    if changed is None:
        row = session.execute(
            select(Backup.status, kind.status, kind.workflow_id, kind.requested_at).where(
                Backup.id == backup_id, Backup.spec_id == spec.id
            )
        ).first()
        if row is None:
            raise BackupNotFound(spec.name, backup_id)
        if row[0] != BackupStatus.COMPLETED.value:
            raise NotRestorable(kind, backup_id, row[0])
        # An open run (a STARTING one whose request died too) is settled by the scheduler.
        raise RunUnderway(kind, backup_id, row[2])
    backup = session.get(Backup, backup_id, populate_existing=True)
    assert backup is not None
    return RunJob(
        kind=kind,
        backup_id=backup_id,
        spec_name=spec.name,
        data_id=backup.data_id,
        requested_at=now,
        worker_config=spec.worker_config,
        checksum=backup.checksum,
        row_counts=backup.row_counts,
    )


def workflow_input(job: RunJob, config: str | None) -> dict[str, Any]:
    return {
        "backupName": job.spec_name,
        "backupId": job.backup_id,
        "dataId": job.data_id,
        "workerConfig": job.worker_config,
        "checksum": job.checksum,
        "rowCounts": job.row_counts,
        job.kind.config_input: config,
        "requestedAt": job.requested_at.isoformat(),
    }


@dataclass(frozen=True)
class Started:
    workflow_id: str | None
    # The start's answer was lost: the run may exist; the scheduler settles the row.
    unconfirmed: bool = False
    refused: str | None = None


def start(services: Services, job: RunJob, config: str | None) -> Started:
    """Start the claimed run and store its workflow id (RUNNING).

    Conductor refusing it clearly (4xx) marks the run FAILED at once; no clear answer (down,
    a garbled answer) leaves it STARTING for `follow_runs` to adopt or fail.
    """
    kind = job.kind
    try:
        workflow_id = services.conductor.start_workflow(
            kind.workflow,
            version=DEFINITIONS.workflow_version(kind.workflow),
            correlation_id=job.spec_name,
            input=workflow_input(job, config),
        )
    except ConductorBadAnswer as exc:
        log.warning("spec %s: %s start unconfirmed: %s", job.spec_name, kind.workflow, exc)
        return Started(None, unconfirmed=True)
    except ConductorRefused as exc:
        with services.db.begin() as session:
            _end(session, job, None, "FAILED", f"Conductor refused the start: {exc}")
        return Started(None, refused=str(exc))
    except ConductorUnavailable as exc:
        log.warning("spec %s: %s start unconfirmed: %s", job.spec_name, kind.workflow, exc)
        return Started(None, unconfirmed=True)
    with services.db.begin() as session:
        session.execute(
            update(Backup)
            .where(
                Backup.id == job.backup_id,
                kind.status == STARTING,
                kind.requested_at == job.requested_at,
            )
            .values({kind.status: RUNNING, kind.workflow_id: workflow_id})
        )
    log.info(
        "spec %s: %s %s started for backup %s",
        job.spec_name,
        kind.workflow,
        workflow_id,
        job.backup_id,
        extra={"backup": job.spec_name, "workflow_id": workflow_id},
    )
    return Started(workflow_id)


def _end(
    session: Session,
    job: RunJob,
    workflow_id: str | None,
    status: str,
    details: str,
) -> None:
    """A STARTING run that never started: FAILED with why (only while still this request's)."""
    kind = job.kind
    values: dict[Any, Any] = {kind.status: status}
    if kind is RESTORE:
        values[Backup.restore_details] = details[:DETAILS_CHARS]
    else:
        values[Backup.verify_details] = details[:DETAILS_CHARS]
    ended = session.execute(
        update(Backup)
        .where(
            Backup.id == job.backup_id,
            kind.status == STARTING,
            kind.requested_at == job.requested_at,
        )
        .values(values)
        .returning(Backup.id)
    ).first()
    if ended is not None and kind is RESTORE:  # a restore that failed; no verdict otherwise
        counters.increment(session, counters.RESTORE, job.spec_name, status)


# -- following the runs ------------------------------------------------------------------


@dataclass(frozen=True)
class _Tracked:
    backup_id: int
    spec_name: str
    status: str | None
    workflow_id: str | None
    requested_at: datetime | None


def follow_runs(services: Services, part: Part = WHOLE, limit: int = 500) -> None:
    """Record every restore and verification that ended; settle starts with no answer."""
    for kind in KINDS:
        statement, shard = part.pick(_open_runs(kind.name), _open_runs(kind.name, sharded=True))
        with services.db.begin() as session:
            rows = [_Tracked(*row) for row in session.execute(statement, {"limit": limit, **shard})]
        if rows:
            _follow(services, kind, rows)


@cache
def _open_runs(
    kind_name: str, sharded: bool = False
) -> Select[int, str, str | None, str | None, datetime | None]:
    """follow_runs' read for one kind (and one shard's), built once: it runs twice a pass."""
    kind = next(kind for kind in KINDS if kind.name == kind_name)
    statement = (
        select(Backup.id, BackupSpec.name, kind.status, kind.workflow_id, kind.requested_at)
        .join(BackupSpec, BackupSpec.id == Backup.spec_id)
        .where(run_open(kind))
        .order_by(Backup.id)
        .limit(bindparam("limit"))
    )
    return statement.where(owned(Backup.spec_id)) if sharded else statement


# Whether follow_runs has a run to read (the pass's look-ahead, tick.py).
WORK = or_(*(exists().where(run_open(kind)) for kind in KINDS))


def _follow(services: Services, kind: Kind, rows: Sequence[_Tracked]) -> None:
    now = services.clock()
    names = sorted({row.spec_name for row in rows})
    open_runs = services.conductor.workflows_by_correlation(
        kind.workflow, names, include_closed=False
    )
    open_ids = {run.workflow_id for runs in open_runs.values() for run in runs}
    starting = [r for r in rows if r.status == STARTING and r.workflow_id is None]
    lapsed = [r for r in starting if r.requested_at is None or r.requested_at <= now - START_LAPSE]
    if lapsed:
        _settle_starts(services, kind, lapsed)
    for row in rows:
        if row.workflow_id is None or row.workflow_id in open_ids:
            continue
        try:
            run = services.conductor.get_workflow(row.workflow_id, include_tasks=False)
        except ConductorNotFound:
            with services.db.begin() as session:
                record_end(
                    session,
                    kind,
                    row.backup_id,
                    row.workflow_id,
                    WorkflowStatus.FAILED,
                    {},
                    f"the {kind.workflow} workflow is gone from Conductor",
                    now,
                )
            continue
        except (ConductorUnavailable, ConductorRefused) as exc:
            log.warning(
                "spec %s: %s %s not followed this pass: %s",
                row.spec_name,
                kind.workflow,
                row.workflow_id,
                exc,
            )
            continue
        if run.status.is_open:
            continue
        with services.db.begin() as session:
            record_end(
                session,
                kind,
                row.backup_id,
                row.workflow_id,
                run.status,
                run.output,
                run.reason,
                run.end_time or services.clock(),
            )


def _settle_starts(services: Services, kind: Kind, rows: Sequence[_Tracked]) -> None:
    """STARTING rows past the lapse: adopt the run their start created, else FAILED."""
    names = sorted({row.spec_name for row in rows})
    runs = services.conductor.workflows_by_correlation(kind.workflow, names, include_closed=True)
    for row in rows:
        found = _created_by(runs.get(row.spec_name, []), row)
        with services.db.begin() as session:
            query = update(Backup).where(
                Backup.id == row.backup_id,
                kind.status == STARTING,
                kind.workflow_id.is_(None),
            )
            if row.requested_at is not None:
                query = query.where(kind.requested_at == row.requested_at)
            if found is not None:
                session.execute(query.values({kind.status: RUNNING, kind.workflow_id: found}))
                log.info(
                    "spec %s: %s %s adopted for backup %s",
                    row.spec_name,
                    kind.workflow,
                    found,
                    row.backup_id,
                )
                continue
            details = f"the {kind.workflow} start was not confirmed and no run of it was found"
            column = Backup.restore_details if kind is RESTORE else Backup.verify_details
            failed = session.execute(
                query.values({kind.status: "FAILED", column: details}).returning(Backup.id)
            ).first()
            if failed is not None and kind is RESTORE:
                counters.increment(session, counters.RESTORE, row.spec_name, "FAILED")


def _created_by(runs: Sequence[WorkflowRun], row: _Tracked) -> str | None:
    wanted = None if row.requested_at is None else row.requested_at.isoformat()
    for run in runs:
        if run.input.get("backupId") == row.backup_id and run.input.get("requestedAt") == wanted:
            return run.workflow_id
    return None


def record_end(
    session: Session,
    kind: Kind,
    backup_id: int,
    workflow_id: str,
    status: WorkflowStatus,
    output: Mapping[str, Any],
    reason: str | None,
    ended_at: datetime,
) -> bool:
    """Record how a followed run ended, once (only while the row still follows that run).

    A verification that COMPLETED gives its verdict (`verified`: VERIFIED, else FAILED),
    its details and checkedAt. One that FAILED (the worker refused terminally: the file is
    missing; or every retry failed) is a FAILED verification, its reason the details. One
    TERMINATED or TIMED_OUT gave no verdict: verifyStatus stays as it was.
    """
    values: dict[Any, Any] = {kind.status: status.value}
    if kind is RESTORE:
        if status is WorkflowStatus.COMPLETED:
            restored_to = output.get("restoredTo")
            replaced = " (existing data replaced)" if output.get("replaced") is True else ""
            details = f"restored to {restored_to}{replaced}" if restored_to else "restored"
        else:
            details = f"{kind.workflow} {status.value}: {reason or 'no reason given'}"
        values[Backup.restore_details] = details[:DETAILS_CHARS]
    elif status is WorkflowStatus.COMPLETED:
        verified = output.get("verified") is True
        details = str(output.get("details") or ("verified" if verified else "not verified"))
        values |= {
            Backup.verify_status: VERIFIED if verified else VERIFY_FAILED,
            Backup.verify_details: details[:DETAILS_CHARS],
            Backup.last_verified_at: _instant(output.get("checkedAt")) or ended_at,
        }
    else:
        details = f"{kind.workflow} {status.value}: {reason or 'no reason given'}"
        values[Backup.verify_details] = details[:DETAILS_CHARS]
        if status is WorkflowStatus.FAILED:
            values |= {Backup.verify_status: VERIFY_FAILED, Backup.last_verified_at: ended_at}
    changed = session.execute(
        update(Backup)
        .where(
            Backup.id == backup_id,
            kind.workflow_id == workflow_id,
            kind.status == RUNNING,
        )
        .values(values)
        .returning(Backup.id, Backup.spec_id, Backup.verify_status)
    ).first()
    if changed is not None:
        _count_end(session, kind, changed[1], status, changed[2])
        log.info(
            "backup %s: %s %s ended %s",
            backup_id,
            kind.workflow,
            workflow_id,
            status.value,
            extra={"workflow_id": workflow_id},
        )
    return changed is not None


def _count_end(
    session: Session, kind: Kind, spec_id: int, status: WorkflowStatus, verdict: str
) -> None:
    """Count a recorded end in the same transaction: a restore by its status, a verification
    by its verdict (COMPLETED and FAILED runs give one; TERMINATED and TIMED_OUT do not)."""
    name = session.scalar(select(BackupSpec.name).where(BackupSpec.id == spec_id))
    if name is None:
        return
    if kind is RESTORE:
        counters.increment(session, counters.RESTORE, name, status.value)
    elif status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED):
        counters.increment(session, counters.VERIFY, name, verdict)


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None

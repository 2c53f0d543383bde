"""Backups marked REMOVING become remove_backup workflows; their outcomes become records.

REMOVING rows are the outbox: a row is claimed, its workflow started, the workflow id
stored. A removal that fails is tried again with a growing delay, never dropped; after a
few failures its status says REMOVE_FAILED, so operators see it (it is still retried).
EXPIRING rows (a removal delay) join the outbox once their expires_at has passed: they
become REMOVING in the claim's transaction, then follow the same path.

Each start carries `startBy`, a little before its claim lapses: remove_backup's start fence
(docs/scheduling.md, "The start fence") ends a start Conductor received later before its
`remove` task, so an attempt that stalled into its start never removes a backup that another
attempt took over. A fenced run removed nothing: its backup is handed back to the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session

from backtor.conductor.names import REMOVE_BACKUP
from backtor.conductor.payloads import WorkflowRun, WorkflowStatus, to_epoch_ms
from backtor.conductor.registration import DEFINITIONS
from backtor.core.errors import ConductorRefused, ConductorUnavailable
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.repository import finish_purge_if_done, mark_purge_removals
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.scheduling import notices
from backtor.scheduling.following import ended_runs
from backtor.scheduling.recording import REMOVAL_OPEN as OPEN
from backtor.scheduling.recording import record_removed
from backtor.scheduling.restores import no_open_run
from backtor.scheduling.shards import WHOLE, Part, owned
from backtor.scheduling.stalls import LOOKS_PER_PASS, due_a_look, repair_stalled

log = logging.getLogger(__name__)

CLAIM = timedelta(seconds=30)
# A start begins only while this much of its claim is left: more than the client's start
# timeout, so it has landed (or never will) before another attempt may look for it.
START_MARGIN = timedelta(seconds=6)
# The start fence: a start Conductor receives later than this before its claim lapses removes
# nothing. As for fires (backtor.scheduling.fires.FENCE_MARGIN): half the start margin, 3 s for
# the request in flight and Conductor's clock ahead, 3 s for its clock behind.
FENCE_MARGIN = timedelta(seconds=3)
FAILURES_SHOWN = 3
DUPLICATE_REASON = "a duplicate removal of a backup that has its own: terminated by Backtor"
# Core statements on the table: an UPDATE by id that matches no row (gone) is not an error.
_TABLE = cast(Table, Backup.__table__)
_BACKUP = _TABLE.c


def backoff(attempts: int, base_seconds: float = 30.0) -> timedelta:
    """`base_seconds` after the first failure, doubling, at most an hour."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 3600.0))


@dataclass(frozen=True)
class RemovalJob:
    backup_id: int
    spec_name: str
    data_id: str | None
    worker_config: str | None
    claimed_until: datetime | None = None
    # An earlier attempt may have started this removal (it died, stalled or had no clear
    # answer): the spec's closed removals are looked up too before a new start.
    retried: bool = False


def start_pending_removals(services: Services, part: Part = WHOLE, limit: int = 200) -> int:
    """Start remove_backup for REMOVING backups that have no workflow yet; returns how many."""
    now = services.clock()
    with services.db.begin() as session:
        jobs = _claim(session, now, limit, part)
    if not jobs:
        return 0
    version = DEFINITIONS.workflow_version(REMOVE_BACKUP)
    try:
        # A start whose answer was lost may have created the workflow: adopt it, never
        # start a second removal of the same backup.
        underway = _underway(services, jobs)
    except (ConductorUnavailable, ConductorRefused) as exc:
        log.warning("removals not started this pass: %s", exc)
        _release(services, jobs, str(exc))
        return 0

    def start(job: RemovalJob) -> tuple[RemovalJob, str | None, str | None]:
        if job.backup_id in underway:
            return job, underway[job.backup_id], None
        if job.claimed_until is not None and services.clock() > job.claimed_until - START_MARGIN:
            return job, None, "the claim lapsed before the start; tried again next pass"
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
                    **_start_by(job),
                },
            )
        except (ConductorUnavailable, ConductorRefused) as exc:
            # Not known to have started: a lost answer or a garbled 2xx (ConductorBadAnswer)
            # may hide a run. The error marks the job retried, so the next attempt looks
            # for it among the closed runs too before it starts one.
            return job, None, str(exc)[:500]
        return job, workflow_id, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(start, jobs))
    started = [(job, workflow_id) for job, workflow_id, _ in results if workflow_id is not None]
    failed = [(job, error or "") for job, workflow_id, error in results if workflow_id is None]
    with services.db.begin() as session:
        recorded = _record_started(session, started, services.clock())
        _release_each(session, failed)
    for job, workflow_id in started:
        if recorded.get(job.backup_id) == workflow_id:
            log.info(
                "spec %s: remove_backup %s started for backup %s",
                job.spec_name,
                workflow_id,
                job.backup_id,
                extra={"backup": job.spec_name, "workflow_id": workflow_id},
            )
        elif recorded.get(job.backup_id) is not None:  # another attempt's run is the one
            _stop_duplicate(services, job, workflow_id, recorded[job.backup_id])
    return sum(1 for job, workflow_id in started if recorded.get(job.backup_id) == workflow_id)


def _start_by(job: RemovalJob) -> dict[str, int]:
    """The fence's input: no start under this claim may remove anything once it lapses."""
    if job.claimed_until is None:
        return {}
    return {"startBy": to_epoch_ms(job.claimed_until - FENCE_MARGIN)}


def _record_started(
    session: Session, started: Sequence[tuple[RemovalJob, str]], now: datetime
) -> dict[int, str | None]:
    """Store each started (or adopted) workflow id on its backup, if it has none yet and no
    other attempt holds a live claim on it.

    An attempt that stalled past its claim may have a fenced run (it removed nothing): it
    must not take the row from the attempt that claimed it since, whose run would then be
    stopped as a duplicate. A run it started in time is not lost: that attempt finds it
    among the spec's runs and adopts it. Core UPDATEs by id, so a row that vanished (its spec
    purged meanwhile: the removal's own record_removal may have finished the purge) is
    simply not matched. Returns, per backup still open, the workflow its row now holds:
    another attempt's when this one lost the race, None when another claim holds it.
    """
    if not started:
        return {}
    session.execute(
        update(_TABLE)
        .where(
            _BACKUP.id == bindparam("b_id"),
            or_(*(_BACKUP.status == status for status in OPEN)),  # no IN in an executemany
            _BACKUP.remove_workflow_id.is_(None),
            or_(
                _BACKUP.claimed_until.is_(None),
                _BACKUP.claimed_until == bindparam("b_claim"),
                _BACKUP.claimed_until < bindparam("b_now"),
            ),
        )
        .values(remove_workflow_id=bindparam("b_workflow_id"), claimed_until=None),
        [
            {
                "b_id": job.backup_id,
                "b_workflow_id": workflow_id,
                "b_claim": job.claimed_until,
                "b_now": now,
            }
            for job, workflow_id in started
        ],
    )
    rows = session.execute(
        select(Backup.id, Backup.remove_workflow_id).where(
            Backup.id.in_([job.backup_id for job, _ in started]), Backup.status.in_(OPEN)
        )
    )
    return {row.id: row.remove_workflow_id for row in rows}


def _release_each(session: Session, failed: Sequence[tuple[RemovalJob, str]]) -> None:
    """Release the claims of removals that did not start, each only while still this one's."""
    if not failed:
        return
    session.execute(
        update(_TABLE)
        .where(_BACKUP.id == bindparam("b_id"), _BACKUP.claimed_until == bindparam("b_claim"))
        .values(claimed_until=None, last_error=bindparam("b_error")),
        [
            {"b_id": job.backup_id, "b_claim": job.claimed_until, "b_error": error[:500]}
            for job, error in failed
        ],
    )


def _stop_duplicate(
    services: Services, job: RemovalJob, workflow_id: str, recorded: str | None
) -> None:
    """Terminate a remove_backup this attempt started after another one's was recorded."""
    extra = {"backup": job.spec_name, "workflow_id": workflow_id}
    try:
        services.conductor.terminate_workflow(workflow_id, DUPLICATE_REASON)
    except ConductorRefused:
        pass  # gone, or ended already
    except ConductorUnavailable as exc:
        log.error(
            "spec %s: remove_backup %s duplicates %s for backup %s and could not be stopped: %s",
            job.spec_name,
            workflow_id,
            recorded,
            job.backup_id,
            exc,
            extra=extra,
        )
        return
    log.warning(
        "spec %s: remove_backup %s duplicated %s for backup %s: terminated",
        job.spec_name,
        workflow_id,
        recorded,
        job.backup_id,
        extra=extra,
    )


def _underway(services: Services, jobs: Sequence[RemovalJob]) -> dict[int, str]:
    """Removals already started for these backups, by backup: open ones, and for a retried
    job a COMPLETED one too (its answer was lost; starting another would remove twice).

    A run is this backup's when both its backupId and its dataId match: SQLite reuses the
    ids of deleted rows, so a spec purged and created again may see old ids again. A run
    that failed is not adopted: the removal is started again (it is retried anyway).
    """
    names = sorted({job.spec_name for job in jobs})
    found = services.conductor.workflows_by_correlation(REMOVE_BACKUP, names, include_closed=False)
    retried = sorted({job.spec_name for job in jobs if job.retried})
    closed = (
        services.conductor.workflows_by_correlation(REMOVE_BACKUP, retried, include_closed=True)
        if retried
        else {}
    )
    by_key: dict[tuple[str, object], RemovalJob] = {(j.spec_name, j.backup_id): j for j in jobs}
    underway: dict[int, str] = {}
    for name, runs in [*closed.items(), *found.items()]:  # open runs last: they win
        for run in runs:
            job = by_key.get((name, run.input.get("backupId")))
            if job is None or run.input.get("dataId") != job.data_id:
                continue
            if run.status.is_open or (
                job.retried
                and run.status is WorkflowStatus.COMPLETED
                and job.backup_id not in underway
            ):
                underway[job.backup_id] = run.workflow_id
    return underway


def _release(services: Services, jobs: Sequence[RemovalJob], error: str) -> None:
    """Release claims (each only while still this pass's); rows gone meanwhile are skipped."""
    with services.db.begin() as session:
        _release_each(session, [(job, error) for job in jobs])


def promote_expired(session: Session, now: datetime, limit: int, part: Part = WHOLE) -> int:
    """EXPIRING backups whose expires_at has passed become REMOVING (oldest first, at most
    `limit`); returns how many.

    One conditional UPDATE (still EXPIRING, not pinned, expired): a pin or a plan that
    keeps the row again, committed first, leaves it alone; one committed after finds it
    REMOVING and changes nothing (a pin is then refused). expires_at stays on the row: when
    its removal became due. The retention run that marked the row counted it under its cap.
    """
    expired = and_(
        Backup.status == BackupStatus.EXPIRING.value,
        Backup.expires_at <= now,
        Backup.pinned.is_(False),
    )
    statement, shard = part.pick(_EXPIRED, _EXPIRED_SHARDED)
    ids = list(session.scalars(statement, {"now": now, "limit": limit, **shard}))
    if not ids:
        return 0
    promoted = list(
        session.scalars(
            update(Backup)
            .where(Backup.id.in_(ids), expired)
            .values(status=BackupStatus.REMOVING.value, next_attempt_at=now)
            .returning(Backup.id)
        )
    )
    if promoted:
        log.info("%d EXPIRING backup(s) reached their expiresAt: removing", len(promoted))
    return len(promoted)


_NOW = bindparam("now", type_=UTCDateTime())
_EXPIRED_NOW = and_(
    Backup.status == BackupStatus.EXPIRING.value,
    Backup.expires_at <= _NOW,
    Backup.pinned.is_(False),
)
_EXPIRED = (
    select(Backup.id)
    .where(_EXPIRED_NOW)
    .order_by(Backup.expires_at, Backup.id)
    .limit(bindparam("limit"))
)
_EXPIRED_SHARDED = _EXPIRED.where(owned(Backup.spec_id))


def _claim(session: Session, now: datetime, limit: int, part: Part) -> list[RemovalJob]:
    promote_expired(session, now, limit, part)
    statement, shard = part.pick(_CANDIDATES, _CANDIDATES_SHARDED)
    candidates = session.execute(statement, {"now": now, "limit": limit, **shard}).all()
    if not candidates:
        return []
    # A claim left behind (its attempt died or stalled) or an error (a start with no clear
    # answer among them): an earlier attempt may have started the removal.
    retried = {
        row.id for row in candidates if row.claimed_until is not None or row.last_error is not None
    }
    claim_until = now + CLAIM
    claimed = list(
        session.scalars(
            update(Backup)
            .where(Backup.id.in_([row.id for row in candidates]), _claimable(now))
            .values(claimed_until=claim_until)
            .returning(Backup.id)
        )
    )
    rows = session.execute(
        select(Backup.id, BackupSpec.name, Backup.data_id, BackupSpec.worker_config)
        .join(BackupSpec, BackupSpec.id == Backup.spec_id)
        .where(Backup.id.in_(claimed))
    ).all()
    return [RemovalJob(*row, claimed_until=claim_until, retried=row.id in retried) for row in rows]


def _claimable(now: Any) -> ColumnElement[bool]:
    return and_(
        Backup.status.in_(OPEN),
        Backup.remove_workflow_id.is_(None),
        or_(Backup.next_attempt_at.is_(None), Backup.next_attempt_at <= now),
        or_(Backup.claimed_until.is_(None), Backup.claimed_until < now),
        # A restore or verification under way holds the removal off until it ends.
        no_open_run(),
    )


# _claim's read, built once: it runs every pass.
_CANDIDATES = (
    select(Backup.id, Backup.claimed_until, Backup.last_error)
    .where(_claimable(_NOW))
    .order_by(Backup.scheduled_at, Backup.id)
    .limit(bindparam("limit"))
)
_CANDIDATES_SHARDED = _CANDIDATES.where(owned(Backup.spec_id))


# The reads of promote_expired, reconcile_removals and advance_purges, built once: they
# run every pass.
def _followed(run: Any, condition: ColumnElement[bool]) -> Select[Any]:
    """Backups whose removal run `run` the pass follows until it ends, oldest first."""
    return (
        select(
            Backup.id,
            Backup.spec_id,
            Backup.status,
            run.label("remove_workflow_id"),
            BackupSpec.name,
            Backup.remove_attempts,
            Backup.remove_checked_at,
        )
        .join(BackupSpec, BackupSpec.id == Backup.spec_id)
        .where(condition)
        .order_by(Backup.id)
        .limit(bindparam("limit"))
    )


_STARTED = Backup.status.in_(OPEN) & Backup.remove_workflow_id.is_not(None)
# Recorded REMOVED by their run's own record_removal, that run's end not seen yet: its
# worker may have died after recording, before reporting (then it is repaired below).
_RECORDED: ColumnElement[bool] = Backup.removed_by_open_run.is_not(None)
_TRACKED = _followed(Backup.remove_workflow_id, _STARTED)
_RECORDED_BY_OPEN_RUN = _followed(Backup.removed_by_open_run, _RECORDED)
_RUN_SEEN_ENDED = (
    update(Backup)
    .where(Backup.id == bindparam("backup_id"))
    .values(removed_by_open_run=None)
    .execution_options(synchronize_session=False)
)
_TRACKED_SHARDED = _TRACKED.where(owned(Backup.spec_id))
_RECORDED_BY_OPEN_RUN_SHARDED = _RECORDED_BY_OPEN_RUN.where(owned(Backup.spec_id))
_PURGING = select(BackupSpec.id).where(BackupSpec.deleting.is_(True))

# Whether each stage has anything to read (the pass's look-ahead, tick.py): the same
# conditions as its reads, every shard's.
START_WORK = or_(exists().where(_EXPIRED_NOW), exists().where(_claimable(_NOW)))
FOLLOW_WORK = or_(exists().where(_STARTED), exists().where(_RECORDED))
PURGE_WORK = exists().where(BackupSpec.deleting.is_(True))
_PURGING_SHARDED = _PURGING.where(owned(BackupSpec.id))


def reconcile_removals(services: Services, part: Part = WHOLE, limit: int = 500) -> None:
    """Find how started removals ended, however they ended, and record it."""
    statement, shard = part.pick(_TRACKED, _TRACKED_SHARDED)
    recorded, _ = part.pick(_RECORDED_BY_OPEN_RUN, _RECORDED_BY_OPEN_RUN_SHARDED)
    with services.db.begin() as session:
        tracked = [
            *session.execute(statement, {"limit": limit, **shard}),
            # Read apart, so that open removals can never be crowded out by them.
            *session.execute(recorded, {"limit": limit, **shard}),
        ]
    if not tracked:
        return

    def unseen(row: Any, exc: Exception) -> None:
        log.warning(
            "spec %s: remove_backup %s not followed this pass: %s",
            row.name,
            row.remove_workflow_id,
            exc,
            extra={"backup": row.name, "workflow_id": row.remove_workflow_id},
        )

    running: list[tuple[Any, WorkflowRun]] = []
    for row, run in ended_runs(
        services.conductor,
        REMOVE_BACKUP,
        tracked,
        correlation_of=lambda row: row.name,
        workflow_id_of=lambda row: row.remove_workflow_id,
        gone="the remove_backup workflow is gone from Conductor",
        unseen=unseen,
        still_open=lambda row, run: running.append((row, run)),
    ):
        now = services.clock()
        status, reason = run.status, run.reason
        if row.status == BackupStatus.REMOVED.value:
            with services.db.begin() as session:  # its record_removal recorded it; run over
                session.execute(_RUN_SEEN_ENDED, {"backup_id": row.id})
                finish_purge_if_done(session, row.spec_id)
            continue
        if run.fenced:
            _hand_back(services, row.id, row.name, run, now)
            continue
        with services.db.begin() as session:
            if status is WorkflowStatus.COMPLETED:
                record_removed(session, row.id, now, open_run=None)
            else:
                _record_failure(
                    session,
                    row.id,
                    row.remove_workflow_id,
                    row.remove_attempts,
                    row.name,
                    status,
                    reason,
                    now + backoff(row.remove_attempts + 1, services.settings.removal_retry_seconds),
                )
                notices.removal_failed(
                    session,
                    row.name,
                    row.id,
                    row.remove_workflow_id,
                    row.remove_attempts + 1,
                    status,
                    reason,
                    now,
                )

    _repair_stalled(services, running, unseen)


def _repair_stalled(
    services: Services,
    running: Sequence[tuple[Any, WorkflowRun]],
    unseen: Callable[[Any, Exception], None],
) -> None:
    """Look inside long-running removals for a record_removal whose worker died, and do it.

    Conductor's sweeper was seen to leave such a task IN_PROGRESS for minutes: the data is
    gone, the backup stays REMOVING, a purge waits (backtor.scheduling.stalls).
    """
    now = services.clock()
    due = [
        (row, run) for row, run in running if due_a_look(run.start_time, row.remove_checked_at, now)
    ]
    for row, run in due[:LOOKS_PER_PASS]:
        try:
            workflow = services.conductor.get_workflow(run.workflow_id, include_tasks=True)
            with services.db.begin() as session:
                session.execute(_LOOKED_INSIDE, {"backup_id": row.id, "now": now})
            repair_stalled(services, workflow)
        except (ConductorUnavailable, ConductorRefused) as exc:
            unseen(row, exc)


_LOOKED_INSIDE = (
    update(Backup)
    .where(Backup.id == bindparam("backup_id"))
    .values(remove_checked_at=bindparam("now", type_=UTCDateTime()))
    .execution_options(synchronize_session=False)
)


def _hand_back(
    services: Services, backup_id: int, spec_name: str, run: WorkflowRun, now: datetime
) -> None:
    """The backup's recorded run was fenced (its start reached Conductor after its startBy):
    it removed nothing, so the backup is back in the outbox, due at once, neither removed nor
    failed (no attempt counted, no notice). Only while the row still follows that run. The
    error it keeps makes the next claim look among closed runs too before it starts one."""
    with services.db.begin() as session:
        changed = session.execute(
            update(Backup)
            .where(
                Backup.id == backup_id,
                Backup.status.in_(OPEN),
                Backup.remove_workflow_id == run.workflow_id,
            )
            .values(
                remove_workflow_id=None,
                claimed_until=None,
                next_attempt_at=now,
                last_error=(run.reason or "remove_backup fenced at its start")[:2000],
            )
            .returning(Backup.id)
        ).first()
    if changed is not None:
        log.warning(
            "spec %s: remove_backup %s of backup %s was fenced (%s); it is removed again",
            spec_name,
            run.workflow_id,
            backup_id,
            run.reason,
            extra={"backup": spec_name, "workflow_id": run.workflow_id},
        )


def _record_failure(
    session: Session,
    backup_id: int,
    workflow_id: str,
    attempts: int,
    spec_name: str,
    status: str,
    reason: object,
    retry_at: datetime,
) -> None:
    """Count a failed removal once: only while the row still follows that run (a second
    pass that saw it end too, or a row gone with its spec, changes nothing)."""
    attempts += 1
    changed = session.execute(
        update(Backup)
        .where(
            Backup.id == backup_id,
            Backup.status.in_(OPEN),
            Backup.remove_workflow_id == workflow_id,
        )
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
        .returning(Backup.id)
    ).first()
    if changed is None:
        return
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


def advance_purges(
    session: Session, now: datetime, max_removals: int, *, part: Part = WHOLE
) -> None:
    """For specs being deleted (DELETE ?purge=true): mark their backups for removal."""
    statement, shard = part.pick(_PURGING, _PURGING_SHARDED)
    spec_ids = list(session.scalars(statement, shard))
    for spec_id in spec_ids:
        mark_purge_removals(session, spec_id, now, max_removals)
        finish_purge_if_done(session, spec_id)

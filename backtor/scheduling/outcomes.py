"""How each create_backup ended, recorded however it ended.

COMPLETED runs were recorded by apply_retention already (this only makes sure). FAILED,
TIMED_OUT and TERMINATED runs get a record with no data, unless their `backup` task did
produce data, which is then recorded as a backup like any other: nothing stored is orphaned.
A run retried or rerun from Conductor's UI is followed again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, String, bindparam, exists, or_, select, update

from backtor.conductor.names import BACKUP, CREATE_BACKUP
from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowRun, WorkflowStatus
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable
from backtor.core.schedule import TERMINATED_BY_OVERLAP
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus, Fire, FireStatus
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.scheduling.recording import (
    TakenBackup,
    apply_plan,
    parse_row_counts,
    parse_size,
    record_failed,
    record_taken,
    recorded_checksum,
)
from backtor.scheduling.shards import WHOLE, Part, owned
from backtor.scheduling.stalls import LOOKS_PER_PASS, due_a_look, repair_stalled

log = logging.getLogger(__name__)

# Failed runs are watched this long for a retry from Conductor's UI or API.
RETRY_WATCH = timedelta(days=7)
TIMEOUT_REASON = "timeoutSeconds exceeded: terminated by Backtor"
# Backtor terminates an overdue run this long after the storage worker's own deadline.
TIMEOUT_GRACE = timedelta(seconds=30)
# backtor_workflow_total counts each run under its Conductor status and under one of these.
_SUCCESS_LABEL = {True: "success", False: "error"}


def reconcile_fires(services: Services, part: Part = WHOLE, limit: int = 1000) -> None:
    """Follow started create_backup runs until they end, and failed ones for a retry.

    Runs still open are read apart from failed ones under watch, so a week of failures
    can never crowd the open runs out of the batch (they would go unrecorded). A Conductor
    error on one run is logged and the others are still followed.
    """
    now = services.clock()
    open_runs_of, shard = part.pick(_OPEN_RUNS, _OPEN_RUNS_SHARDED)
    watched_of, _ = part.pick(_WATCHED_RUNS, _WATCHED_RUNS_SHARDED)
    with services.db.begin() as session:
        open_rows = session.execute(open_runs_of, {"limit": limit, **shard}).all()
        watched = session.execute(
            watched_of, {"limit": limit, "since": now - RETRY_WATCH, **shard}
        ).all()
    if not open_rows and not watched:
        return
    names = sorted({row.name for row in (*open_rows, *watched)})
    open_runs = {
        w.workflow_id
        for runs in services.conductor.workflows_by_correlation(
            CREATE_BACKUP, names, include_closed=False
        ).values()
        for w in runs
        if w.status.is_open
    }
    for row in watched:
        if row.workflow_id in open_runs:
            _reopen(services, row.id, row.name, row.workflow_id)
    looks = 0
    for row in open_rows:
        try:
            running = row.workflow_id in open_runs
            if (
                running
                and looks < LOOKS_PER_PASS
                and due_a_look(row.started_at, row.checked_at, now)
            ):
                looks += 1
                running = not _repaired(services, row, now)
            _follow(services, row, running, now)
        except (ConductorUnavailable, ConductorRefused) as exc:
            log.warning(
                "spec %s: create_backup %s not followed this pass: %s",
                row.name,
                row.workflow_id,
                exc,
                extra={"backup": row.name, "workflow_id": row.workflow_id},
            )


def _repaired(services: Services, row: Any, now: datetime) -> bool:
    """Look inside a long-running run; repair it when an own task's worker died."""
    workflow = services.conductor.get_workflow(row.workflow_id, include_tasks=True)
    with services.db.begin() as session:
        session.execute(update(Fire).where(Fire.id == row.id).values(checked_at=now))
    return repair_stalled(services, workflow)


def _tracked(
    condition: Any, order: Any
) -> Select[
    int, str | None, str | None, datetime | None, datetime, datetime | None, str, int | None
]:
    """Started runs that meet `condition`, built once (reconcile_fires runs every pass)."""
    return (
        select(
            Fire.id,
            Fire.workflow_id,
            Fire.outcome,
            Fire.started_at,
            Fire.scheduled_at,
            Fire.checked_at,
            BackupSpec.name,
            BackupSpec.timeout_seconds,
        )
        .join(BackupSpec, BackupSpec.id == Fire.spec_id)
        .where(Fire.status == FireStatus.STARTED.value, condition)
        .order_by(order, Fire.id)
        .limit(bindparam("limit"))
    )


_OPEN: ColumnElement[bool] = Fire.outcome.is_(None)
_WATCHED: ColumnElement[bool] = Fire.outcome.in_(("FAILED", "TIMED_OUT", "TERMINATED")) & (
    Fire.finished_at > bindparam("since", type_=UTCDateTime())
)
_OPEN_RUNS = _tracked(_OPEN, Fire.started_at)
_WATCHED_RUNS = _tracked(_WATCHED, Fire.finished_at.desc())
# Whether reconcile_fires has a run to read (the pass's look-ahead, tick.py; `since` is
# now - RETRY_WATCH): the same conditions as its two reads, every shard's.
WORK = exists().where(Fire.status == FireStatus.STARTED.value, or_(_OPEN, _WATCHED))
_OPEN_RUNS_SHARDED = _OPEN_RUNS.where(owned(Fire.spec_id))
_WATCHED_RUNS_SHARDED = _WATCHED_RUNS.where(owned(Fire.spec_id))


def _follow(services: Services, row: Any, running: bool, now: datetime) -> None:
    if running:
        _enforce_timeout(services, row, now)
        return
    try:
        workflow = services.conductor.get_workflow(row.workflow_id, include_tasks=True)
    except ConductorNotFound:
        workflow = WorkflowRun(
            workflow_id=row.workflow_id,
            name=CREATE_BACKUP,
            status=WorkflowStatus.TERMINATED,
            reason="the workflow is gone from Conductor",
        )
    if workflow.status.is_open:  # PAUSED: the open lookup lists RUNNING runs only
        _enforce_timeout(services, row, now)
        return
    record_outcome(services, row.id, row.name, row.workflow_id, row.scheduled_at, workflow)


def _enforce_timeout(services: Services, row: Any, now: datetime) -> None:
    """Terminate a run whose `backup` task outlived timeoutSeconds, counted as the worker does.

    The storage worker counts timeoutSeconds from its poll, not from the workflow's start,
    and stops (cleaning up) when it runs out. Backtor terminates only TIMEOUT_GRACE after
    that, so a backup that finished in time is never cut off with its data unrecorded.
    """
    if not _overdue(row.timeout_seconds, row.started_at, now):
        return
    workflow = services.conductor.get_workflow(row.workflow_id, include_tasks=True)
    backups = workflow.tasks_of_type(BACKUP)
    if not workflow.status.is_open or (backups and backups[-1].status.is_open is False):
        return  # ended meanwhile, or past the backup task: followed as usual
    began = backups[-1].start_time if backups else None
    if not _overdue(row.timeout_seconds, began or row.started_at, now - TIMEOUT_GRACE):
        return
    services.conductor.terminate_workflow(row.workflow_id, TIMEOUT_REASON)
    log.warning(
        "spec %s: create_backup %s outlived timeoutSeconds=%s; terminated",
        row.name,
        row.workflow_id,
        row.timeout_seconds,
        extra={"backup": row.name, "workflow_id": row.workflow_id},
    )


def _overdue(timeout_seconds: int | None, started_at: datetime | None, now: datetime) -> bool:
    return bool(
        timeout_seconds and started_at and now - started_at > timedelta(seconds=timeout_seconds)
    )


def _reopen(services: Services, fire_id: int, spec_name: str, workflow_id: str) -> None:
    """A failed run runs again (retried from Conductor): follow it until it ends."""
    with services.db.begin() as session:
        session.execute(
            update(Fire).where(Fire.id == fire_id).values(outcome=None, finished_at=None)
        )
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.name == spec_name)
            .values(running_create_workflow_id=workflow_id)
        )
    log.info(
        "spec %s: create_backup %s runs again (retried)",
        spec_name,
        workflow_id,
        extra={"backup": spec_name, "workflow_id": workflow_id},
    )


def _fire_again(services: Services, fire_id: int, spec_name: str, run: WorkflowRun) -> None:
    """The fire's run was fenced (its start reached Conductor after the claim's startBy):
    it took no backup, so the fire is PENDING again, under its grace like any fire left
    PENDING. No other attempt can have started it: this run was the fire's recorded one,
    written under the claim (a later attempt's write would have replaced it)."""
    with services.db.begin() as session:
        session.execute(
            update(Fire)
            .where(
                Fire.id == fire_id,
                Fire.status == FireStatus.STARTED.value,
                Fire.workflow_id == run.workflow_id,
            )
            .values(
                status=FireStatus.PENDING.value,
                workflow_id=None,
                started_at=None,
                claimed_until=None,
                checked_at=None,
                error=run.reason,
            )
        )
        session.execute(
            update(BackupSpec)
            .where(
                BackupSpec.name == spec_name,
                BackupSpec.running_create_workflow_id == run.workflow_id,
            )
            .values(running_create_workflow_id=None)
        )
    log.warning(
        "spec %s: create_backup %s was fenced (%s); its fire is PENDING again",
        spec_name,
        run.workflow_id,
        run.reason,
        extra={"backup": spec_name, "workflow_id": run.workflow_id},
    )


def record_outcome(
    services: Services,
    fire_id: int,
    spec_name: str,
    workflow_id: str,
    scheduled_at: datetime,
    workflow: WorkflowRun,
) -> None:
    if workflow.fenced:
        _fire_again(services, fire_id, spec_name, workflow)
        return
    status = workflow.status.value
    now = services.clock()
    with services.db.begin() as session:
        spec = session.scalar(_SPEC_NAMED, {"name": spec_name})
        if spec is None:
            return
        recorded_data = False
        for task in workflow.tasks:
            taken = _taken_from_task(task, spec_name, workflow_id, scheduled_at)
            if taken is not None:
                record_taken(session, spec, taken)
                recorded_data = True
        if (
            status != "COMPLETED"
            and not _has_data(session, spec.id, workflow_id)
            and not recorded_data
        ):
            reason = workflow.reason
            timed_out = status == "TIMED_OUT" or reason == TIMEOUT_REASON
            record_failed(
                session,
                spec,
                workflow_id=workflow_id,
                status=BackupStatus.TIMED_OUT if timed_out else BackupStatus.FAILED,
                scheduled_at=scheduled_at,
                start_time=workflow.start_time,
                end_time=workflow.end_time or now,
                error=f"create_backup {status}: {reason or 'no reason given'}",
                now=services.clock(),  # in the transaction: an auto-pause's own moment
                # overlapPolicy terminateOther ended it for a newer fire: not a failure.
                counts_as_failure=not (reason or "").startswith(TERMINATED_BY_OVERLAP),
            )
        if recorded_data and status != "COMPLETED":
            apply_plan(session, spec, now, services.settings.max_removals_per_run)
        session.execute(_FIRE_ENDED, {"fire_id": fire_id, "outcome": status, "at": now})
        succeeded = status == "COMPLETED"
        counters.increment(session, counters.WORKFLOW, spec_name, status)
        counters.increment(session, counters.WORKFLOW, spec_name, _SUCCESS_LABEL[succeeded])
        if not succeeded:
            counters.increment(session, counters.WARN, spec_name, "error")
        if spec.running_create_workflow_id == workflow_id:
            spec.running_create_workflow_id = None
    log.info(
        "spec %s: create_backup %s ended %s",
        spec_name,
        workflow_id,
        status,
        extra={"backup": spec_name, "workflow_id": workflow_id},
    )


def record_stray_data(
    services: Services, spec_name: str, scheduled_at: datetime, workflow: WorkflowRun
) -> int:
    """Record the data a create_backup no fire follows took (a duplicate Backtor stopped).

    Only completed `backup` tasks count: such a run gets no no-data record, as it was never
    the fire's run. Returns how many backups were recorded.
    """
    taken = [
        found
        for task in workflow.tasks
        if (found := _taken_from_task(task, spec_name, workflow.workflow_id, scheduled_at))
    ]
    if not taken:
        return 0
    with services.db.begin() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == spec_name))
        if spec is None:
            log.error(
                "create_backup %s took %s for spec %s, which no longer exists: remove it by hand",
                workflow.workflow_id,
                ", ".join(found.data_id for found in taken),
                spec_name,
                extra={"backup": spec_name, "workflow_id": workflow.workflow_id},
            )
            return 0
        for found in taken:
            record_taken(session, spec, found)
        apply_plan(session, spec, services.clock(), services.settings.max_removals_per_run)
    return len(taken)


def _has_data(session: Any, spec_id: int, workflow_id: str) -> bool:
    return session.scalar(_WITH_DATA, {"spec_id": spec_id, "run": workflow_id}) is not None


# record_outcome's statements, built once: they run for every run that ends. No Fire
# object is loaded in its transaction, so the UPDATE leaves the session alone.
_SPEC_NAMED = select(BackupSpec).where(BackupSpec.name == bindparam("name"))
_FIRE_ENDED = (
    update(Fire)
    .where(Fire.id == bindparam("fire_id"))
    .values(
        outcome=bindparam("outcome", type_=String()),
        finished_at=bindparam("at", type_=UTCDateTime()),
    )
    .execution_options(synchronize_session=False)
)
_WITH_DATA = select(Backup.id).where(
    Backup.spec_id == bindparam("spec_id"),
    Backup.create_workflow_id == bindparam("run"),
    Backup.backup_task_id.is_not(None),
)


def _taken_from_task(
    task: TaskRun, spec_name: str, workflow_id: str, scheduled_at: datetime
) -> TakenBackup | None:
    """A `backup` task execution that completed with a dataId, as a TakenBackup."""
    if task.task_type != BACKUP or task.status is not TaskStatus.COMPLETED:
        return None
    data_id = task.output.get("dataId")
    if data_id in (None, ""):
        return None
    return TakenBackup(
        spec_name=spec_name,
        task_id=task.task_id,
        workflow_id=workflow_id,
        data_id=str(data_id),
        size_mb=parse_size(task.output.get("dataSizeMB")),
        scheduled_at=scheduled_at,
        start_time=task.start_time,
        end_time=task.end_time,
        checksum=recorded_checksum(task.output.get("checksum")),
        row_counts=parse_row_counts(task.output.get("rowCounts")),
    )

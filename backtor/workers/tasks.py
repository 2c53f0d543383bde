"""Backtor's own Conductor tasks: thin adapters from a polled Task to the scheduling code.

They are idempotent: Conductor may deliver a task again after a worker died, and running
one twice records nothing twice.
"""

# No `from __future__ import annotations` here: conductor-python reads the `Task`
# annotation at run time to decide whether to pass the whole task.

import logging
import math
import time
from datetime import datetime

from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from sqlalchemy import select

from backtor.db.models import BackupSpec
from backtor.scheduling.outcomes import from_epoch_ms, parse_size
from backtor.scheduling.recording import TakenBackup, apply_plan, record_taken
from backtor.scheduling.removals import record_removed, start_pending_removals
from backtor.scheduling.tick import run_tick
from backtor.workers.process import (
    in_flight,
    process_services,
    stopping,
    wait,
)
from backtor.workers.results import handed_back as _handed_back
from backtor.workers.results import result as _result
from backtor.workers.results import terminal as _terminal

log = logging.getLogger(__name__)

# The tick holds its task this long at most, sleeping to the exact due time when it is near.
HOLD_SECONDS = 3.0
# Longest wait between ticks: spec changes are seen within it.
MAX_CALLBACK_SECONDS = 15


def evaluate_schedule(task: Task) -> TaskResult:
    """One or more scheduler passes, then IN_PROGRESS until the next due fire."""
    with in_flight():
        if stopping():
            return _handed_back(task)
        services = process_services()
        deadline = time.monotonic() + HOLD_SECONDS
        started = skipped = 0
        while True:
            report = run_tick(services)
            started += report.started
            skipped += report.skipped
            now = services.clock()
            wait_for = (
                (report.next_due - now).total_seconds()
                if report.next_due is not None
                else float(MAX_CALLBACK_SECONDS)
            )
            if not report.healthy:
                wait_for = max(wait_for, 1.0)  # Conductor is unwell: no hot loop
            if stopping() or time.monotonic() + max(wait_for, 0.0) > deadline:
                break
            if wait_for > 0 and wait(wait_for):
                break
        # Stopping: hand the tick back at once, for another worker to take.
        callback = 0 if stopping() else max(1, min(MAX_CALLBACK_SECONDS, math.floor(wait_for) - 1))
        result = _result(
            task,
            TaskResultStatus.IN_PROGRESS,
            {
                "lastTickAt": now.isoformat(),
                "started": started,
                "skipped": skipped,
                "nextDue": report.next_due.isoformat() if report.next_due else None,
                "healthy": report.healthy,
            },
        )
        result.callback_after_seconds = callback
        return result


def apply_retention(task: Task) -> TaskResult:
    """Record the backup the `backup` task just took, then apply the spec's retention."""
    with in_flight():
        services = process_services()
        data = task.input_data or {}
        name = str(data.get("backupName") or "")
        data_id = data.get("dataId")
        if data_id in (None, ""):
            return _terminal(task, "the backup task returned no dataId")
        try:
            scheduled_at = datetime.fromisoformat(str(data.get("scheduledTime")))
        except ValueError:
            return _terminal(task, f"scheduledTime {data.get('scheduledTime')!r} is not ISO-8601")
        taken = TakenBackup(
            spec_name=name,
            task_id=str(data.get("backupTaskId")),
            workflow_id=str(data.get("workflowId") or task.workflow_instance_id),
            data_id=str(data_id),
            size_mb=parse_size(data.get("dataSizeMB")),
            scheduled_at=scheduled_at,
            start_time=from_epoch_ms(data.get("backupStartTime")),
            end_time=from_epoch_ms(data.get("backupEndTime")),
        )
        with services.db.begin() as session:
            spec = session.scalar(select(BackupSpec).where(BackupSpec.name == name))
            if spec is None:
                log.error(
                    "backup %s taken for spec %s, which no longer exists: remove it by hand",
                    taken.data_id,
                    name,
                    extra={"backup": name, "workflow_id": taken.workflow_id},
                )
                return _terminal(task, f"spec {name!r} no longer exists; dataId {taken.data_id}")
            backup = record_taken(session, spec, taken)
            removals = apply_plan(
                session, spec, services.clock(), services.settings.max_removals_per_run
            )
            backup_id = backup.id
        start_pending_removals(services)
        return _result(
            task, TaskResultStatus.COMPLETED, {"backupId": backup_id, "removals": len(removals)}
        )


def record_removal(task: Task) -> TaskResult:
    with in_flight():
        services = process_services()
        data = task.input_data or {}
        try:
            backup_id = int(data.get("backupId"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return _terminal(task, f"backupId {data.get('backupId')!r} is not a number")
        with services.db.begin() as session:
            removed = record_removed(session, backup_id, services.clock())
        log.info(
            "backup %s removed (%s)",
            backup_id,
            "recorded" if removed else "already recorded",
            extra={"backup": data.get("backupName"), "workflow_id": task.workflow_instance_id},
        )
        return _result(task, TaskResultStatus.COMPLETED, {"backupId": backup_id})

"""Backtor's own Conductor tasks: thin adapters from a polled task to the scheduling code.

Each task has a handler (TaskRun -> TaskOutcome) for conductor-python's runners, and a
function that takes the process's services explicitly, which the simulation calls. They are
idempotent: Conductor may deliver a task again after a worker died, and running one twice
records nothing twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from backtor.conductor.payloads import TaskRun, from_epoch_ms
from backtor.conductor.results import TaskOutcome, completed, handed_back, in_progress, terminal
from backtor.db.models import BackupSpec
from backtor.runtime.services import Services
from backtor.scheduling.recording import TakenBackup, apply_plan, parse_size, record_taken
from backtor.scheduling.removals import record_removed, start_pending_removals
from backtor.scheduling.tick import PROCESS_HOLDER, run_tick
from backtor.workers.process import in_flight, process_services, stopping, wait

log = logging.getLogger(__name__)

# The tick holds its task this long at most, sleeping to the exact due time when it is near.
HOLD_SECONDS = 2.0
# Longest wait between ticks: spec changes are seen within it, and the heartbeat it leaves
# stays well inside the watchdog's stall rule (backtor.scheduling.watchdog.STALL).
MAX_CALLBACK_SECONDS = 4


def evaluate_schedule(task: TaskRun) -> TaskOutcome:
    with in_flight():
        if stopping():
            return handed_back()
        return schedule_passes(process_services(), wait=wait, stopping=stopping)


def schedule_passes(
    services: Services,
    *,
    wait: Callable[[float], bool],
    stopping: Callable[[], bool],
    hold_seconds: float = HOLD_SECONDS,
    holder: str = PROCESS_HOLDER,
) -> TaskOutcome:
    """One or more scheduler passes, then IN_PROGRESS until the next due fire.

    `wait(seconds)` sleeps (True: stop now); the simulation passes one that moves its clock.
    """
    deadline = services.clock() + timedelta(seconds=hold_seconds)
    started = skipped = 0
    while True:
        report = run_tick(services, holder)
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
        if stopping() or now + timedelta(seconds=max(wait_for, 0.0)) > deadline:
            break
        if wait_for > 0 and wait(wait_for):
            break
    # Stopping: hand the tick back at once, for another worker to take.
    callback = 0 if stopping() else max(1, min(MAX_CALLBACK_SECONDS, math.floor(wait_for) - 1))
    output = {
        "lastTickAt": now.isoformat(),
        "started": started,
        "skipped": skipped,
        "nextDue": report.next_due.isoformat() if report.next_due else None,
        "healthy": report.healthy,
    }
    return in_progress(output, callback)


def apply_retention(task: TaskRun) -> TaskOutcome:
    with in_flight():
        return record_backup(process_services(), task.input, task.workflow_id)


def record_backup(services: Services, data: Mapping[str, Any], workflow_id: str) -> TaskOutcome:
    """Record the backup the `backup` task just took, then apply the spec's retention."""
    name = str(data.get("backupName") or "")
    data_id = data.get("dataId")
    if data_id in (None, ""):
        return terminal("the backup task returned no dataId")
    try:
        scheduled_at = datetime.fromisoformat(str(data.get("scheduledTime")))
    except ValueError:
        return terminal(f"scheduledTime {data.get('scheduledTime')!r} is not ISO-8601")
    taken = TakenBackup(
        spec_name=name,
        task_id=str(data.get("backupTaskId")),
        workflow_id=str(data.get("workflowId") or workflow_id),
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
            return terminal(f"spec {name!r} no longer exists; dataId {taken.data_id}")
        backup = record_taken(session, spec, taken)
        removals = apply_plan(
            session, spec, services.clock(), services.settings.max_removals_per_run
        )
        backup_id = backup.id
    start_pending_removals(services)
    return completed({"backupId": backup_id, "removals": len(removals)})


def record_removal(task: TaskRun) -> TaskOutcome:
    with in_flight():
        return record_removed_backup(process_services(), task.input, task.workflow_id)


def record_removed_backup(
    services: Services, data: Mapping[str, Any], workflow_id: str
) -> TaskOutcome:
    try:
        backup_id = int(data.get("backupId"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return terminal(f"backupId {data.get('backupId')!r} is not a number")
    with services.db.begin() as session:
        removed = record_removed(session, backup_id, services.clock())
    log.info(
        "backup %s removed (%s)",
        backup_id,
        "recorded" if removed else "already recorded",
        extra={"backup": data.get("backupName"), "workflow_id": workflow_id},
    )
    return completed({"backupId": backup_id})

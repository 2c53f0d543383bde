"""Backtor's own tasks held by a worker that died: found from their update time, repaired.

Conductor requeues such a task only when its sweeper comes by, and it was seen not to for
many minutes. Backtor does not wait: an own task (apply_retention, record_removal) still
IN_PROGRESS well past its response timeout is done here, from its input (the `backup`
task's output is in it), and reported COMPLETED on the dead worker's behalf. The tick's own
task is the watchdog's (backtor.scheduling.watchdog).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from backtor.conductor.names import APPLY_RETENTION, RECORD_REMOVAL
from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowRun
from backtor.conductor.results import TaskOutcome
from backtor.runtime.services import Services
from backtor.scheduling.handlers import record_backup, record_removed_backup

log = logging.getLogger(__name__)

# Past its response timeout by this much, a task's worker is taken for dead.
STALL_MARGIN = timedelta(seconds=2)
# A run younger than this cannot hold a stalled own task yet (its response timeout, 8 s,
# plus the margin): not worth a look inside.
LOOK_AFTER = timedelta(seconds=10)
# Runs open longer than LOOK_AFTER are looked inside (each at most every LOOK_AFTER, this
# many of create_backup and as many of remove_backup a pass; a look is a get_workflow).
LOOKS_PER_PASS = 20
# The response timeout assumed when Conductor does not report one.
DEFAULT_RESPONSE_TIMEOUT = timedelta(seconds=8)
REPAIR_WORKER_ID = "backtor-stall-repair"

Handler = Callable[[Services, Mapping[str, Any], str], TaskOutcome]
HANDLERS: Mapping[str, Handler] = {
    APPLY_RETENTION: record_backup,
    RECORD_REMOVAL: record_removed_backup,
}


def due_a_look(started_at: datetime | None, checked_at: datetime | None, now: datetime) -> bool:
    """A run older than a stall could be, not looked inside for a while."""
    return bool(
        started_at is not None
        and now - started_at > LOOK_AFTER
        and (checked_at is None or now - checked_at > LOOK_AFTER)
    )


def stalled_own_task(workflow: WorkflowRun, now: datetime) -> TaskRun | None:
    """The run's one open task, when it is Backtor's own and its worker is gone."""
    open_tasks = [task for task in workflow.tasks if task.status.is_open]
    if len(open_tasks) != 1:
        return None
    (task,) = open_tasks
    if task.task_type not in HANDLERS or task.status is not TaskStatus.IN_PROGRESS:
        return None
    last_seen = task.update_time or task.start_time
    if last_seen is None:
        return None
    timeout = (
        timedelta(seconds=task.response_timeout_seconds)
        if task.response_timeout_seconds > 0
        else DEFAULT_RESPONSE_TIMEOUT
    )
    return task if now - last_seen > timeout + STALL_MARGIN else None


def dead_run(services: Services, run: WorkflowRun) -> bool:
    """An open run whose only open task was a dead worker's own task (now repaired).

    Such a run must not hold its spec as "running": the backup is taken and recorded.
    """
    now = services.clock()
    if not run.status.is_open or run.start_time is None or now - run.start_time <= LOOK_AFTER:
        return False
    return repair_stalled(services, services.conductor.get_workflow(run.workflow_id))


def repair_stalled(services: Services, workflow: WorkflowRun) -> bool:
    """Do a dead worker's own task and report it; True when the run was repaired."""
    task = stalled_own_task(workflow, services.clock())
    if task is None:
        return False
    outcome = HANDLERS[task.task_type](services, task.input, workflow.workflow_id)
    services.conductor.update_task(
        task,
        outcome.status,
        outcome.output,
        reason=outcome.reason,
        worker_id=REPAIR_WORKER_ID,
    )
    log.warning(
        "%s %s: its %s task was held by a worker that is gone (last seen %s); done by Backtor",
        workflow.name,
        workflow.workflow_id,
        task.task_type,
        (task.update_time or task.start_time or services.clock()).isoformat(),
        extra={"workflow_id": workflow.workflow_id},
    )
    return True

"""Backtor's own Conductor tasks: thin adapters from a polled task to the scheduling code.

Each task has a handler (TaskRun -> TaskOutcome) for conductor-python's runners, and a
function that takes the process's services explicitly, which the simulation calls. They are
idempotent: Conductor may deliver a task again after a worker died, and running one twice
records nothing twice.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from backtor.conductor.payloads import TaskRun
from backtor.conductor.results import TaskOutcome, completed, handed_back, in_progress
from backtor.runtime.services import Services
from backtor.scheduling.handlers import record_backup, record_removed_backup
from backtor.scheduling.notices import deliver
from backtor.scheduling.tick import PASS_BUDGET, PROCESS_HOLDER, TickReport, run_tick
from backtor.workers.process import in_flight, process_services, stopping, wait

log = logging.getLogger(__name__)

# The tick holds its task this long at most, sleeping to the exact due time when it is near.
HOLD_SECONDS = 2.0
# Longest wait between ticks: spec changes are seen within it, and the heartbeat it leaves
# stays well inside the watchdog's stall rule (backtor.scheduling.watchdog.STALL).
MAX_CALLBACK_SECONDS = 4
# The least budget a pass gets however long its task was held before it.
MIN_BUDGET = timedelta(seconds=1)


def evaluate_schedule(task: TaskRun) -> TaskOutcome:
    with in_flight():
        if stopping():
            return handed_back()
        return schedule_passes(
            process_services(),
            wait=wait,
            stopping=stopping,
            holder=execution_holder(),
            shard=shard_of(task.input),
        )


def shard_of(task_input: Mapping[str, Any]) -> int:
    """The tick shard named in the task's input; absent (a tick started before shards): 0."""
    value = task_input.get("shard")
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        log.error("evaluate_schedule: shard %r is no shard number; acting as shard 0", value)
        return 0


def execution_holder() -> str:
    """The pass lease's holder for one execution: `host:pid:nonce`, a fresh nonce each time.

    Under thread isolation a pass stuck past its slot (backtor.workers.threads) may still be
    running when the next execution starts in the same process: a holder of its own keeps
    the stuck one fenced out by the lease, as another process's would be.
    """
    host_and_pid = PROCESS_HOLDER.rsplit(":", 1)[0]
    return f"{host_and_pid}:{uuid.uuid4().hex[:6]}"


def schedule_passes(
    services: Services,
    *,
    wait: Callable[[float], bool],
    stopping: Callable[[], bool],
    hold_seconds: float = HOLD_SECONDS,
    holder: str = PROCESS_HOLDER,
    shard: int = 0,
) -> TaskOutcome:
    """One or more scheduler passes, then IN_PROGRESS until the next due fire.

    `wait(seconds)` sleeps (True: stop now); the simulation passes one that moves its clock.
    """
    began = services.clock()
    deadline = began + timedelta(seconds=hold_seconds)
    started = skipped = 0
    while True:
        # The task's whole hold stays within the pass budget plus the starts in flight, so
        # it never outlives its response timeout (10 s), however long it waited before.
        held = services.clock() - began
        report = run_tick(services, holder, shard, budget=max(MIN_BUDGET, PASS_BUDGET - held))
        if report.retired:
            # A shard beyond the number in force: its tick ends (docs/scheduling.md, "Shards").
            return completed({"shard": shard, "retired": True, "started": started})
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
    callback = _callback_seconds(report, wait_for, stopping())
    output = {
        "lastTickAt": now.isoformat(),
        "started": started,
        "skipped": skipped,
        "nextDue": report.next_due.isoformat() if report.next_due else None,
        "healthy": report.healthy,
        "shard": shard,
    }
    return in_progress(output, callback)


def _callback_seconds(report: TickReport, wait_for: float, stopping: bool) -> int:
    """When Conductor hands the tick out again.

    At once when stopping (another worker takes it), and when the last pass ran out of its
    budget with due fires left after starting some: a herd's next chunk must not wait a
    second between passes (it cost a quarter of the herd's start rate). A pass that made
    no progress never loops without a pause.
    """
    if stopping:
        return 0
    if wait_for <= 0 and report.healthy and report.started + report.skipped > 0:
        return 0
    return max(1, min(MAX_CALLBACK_SECONDS, math.floor(wait_for) - 1))


def apply_retention(task: TaskRun) -> TaskOutcome:
    with in_flight():
        return record_backup(process_services(), task.input, task.workflow_id)


def record_removal(task: TaskRun) -> TaskOutcome:
    with in_flight():
        return record_removed_backup(process_services(), task.input, task.workflow_id)


def deliver_notice(task: TaskRun) -> TaskOutcome:
    """POST one notice (backtor_notify); a failure is retried by Conductor with backoff."""
    with in_flight():
        return deliver(process_services(), task.input, task.workflow_id)

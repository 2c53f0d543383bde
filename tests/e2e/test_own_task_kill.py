"""A `backtor worker` replica SIGKILLed while it runs one of Backtor's own tasks,
`apply_retention` or `record_removal` (issue 13, item 16): Backtor recovers by itself,
without Conductor's sweeper. What follows describes the apply_retention test; the
record_removal one (at the end) kills the same way inside the update that marks the backup
REMOVED, with a spec that keeps one minutely backup so that removals run every second.

Real PostgreSQL, the API, two `backtor worker` replicas and the test storage worker; one
spec fires every second and keeps every backup (retentionKeepWithin 1d), so each record
stays COMPLETED.

Conductor is a server of this test's own, started with its sweeper off (SWEEPER_OFF). The
session's server, sweeper on, times the dead worker's task out itself, one second after its
response timeout, and retries it; a live replica then records the backup, about a second
before Backtor's own rule (response timeout + STALL_MARGIN) would act, so Backtor's repair
would never be exercised. The sweeper off stands for what was seen in production (issue
13, item 16): Conductor's sweeper did not revisit the run for more than 5 minutes.

Deterministic kill: apply_retention's handler (scheduling/handlers.py, record_backup)
inserts the spec's new row into the `backup` table. The test takes `LOCK TABLE backup IN
SHARE MODE` in a transaction of its own, just as a run is open and before its
apply_retention is polled, so that insert waits. Once Conductor shows the run's
apply_retention IN_PROGRESS under a replica's worker id (Replica.name) and PostgreSQL shows
exactly one `INSERT INTO backup` waiting on the test's lock, that whole replica (its process
group) is SIGKILLed, then the lock is released. Its server process then runs the insert,
finds its client gone and rolls back: the dead worker recorded nothing. If the killed
replica also held the tick at that moment, the watchdog has to replace the tick too.

What must follow:
1. the killed run's backup (the dataId its `backup` task produced, from Conductor) is
   recorded COMPLETED, once, within record_bound() of the kill (derived below);
2. a create_backup for a fire due after the kill starts within 15 s of the first due time
   after the kill (the overlap check must not count the dead run as running), and the spec
   keeps being backed up after it. (The overlap check's own repair, fires.dead_run, and the
   pass's look at long runs, outcomes.reconcile_fires, usually act in the same pass here:
   this test proves that one of them does, not which.)
3. no fire started twice (per fireId and per scheduledTime, and the ledger agrees with
   Conductor);
4. the killed run ends COMPLETED, its one apply_retention task reported COMPLETED by Backtor
   on the dead worker's behalf (workerId REPAIR_WORKER_ID, scheduling/stalls.py): not
   timed out nor retried by Conductor;
and at the end every file the storage worker holds is a live record: nothing orphaned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest

from backtor.conductor.names import APPLY_RETENTION, BACKUP, RECORD_REMOVAL, REMOVE
from backtor.conductor.registration import load_definitions
from backtor.core.cron import CronSchedule, next_fire
from backtor.scheduling.stalls import LOOK_AFTER, REPAIR_WORKER_ID, STALL_MARGIN
from backtor.scheduling.watchdog import STALL
from backtor.workers.runner import WATCHDOG_SECONDS
from backtor.workers.tasks import MAX_CALLBACK_SECONDS
from tests.e2e.conftest import Stack, assert_each_fire_started_once
from tests.support import processes
from tests.support.conductor import workflow
from tests.support.processes import Replica
from tests.support.scheduler import SchedulerWatch
from tests.support.sweeperless import (
    BackupTableLock,
    after_ms,
    backup_table_lock,
    poll_for,
    tasks_of,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


CRON = "* * * * * *"
UTC_ZONE = ZoneInfo("UTC")
NEXT_START_LIMIT_SECONDS = 15.0
KEEP_GOING_RUNS = 3  # runs after the kill that must complete and be recorded

# The bound on "kill -> the killed run's backup recorded", from what Backtor promises:
# the dead worker's apply_retention is taken for dead once it is past its response timeout
# (the task definition's) by STALL_MARGIN, counted from its poll (before the kill); the next
# pass repairs it (whenever it would make a due fire skip as `running`: every pass here),
# and passes are at most MAX_CALLBACK_SECONDS apart. If the killed replica also held the
# tick, passes resume only once the watchdog (every WATCHDOG_SECONDS) has found the tick
# silent for STALL and replaced it; that tick's first pass repairs at once. SLACK covers the
# HTTP round trips, polls and a loaded 2-core machine.
RESPONSE_TIMEOUT = timedelta(
    seconds=int(load_definitions().task_defs[APPLY_RETENTION]["responseTimeoutSeconds"])
)
PASS_PERIOD = timedelta(seconds=MAX_CALLBACK_SECONDS)
TICK_FAILOVER = STALL + timedelta(seconds=WATCHDOG_SECONDS)
SLACK = timedelta(seconds=3)


def record_bound(tick_lost: bool) -> float:
    stalled = RESPONSE_TIMEOUT + STALL_MARGIN
    first_pass = max(stalled, TICK_FAILOVER) if tick_lost else stalled
    return (first_pass + PASS_PERIOD + SLACK).total_seconds()


def scheduled_at(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(run["input"]["scheduledTime"])).timestamp()


def open_runs(stack: Stack, name: str) -> list[dict[str, Any]]:
    return [w for w in stack.creates(name) if w["status"] == "RUNNING"]


def not_polled_yet(stack: Stack, runs: list[dict[str, Any]], task_type: str) -> bool:
    """A run is open and its `task_type` has not been polled yet: the moment to lock."""
    return any(
        all(
            t.get("status") == "SCHEDULED"
            for t in tasks_of(stack.conductor, run["workflowId"], task_type)
        )
        for run in runs
    )


def held_inside(
    stack: Stack,
    runs: list[dict[str, Any]],
    task_type: str,
    pool: list[Replica],
    lock: BackupTableLock,
    write: Callable[[str], bool],
) -> tuple[Replica, dict[str, Any], dict[str, Any]] | None:
    """(replica, run, task) once a replica's `task_type` is IN_PROGRESS in Conductor and
    exactly one statement that `write` picks (upper-cased) waits on the lock."""
    if len([q for q in lock.waiting() if write(q.lstrip().upper())]) != 1:
        return None
    held = [
        (replica, run, task)
        for run in runs
        for task in tasks_of(stack.conductor, run["workflowId"], task_type)
        if task.get("status") == "IN_PROGRESS"
        for replica in pool
        if replica.alive() and task.get("workerId") == replica.name
    ]
    return held[0] if len(held) == 1 else None


class Kill(NamedTuple):
    victim: Replica
    run: dict[str, Any]
    task: dict[str, Any]
    tick_lost: bool  # the victim also held the scheduler's tick
    at: float


def kill_inside(
    stack: Stack,
    task_type: str,
    runs: Callable[[], list[dict[str, Any]]],
    write: Callable[[str], bool],
    pool: list[Replica],
    watch: SchedulerWatch,
    lock: BackupTableLock,
) -> Kill:
    """Lock just before a run's `task_type` is polled; SIGKILL the replica that polls it once
    its `write` waits on the lock; release the lock at once."""
    wait_until(
        lambda: not_polled_yet(stack, runs(), task_type),
        timeout=30,
        interval=0.02,
        what=f"a run before its {task_type}",
    )
    lock.take()
    try:
        found = wait_until(
            lambda: held_inside(stack, runs(), task_type, pool, lock, write),
            timeout=30,
            interval=0.05,
            what=f"a replica's {task_type} waiting on the lock",
        )
        assert found is not None
        victim, run, task = found
        hold = watch.hold()
        tick_lost = hold is not None and hold.held and hold.worker_id == victim.name
        killed_at = time.time()
        victim.kill()
    finally:
        lock.release()
    return Kill(victim, run, task, tick_lost, killed_at)


def recorded(stack: Stack, name: str, data_id: str) -> list[dict[str, Any]]:
    return [b for b in stack.backups(name) if b["dataId"] == data_id]


def test_a_replica_killed_inside_apply_retention_is_recovered_by_backtor(
    sweeperless_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = sweeperless_stack
    cron = CronSchedule(CRON)
    began = time.monotonic()
    with (
        processes.replicas(stack.env, stack.logs) as pool,
        SchedulerWatch(stack.database_url, stack.conductor) as watch,
        backup_table_lock(stack.database_url) as lock,
    ):
        pool += [Replica(stack.env, stack.logs, f"replica-{i}") for i in (1, 2)]
        wait_until(lambda: all(r.ready() for r in pool), timeout=90, what="two ready replicas")
        name = stack.create(
            "kill-in-apply-retention", backupCronString=CRON, retentionKeepWithin="1d"
        )
        wait_until(
            lambda: [b for b in stack.backups(name) if b["status"] == "COMPLETED"],
            timeout=60,
            what="a first backup recorded",
        )

        victim, run, task, tick_lost, killed_at = kill_inside(
            stack,
            APPLY_RETENTION,
            lambda: open_runs(stack, name),
            lambda statement: statement.startswith("INSERT INTO BACKUP "),
            pool,
            watch,
            lock,
        )
        killed_run = str(run["workflowId"])
        (backup_task,) = [
            t
            for t in tasks_of(stack.conductor, killed_run, BACKUP)
            if t.get("status") == "COMPLETED"
        ]
        data_id = str(backup_task["outputData"]["dataId"])
        due = next_fire(cron, datetime.fromtimestamp(killed_at, UTC), UTC_ZONE).timestamp()
        bound = record_bound(tick_lost)

        # 1. The killed run's backup recorded COMPLETED.
        records = poll_for(
            lambda: [b for b in recorded(stack, name, data_id) if b["status"] == "COMPLETED"],
            timeout=bound + 10,
        )
        recorded_after = time.time() - killed_at if records else None

        # 2. A backup due after the kill starts; the spec keeps being backed up.
        def after_kill() -> list[dict[str, Any]]:
            return [w for w in stack.creates(name) if scheduled_at(w) > killed_at]

        def first_start() -> dict[str, Any] | None:
            later = after_kill()
            return min(later, key=lambda w: int(w["startTime"])) if later else None

        limit = due + NEXT_START_LIMIT_SECONDS
        first = poll_for(first_start, timeout=limit + 10 - time.time())
        started = int(first["startTime"]) / 1000 if first else None

        def kept_going() -> bool:
            return len([w for w in after_kill() if w["status"] == "COMPLETED"]) >= KEEP_GOING_RUNS

        kept = first is not None and poll_for(kept_going, timeout=30) is not None

        # 4. The killed run, ended.
        if records:
            poll_for(
                lambda: workflow(stack.conductor, killed_run)["status"] != "RUNNING", timeout=30
            )
        ended = workflow(stack.conductor, killed_run)
        attempts = [t for t in ended.get("tasks", []) if t["taskType"] == APPLY_RETENTION]

        figures = {
            "victim": victim.name,
            "victim_held_tick": tick_lost,
            "lock_held_s": round(lock.held_s, 3),
            "kill_to_record_s": round(recorded_after, 3) if recorded_after else None,
            "record_bound_s": bound,
            "due_to_next_start_s": round(started - due, 3) if started else None,
            "kill_to_next_start_s": round(started - killed_at, 3) if started else None,
            "killed_run_status": ended["status"],
            "apply_retention_tasks": [
                {
                    "status": t.get("status"),
                    "workerId": t.get("workerId"),
                    "polled_after_kill_s": after_ms(t.get("startTime"), killed_at),
                    "ended_after_kill_s": after_ms(t.get("endTime"), killed_at),
                    "reason": t.get("reasonForIncompletion"),
                }
                for t in attempts
            ],
            "runs_so_far": len(stack.creates(name)),
            "test_s": round(time.monotonic() - began, 1),
        }
        report = "apply_retention kill: " + json.dumps(figures)
        with capsys.disabled():
            print("\n" + report)

        assert records is not None, f"the killed run's backup {data_id} never recorded\n{report}"
        assert len(records) == 1, f"recorded more than once: {records}\n{report}"
        assert recorded_after is not None and recorded_after <= bound, (
            f"recorded later than {bound} s after the kill\n{report}"
        )
        assert started is not None and started <= limit, (
            f"no backup started within {NEXT_START_LIMIT_SECONDS} s of the first due time "
            f"after the kill\n{report}"
        )
        assert kept, f"fewer than {KEEP_GOING_RUNS} backups completed after the kill\n{report}"
        assert ended["status"] == "COMPLETED", report
        assert [t["taskId"] for t in attempts] == [task["taskId"]], (
            f"apply_retention timed out or retried by Conductor, not repaired by Backtor\n{report}"
        )
        (repaired,) = attempts
        assert repaired["status"] == "COMPLETED", report
        assert repaired.get("workerId") == REPAIR_WORKER_ID, report
        assert ended["output"].get("backupId") == records[0]["id"], report

        stack.update(name, enabled=0)
        wait_until(lambda: not open_runs(stack, name), timeout=60, what="the last backup")

    # 3. No fire started twice.
    assert_each_fire_started_once(stack, name)
    # Nothing orphaned: every file stored is a live record, and every live record a file.
    wait_until(
        lambda: stack.storage.files() == stack.live_data_ids(name),
        timeout=30,
        what="every stored file recorded",
    )
    assert data_id in stack.storage.files()
    with capsys.disabled():
        print(f"apply_retention kill: test done in {time.monotonic() - began:.1f} s")


# -- record_removal ----------------------------------------------------------------------------

# Kill -> the backup recorded REMOVED: the run is looked inside once it is LOOK_AFTER old
# and again LOOK_AFTER after each look (scheduling.removals); by the second look the dead
# worker's record_removal (polled within a second of the run's start, before the kill) is
# past its response timeout + STALL_MARGIN (= LOOK_AFTER). Passes are MAX_CALLBACK_SECONDS
# apart at most; a lost tick adds the watchdog's takeover.
REMOVAL_RECORD_BOUND = 2 * LOOK_AFTER + PASS_PERIOD + SLACK


def open_removals(stack: Stack, name: str) -> list[dict[str, Any]]:
    return [w for w in stack.removes(name) if w["status"] == "RUNNING"]


def test_a_replica_killed_inside_record_removal_is_recovered_by_backtor(
    sweeperless_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13, item 16, the removal side (seen in CI on a PostgreSQL-backed Conductor: a
    killed worker's record_removal stayed IN_PROGRESS for over two minutes, the backup
    REMOVING, its file already gone). Same kill as above, inside record_removal's update."""
    stack = sweeperless_stack
    began = time.monotonic()
    with (
        processes.replicas(stack.env, stack.logs) as pool,
        SchedulerWatch(stack.database_url, stack.conductor) as watch,
        backup_table_lock(stack.database_url) as lock,
    ):
        pool += [Replica(stack.env, stack.logs, f"replica-{i}") for i in (1, 2)]
        wait_until(lambda: all(r.ready() for r in pool), timeout=90, what="two ready replicas")
        name = stack.create("kill-in-record-removal", backupCronString=CRON, retentionMinutely="1")
        wait_until(
            lambda: stack.backups(name, status="REMOVED"), timeout=90, what="a first removal"
        )

        victim, run, task, tick_lost, killed_at = kill_inside(
            stack,
            RECORD_REMOVAL,
            lambda: open_removals(stack, name),
            # record_removed's UPDATE, the one that sets removed_at
            lambda statement: (
                statement.startswith("UPDATE BACKUP SET") and "REMOVED_AT" in statement
            ),
            pool,
            watch,
            lock,
        )
        killed_run = str(run["workflowId"])
        backup_id = int(run["input"]["backupId"])
        data_id = str(run["input"]["dataId"])
        (removal,) = tasks_of(stack.conductor, killed_run, REMOVE)
        bound = (
            REMOVAL_RECORD_BOUND + (TICK_FAILOVER if tick_lost else timedelta())
        ).total_seconds()

        def removed() -> list[dict[str, Any]]:
            return [b for b in stack.backups(name, status="REMOVED") if b["id"] == backup_id]

        records = poll_for(removed, timeout=bound + 10)
        recorded_after = time.time() - killed_at if records else None
        if records:
            poll_for(
                lambda: workflow(stack.conductor, killed_run)["status"] != "RUNNING", timeout=30
            )
        ended = workflow(stack.conductor, killed_run)
        attempts = [t for t in ended.get("tasks", []) if t["taskType"] == RECORD_REMOVAL]
        # Removals go on: a backup taken after the killed one's successor is removed too.
        later = poll_for(
            lambda: [b for b in stack.backups(name, status="REMOVED") if b["id"] > backup_id + 1],
            timeout=30,
        )
        figures = {
            "victim": victim.name,
            "victim_held_tick": tick_lost,
            "lock_held_s": round(lock.held_s, 3),
            "remove_task": removal.get("status"),
            "kill_to_removed_s": round(recorded_after, 3) if recorded_after else None,
            "bound_s": bound,
            "killed_run_status": ended["status"],
            "record_removal_tasks": [
                {
                    "status": t.get("status"),
                    "workerId": t.get("workerId"),
                    "polled_after_kill_s": after_ms(t.get("startTime"), killed_at),
                    "ended_after_kill_s": after_ms(t.get("endTime"), killed_at),
                }
                for t in attempts
            ],
            "removals_after_kill": len(later or []),
            "test_s": round(time.monotonic() - began, 1),
        }
        report = "record_removal kill: " + json.dumps(figures)
        with capsys.disabled():
            print("\n" + report)

        assert records, f"backup {backup_id} never recorded REMOVED\n{report}"
        assert recorded_after is not None and recorded_after <= bound, report
        assert ended["status"] == "COMPLETED", report
        assert [t["taskId"] for t in attempts] == [task["taskId"]], (
            f"record_removal timed out or retried by Conductor, not repaired by Backtor\n{report}"
        )
        assert attempts[0]["status"] == "COMPLETED", report
        assert attempts[0].get("workerId") == REPAIR_WORKER_ID, report
        assert later, f"no removal recorded after the kill\n{report}"
        # One removal for the backup, and its file is gone.
        runs = [w for w in stack.removes(name) if w["input"].get("backupId") == backup_id]
        assert [w["workflowId"] for w in runs] == [killed_run], report
        assert data_id not in stack.storage.files()

        stack.update(name, enabled=0)
        wait_until(
            lambda: not open_runs(stack, name) and not open_removals(stack, name),
            timeout=60,
            what="the last backup and removal",
        )

    assert_each_fire_started_once(stack, name)
    wait_until(
        lambda: stack.storage.files() == stack.live_data_ids(name),
        timeout=30,
        what="every stored file recorded",
    )

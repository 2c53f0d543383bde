"""Scheduling inside Conductor, end to end: real Conductor, PostgreSQL, worker processes."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from backtor.conductor.names import APPLY_RETENTION
from backtor.conductor.registration import DEFINITIONS
from backtor.db.models import Fire
from backtor.scheduling.fires import CLAIM
from backtor.scheduling.stalls import STALL_MARGIN
from tests.e2e.conftest import Stack, assert_each_fire_started_once
from tests.support import processes
from tests.support.conductor import workflow, workflows
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def fires(stack: Stack, name: str) -> list[Fire]:
    return stack.fires(name)


def quiesce(stack: Stack, name: str, timeout: float = 60) -> None:
    """Disable the spec and wait until nothing of it runs in Conductor."""
    stack.update(name, enabled=0)

    def unsettled() -> list[str]:
        running = [w for w in stack.creates(name) + stack.removes(name) if w["status"] == "RUNNING"]
        pending = [b for b in stack.backups(name) if b["status"] in ("REMOVING", "RUNNING")]
        return [describe_run(stack, w["workflowId"]) for w in running] + [
            f"backup {b['id']} {b['status']}" for b in pending
        ]

    try:
        wait_until(lambda: not unsettled(), timeout=timeout, what=f"{name} to settle")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; still open: {unsettled()}") from None


def describe_run(stack: Stack, workflow_id: str) -> str:
    """A run and its tasks, for a failure message: which task holds it open, and since when."""
    run = workflow(stack.conductor, workflow_id)
    tasks = ", ".join(
        f"{t['referenceTaskName']}={t['status']} (updated {t.get('updateTime')}, "
        f"worker {t.get('workerId')}, poll count {t.get('pollCount')})"
        for t in run.get("tasks", [])
    )
    return f"{run['workflowName']} {workflow_id} {run['status']}: {tasks}"


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_two_second_cron_with_minutely_retention(stack: Stack, isolation: str) -> None:
    """Both BACKTOR_WORKER_ISOLATION modes schedule, record and remove end to end."""
    env = {**stack.env, "BACKTOR_WORKER_ISOLATION": isolation}
    with processes.workers(env, stack.logs):
        name = stack.create("every2s", backupCronString="*/2 * * * * *", retentionMinutely="3")
        wait_until(
            lambda: len([w for w in stack.creates(name) if w["status"] == "COMPLETED"]) >= 10,
            timeout=45,
            what="ten backups",
        )
        quiesce(stack, name)
    creates = stack.creates(name)
    completed = [w for w in creates if w["status"] == "COMPLETED"]
    assert len(completed) >= 8, stack.log_tail()
    assert len(stack.removes(name)) >= 3
    removed = {b["dataId"] for b in stack.backups(name, status="REMOVED")}
    assert removed and removed.isdisjoint(stack.storage.files())
    # Nothing orphaned, nothing lost: Backtor's live backups are exactly the stored files.
    assert stack.live_data_ids(name) == stack.storage.files()
    assert set(stack.storage.backups_taken) == {
        b["dataId"] for b in stack.backups(name) if b["dataId"]
    }
    kept = stack.backups(name, status="COMPLETED")
    assert 1 <= len(kept) <= 4  # newest + at most 3 minutely representatives (+ daily overlap)


def test_a_backup_slower_than_the_period_skips_fires(stack: Stack) -> None:
    stack.storage.delay = 4.0
    with processes.workers(stack.env, stack.logs):
        name = stack.create("slow", backupCronString="* * * * * *")
        wait_until(
            lambda: len([w for w in stack.creates(name) if w["status"] == "COMPLETED"]) >= 2,
            timeout=40,
            what="two slow backups",
        )
        quiesce(stack, name)
    runs = sorted(stack.creates(name), key=lambda w: w["startTime"])
    for before, after in itertools.pairwise(runs):
        assert after["startTime"] >= before["endTime"], "two create_backup ran at once"
    skipped = [f for f in fires(stack, name) if f.status == "SKIPPED"]
    assert any(f.skip_reason == "running" for f in skipped)
    assert stack.spec(name)["lastSkipReason"] in ("running", "misfire")
    started = [f for f in fires(stack, name) if f.status == "STARTED"]
    assert len(started) == len(runs)


def _assert_exactly_once(stack: Stack, name: str) -> None:
    assert_each_fire_started_once(stack, name)
    # None lost: every second from the first fire to the last is in the ledger.
    times = sorted(f.scheduled_at for f in fires(stack, name))
    expected = int((times[-1] - times[0]).total_seconds()) + 1
    assert len(times) == expected, f"{expected - len(times)} fire times missing from the ledger"
    assert len(set(times)) == len(times)


def started_fires(stack: Stack, name: str) -> list[Fire]:
    return [f for f in fires(stack, name) if f.status == "STARTED"]


def test_three_workers_fire_each_second_exactly_once(stack: Stack) -> None:
    with processes.workers(stack.env, stack.logs, count=3):
        name = stack.create("once", backupCronString="* * * * * *")
        wait_until(
            lambda: len(started_fires(stack, name)) >= 40, timeout=120, what="40 started fires"
        )
        quiesce(stack, name)
    _assert_exactly_once(stack, name)
    assert len(started_fires(stack, name)) >= 40


# The 15 s failover goal is for the tick (tests/e2e/test_failover.py). A replica killed at
# random may also hold a fire claim, or Backtor's own apply_retention of the spec's running
# backup; by the product's own rules those hold the spec for up to the claim, or the task's
# response timeout plus the stall repair's margin. Beyond that bound (plus the next due time
# and a pass), a kill that is not followed by a started backup means scheduling stopped.
# (Both are defects against the 15 s goal, reported with test_failover.py; when they are
# fixed this bound shrinks with the constants.)
RECOVERY_BOUND_S = (
    max(
        15.0,
        CLAIM.total_seconds(),
        DEFINITIONS.task_defs[APPLY_RETENTION]["responseTimeoutSeconds"]
        + STALL_MARGIN.total_seconds(),
    )
    + 5.0
)
# Share of the ledger's fires that must have started. Kills come every 2-8 s and each one
# of the tick's holder costs ~11 s of misfires even at the 15 s goal, so about half the fires
# are lost at best (26 % started with the defects above); a scheduler that stopped at the
# first kill (8 s in) would start well under 10 %.
MIN_STARTED_SHARE = 0.15


def test_workers_killed_at_random_still_fire_exactly_once(
    stack: Stack, record_property: Any
) -> None:
    rng = random.Random(1234)
    kill_times: list[datetime] = []
    with processes.workers(stack.env, stack.logs, count=3) as running:
        name = stack.create("killed", backupCronString="* * * * * *")
        wait_until(lambda: started_fires(stack, name), timeout=60, what="a first backup")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2, 8))  # the chaos schedule itself: kills at random moments
            victim = rng.randrange(len(running))
            kill_times.append(datetime.now(UTC))
            processes.kill_group(running[victim])
            running[victim] = processes.start(
                ["worker"], stack.env, stack.logs / f"worker-restarted-{len(kill_times)}.log"
            )
        # Backups are still being taken after the last kill.
        wait_until(
            lambda: [f for f in started_fires(stack, name) if f.scheduled_at > kill_times[-1]],
            timeout=RECOVERY_BOUND_S,
            what="a backup started after the last kill",
        )
        quiesce(stack, name, timeout=120)
    assert len(kill_times) >= 5
    _assert_exactly_once(stack, name)
    ledger = fires(stack, name)
    started = [f.scheduled_at for f in ledger if f.status == "STARTED"]
    # Per kill: how long until a fire due after it started (None: none did).
    recovered = [
        min(((t - k).total_seconds() for t in started if t > k), default=None) for k in kill_times
    ]
    share = len(started) / len(ledger)
    record_property("kill_to_next_started_fire_s", recovered)
    record_property("started_share", round(share, 3))
    # A kill followed by another kill before its bound ran out hands the check to that one:
    # two failovers in a row take two failovers' time.
    stuck = [
        (k.isoformat(), gap)
        for i, (k, gap) in enumerate(zip(kill_times, recovered, strict=True))
        if (gap is None or gap > RECOVERY_BOUND_S)
        and not any(
            0 < (later - k).total_seconds() < RECOVERY_BOUND_S for later in kill_times[i + 1 :]
        )
    ]
    assert not stuck, f"no backup started within {RECOVERY_BOUND_S:.0f} s of these kills: {stuck}"
    assert share >= MIN_STARTED_SHARE, (
        f"only {len(started)} of {len(ledger)} fires started ({share:.0%}): "
        f"{Counter(f.skip_reason for f in ledger if f.status == 'SKIPPED')}"
    )


def test_terminated_tick_is_replaced_and_scheduling_resumes(stack: Stack) -> None:
    with processes.workers(stack.env, stack.logs):
        name = stack.create("heal", backupCronString="*/2 * * * * *")
        tick = wait_until(
            lambda: [
                w
                for w in workflows(stack.conductor, "backtor_scheduler", "backtor-scheduler")
                if w["status"] == "RUNNING"
            ],
            timeout=30,
            what="a running tick",
        )[0]
        wait_until(lambda: len(stack.creates(name)) >= 1, timeout=30, what="a first backup")
        requests.delete(
            f"{stack.conductor}/workflow/{tick['workflowId']}",
            params={"reason": "operator"},
            timeout=10,
        ).raise_for_status()
        stopped_at = len(stack.creates(name))
        replacement = wait_until(
            lambda: [
                w
                for w in workflows(stack.conductor, "backtor_scheduler", "backtor-scheduler")
                if w["status"] == "RUNNING"
            ],
            timeout=60,
            what="a replacement tick",
        )
        assert len(replacement) == 1
        assert replacement[0]["workflowId"] != tick["workflowId"]
        wait_until(
            lambda: len(stack.creates(name)) >= stopped_at + 3, timeout=60, what="fires to resume"
        )
        quiesce(stack, name)


def test_failed_backup_recorded_then_retried_through_conductor(stack: Stack) -> None:
    stack.storage.fail_backups = 1
    start = datetime.now(UTC) + timedelta(seconds=3)
    with processes.workers(stack.env, stack.logs):
        name = stack.create(
            "retry",
            backupCronString="* * * * * *",
            fromDate=start.isoformat(),
            toDate=(start + timedelta(seconds=1)).isoformat(),
        )
        failed = wait_until(
            lambda: stack.backups(name, status="FAILED"), timeout=60, what="the failure recorded"
        )[0]
        workflow_id = failed["createWorkflowId"]
        assert workflow(stack.conductor, workflow_id)["status"] == "FAILED"
        requests.post(
            f"{stack.conductor}/workflow/{workflow_id}/retry", timeout=10
        ).raise_for_status()
        done = wait_until(
            lambda: stack.backups(name, status="COMPLETED"), timeout=60, what="the retry recorded"
        )
    assert [b["createWorkflowId"] for b in done] == [workflow_id]
    assert stack.backups(name, status="FAILED") == []
    assert {b["dataId"] for b in done} == stack.storage.files()
    assert len(fires(stack, name)) == 1


def test_failed_removal_is_retried_until_it_succeeds(stack: Stack) -> None:
    stack.storage.fail_removals = 2
    with processes.workers(stack.env, stack.logs):
        name = stack.create("rmretry", backupCronString="*/2 * * * * *", retentionMinutely="1")
        wait_until(
            lambda: len(stack.backups(name, status="REMOVED")) >= 2, timeout=60, what="removals"
        )
        quiesce(stack, name)
    attempts = [b for b in stack.backups(name) if b["status"] == "REMOVED"]
    assert len(stack.removes(name)) >= len(attempts) + 2  # two failed workflows, retried
    assert stack.live_data_ids(name) == stack.storage.files()


def test_disabled_and_out_of_window_specs_fire_nothing(stack: Stack) -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    past = datetime.now(UTC) - timedelta(days=1)
    with processes.workers(stack.env, stack.logs):
        off = stack.create("off", backupCronString="* * * * * *", enabled=0)
        later = stack.create("later", backupCronString="* * * * * *", fromDate=future.isoformat())
        over = stack.create(
            "over",
            backupCronString="* * * * * *",
            fromDate=(past - timedelta(days=1)).isoformat(),
            toDate=past.isoformat(),
        )
        control = stack.create("control", backupCronString="* * * * * *")
        wait_until(lambda: len(stack.creates(control)) >= 3, timeout=40, what="the control spec")
        quiesce(stack, control)
    for name in (off, later, over):
        assert stack.creates(name) == []
        assert fires(stack, name) == []


def test_delete_waits_for_the_backup_under_way_and_purge_removes_it(stack: Stack) -> None:
    stack.storage.delay = 4.0
    with processes.workers(stack.env, stack.logs):
        name = stack.create("purge", backupCronString="* * * * * *")
        wait_until(
            lambda: [w for w in stack.creates(name) if w["status"] == "RUNNING"],
            timeout=30,
            what="a backup under way",
        )
        refused = requests.delete(f"{stack.api}/backup/{name}", timeout=10)
        assert refused.status_code == 409, refused.text
        accepted = requests.delete(f"{stack.api}/backup/{name}?purge=true", timeout=10)
        assert accepted.status_code == 202, accepted.text
        wait_until(
            lambda: requests.get(f"{stack.api}/backup/{name}", timeout=10).status_code == 404,
            timeout=90,
            what="the purged spec to go",
        )
    assert stack.storage.backups_taken, "no backup was taken"
    assert stack.storage.files() == set(), "a purged backup's data was left behind"
    assert set(stack.storage.removed) >= set(stack.storage.backups_taken)

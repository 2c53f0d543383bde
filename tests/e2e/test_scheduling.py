"""Scheduling inside Conductor, end to end: real Conductor, PostgreSQL, worker processes."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from backtor.db.models import BackupSpec, Fire
from tests.e2e.conftest import Stack
from tests.support import processes
from tests.support.conductor import workflow, workflows
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def fires(stack: Stack, name: str) -> list[Fire]:
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session:
            spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == name))
            return list(
                session.scalars(
                    select(Fire).where(Fire.spec_id == spec_id).order_by(Fire.scheduled_at)
                )
            )
    finally:
        engine.dispose()


def quiesce(stack: Stack, name: str, timeout: float = 60) -> None:
    """Disable the spec and wait until nothing of it runs in Conductor."""
    stack.update(name, enabled=0)

    def settled() -> bool:
        running = [w for w in stack.creates(name) + stack.removes(name) if w["status"] == "RUNNING"]
        pending = [b for b in stack.backups(name) if b["status"] in ("REMOVING", "RUNNING")]
        return not running and not pending

    wait_until(settled, timeout=timeout, what=f"{name} to settle")


def test_two_second_cron_with_minutely_retention(stack: Stack) -> None:
    with processes.workers(stack.env, stack.logs):
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
    ledger = fires(stack, name)
    started = {f.id: f for f in ledger if f.status == "STARTED"}
    runs = stack.creates(name)
    per_fire = Counter(w["input"].get("fireId") for w in runs)
    assert set(per_fire) == set(started), "a workflow without its fire, or a fire without one"
    assert max(per_fire.values()) == 1, f"a fire started twice: {per_fire.most_common(3)}"
    assert {started[f].workflow_id for f in started} == {w["workflowId"] for w in runs}
    # None lost: every second from the first fire to the last is in the ledger.
    times = sorted(f.scheduled_at for f in ledger)
    expected = int((times[-1] - times[0]).total_seconds()) + 1
    assert len(times) == expected, f"{expected - len(times)} fire times missing from the ledger"
    assert len(set(times)) == len(times)


def test_three_workers_fire_each_second_exactly_once(stack: Stack) -> None:
    with processes.workers(stack.env, stack.logs, count=3):
        name = stack.create("once", backupCronString="* * * * * *")
        time.sleep(60)
        quiesce(stack, name)
    _assert_exactly_once(stack, name)
    assert len([f for f in fires(stack, name) if f.status == "STARTED"]) >= 40


def test_workers_killed_at_random_still_fire_exactly_once(stack: Stack) -> None:
    rng = random.Random(1234)
    with processes.workers(stack.env, stack.logs, count=3) as running:
        name = stack.create("killed", backupCronString="* * * * * *")
        deadline = time.monotonic() + 60
        kills = 0
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2, 8))
            victim = rng.randrange(len(running))
            processes.kill_group(running[victim])
            kills += 1
            running[victim] = processes.start(
                ["worker"], stack.env, stack.logs / f"worker-restarted-{kills}.log"
            )
        quiesce(stack, name, timeout=120)
    assert kills >= 5
    _assert_exactly_once(stack, name)


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

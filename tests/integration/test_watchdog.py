"""The watchdog's paths on a real PostgreSQL and a real Conductor, and what a dead replica
leaves behind.

- extra ticks: of two running ticks the oldest is kept and the younger terminated;
- the watchdog lease: two replicas' watchdogs at once, only one acts; a live lease keeps the
  other out until it lapses, and the one that takes it over starts no second tick;
- the stall rule: a tick that has not beaten for STALL is terminated and replaced, a beating
  one is left alone (moved clocks stand in for the passing seconds);
- a replica killed while it records a backup (Backtor's own apply_retention task).

Each test starts from no running tick (the session's Conductor is shared) and terminates the
ticks it leaves.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from backtor.conductor.names import (
    APPLY_RETENTION,
    CREATE_BACKUP,
    TICK,
    TICK_CORRELATION_ID,
)
from backtor.conductor.payloads import WorkflowRun
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import repository
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling.handlers import record_backup
from backtor.scheduling.tick import run_tick
from backtor.scheduling.watchdog import LEASE, STALL, ensure_tick
from tests.support.storage import FileStorageWorker
from tests.support.threads import run_together
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


def open_ticks(services: Services) -> list[WorkflowRun]:
    found = services.conductor.workflows_by_correlation(
        TICK, [TICK_CORRELATION_ID], include_closed=False
    ).get(TICK_CORRELATION_ID, [])
    return [run for run in found if run.status.is_open]


def terminate_ticks(services: Services) -> None:
    for run in open_ticks(services):
        services.conductor.terminate_workflow(run.workflow_id, "test: a clean slate")


@pytest.fixture
def services(postgres_url: str, conductor_url: str) -> Iterator[Services]:
    upgrade_to_head(postgres_url)
    built = Services.from_settings(
        Settings.from_env({"DATABASE_URL": postgres_url, "CONDUCTOR_API_URL": conductor_url})
    )
    register_definitions(built.conductor)
    terminate_ticks(built)
    yield built
    terminate_ticks(built)
    built.close()


def at(services: Services, moment: datetime) -> Services:
    """The same services on a clock that reads `moment` now, and runs on from there."""
    offset = moment - datetime.now(UTC)
    return dataclasses.replace(services, clock=lambda: datetime.now(UTC) + offset)


def state(services: Services) -> SchedulerState:
    with services.db() as session:
        row = session.get(SchedulerState, SCHEDULER_STATE_ID)
        assert row is not None
        session.expunge(row)
        return row


def beat(services: Services, moment: datetime) -> None:
    with services.db.begin() as session:
        session.execute(update(SchedulerState).values(last_tick_at=moment))


def start_tick(services: Services) -> str:
    return services.conductor.start_workflow(
        TICK,
        version=DEFINITIONS.workflow_version(TICK),
        correlation_id=TICK_CORRELATION_ID,
        input={},
    )


def status(services: Services, workflow_id: str) -> str:
    return services.conductor.get_workflow(workflow_id, include_tasks=False).status.value


def test_of_two_running_ticks_the_younger_is_terminated(services: Services) -> None:
    older = start_tick(services)
    younger = start_tick(services)  # say, a failed tick restarted by hand beside its successor
    runs = {run.workflow_id: run for run in open_ticks(services)}
    assert set(runs) == {older, younger}
    older_start, younger_start = runs[older].start_time, runs[younger].start_time
    assert older_start is not None and younger_start is not None
    assert older_start < younger_start
    beat(services, datetime.now(UTC))  # a live tick: only the extra-tick rule may act

    assert ensure_tick(services, "watchdog-a:1:aaaaaa") == older
    assert status(services, older) == "RUNNING"
    assert status(services, younger) == "TERMINATED"
    assert [run.workflow_id for run in open_ticks(services)] == [older]
    assert state(services).tick_workflow_id == older
    # Looking again changes nothing: one tick, kept, nothing started.
    assert ensure_tick(services, "watchdog-a:1:aaaaaa") == older
    assert [run.workflow_id for run in open_ticks(services)] == [older]


def test_two_watchdogs_at_once_only_one_acts(services: Services) -> None:
    for round_ in range(3):
        terminate_ticks(services)
        with services.db.begin() as session:  # the lease free, as after its holder died
            session.execute(update(SchedulerState).values(lease_holder=None, lease_until=None))
        holders = [f"watchdog-a:{round_}:aaaaaa", f"watchdog-b:{round_}:bbbbbb"]
        answers: list[str | None] = run_together(
            [functools.partial(ensure_tick, services, holder) for holder in holders]
        )
        acted = [holder for holder, answer in zip(holders, answers, strict=True) if answer]
        assert len(acted) == 1, answers
        ticks = open_ticks(services)
        assert [run.workflow_id for run in ticks] == [a for a in answers if a], answers
        assert state(services).lease_holder == acted[0]


def test_a_live_lease_keeps_the_other_watchdog_out_until_it_lapses(services: Services) -> None:
    first = ensure_tick(services, "watchdog-a:1:aaaaaa")
    assert first is not None
    assert ensure_tick(services, "watchdog-b:2:bbbbbb") is None
    # The tick terminated from the UI: only the lease holder may replace it.
    services.conductor.terminate_workflow(first, "test: an operator")
    assert ensure_tick(services, "watchdog-b:2:bbbbbb") is None
    assert open_ticks(services) == []
    second = ensure_tick(services, "watchdog-a:1:aaaaaa")
    assert second is not None and second != first
    beat(services, datetime.now(UTC))
    # Holder a dies; once its lease has lapsed, b takes the lease over and keeps the tick.
    later = at(services, datetime.now(UTC) + LEASE + timedelta(seconds=1))
    assert ensure_tick(later, "watchdog-b:2:bbbbbb") == second
    assert [run.workflow_id for run in open_ticks(services)] == [second]
    assert state(services).lease_holder == "watchdog-b:2:bbbbbb"
    assert ensure_tick(services, "watchdog-a:1:aaaaaa") is None  # a's old lease is gone


def test_a_stalled_tick_is_replaced_and_a_beating_one_kept(services: Services) -> None:
    holder = "watchdog-a:1:aaaaaa"
    tick = ensure_tick(services, holder)
    assert tick is not None
    now = datetime.now(UTC)
    # The tick started more than STALL ago, and beat a second ago: kept.
    beat(services, now + STALL)
    assert ensure_tick(at(services, now + STALL + timedelta(seconds=1)), holder) == tick
    # Its last beat STALL minus a second ago: still kept.
    assert ensure_tick(at(services, now + 2 * STALL - timedelta(seconds=1)), holder) == tick
    assert status(services, tick) == "RUNNING"
    # No beat for more than STALL: terminated and replaced.
    later = at(services, now + 2 * STALL + timedelta(seconds=1))
    replacement = ensure_tick(later, holder)
    assert replacement is not None and replacement != tick
    assert status(services, tick) == "TERMINATED"
    assert [run.workflow_id for run in open_ticks(services)] == [replacement]
    assert state(services).tick_workflow_id == replacement


# -- a replica killed while it records a backup ----------------------------------------------


def poll(conductor_url: str, task_type: str, worker: str) -> dict[str, Any] | None:
    answer = requests.get(
        f"{conductor_url}/tasks/poll/{task_type}", params={"workerid": worker}, timeout=10
    )
    answer.raise_for_status()
    return dict(answer.json()) if answer.content else None


def test_a_replica_killed_while_it_records_a_backup_does_not_hold_its_spec_past_15_s(
    services: Services, conductor_url: str, tmp_path: Path
) -> None:
    """One spec fires every second. Its first backup is taken; a replica polls the run's
    apply_retention and is SIGKILLed. A live replica keeps passing every second and polling
    apply_retention. The spec's next backup must start within 15 s of the first due time after
    the death, the failover goal."""
    prefix = f"watchdog-{uuid.uuid4().hex[:8]}"
    name = f"{prefix}-spec"
    values = normalise_spec(
        SpecDraft(name=name, backup_cron_string="* * * * * *", worker_config="{}")
    )
    with services.db.begin() as session:
        repository.create_spec(session, values, datetime.now(UTC))
    holder = "live-replica:1:11ve00"

    def runs() -> list[WorkflowRun]:
        found = services.conductor.workflows_by_correlation(
            CREATE_BACKUP, [name], include_closed=True
        )
        return found.get(name, [])

    stop = threading.Event()
    live_errors: list[BaseException] = []

    def live_apply_retention() -> None:
        """What a live replica's apply_retention runner does with a task it polls."""
        try:
            while not stop.is_set():
                task = poll(conductor_url, APPLY_RETENTION, "live-replica")
                if task is None:
                    stop.wait(0.2)
                    continue
                outcome = record_backup(
                    services, task["inputData"], str(task["workflowInstanceId"])
                )
                requests.post(
                    f"{conductor_url}/tasks",
                    json={
                        "taskId": task["taskId"],
                        "workflowInstanceId": task["workflowInstanceId"],
                        "workerId": "live-replica",
                        "status": outcome.status,
                        "outputData": dict(outcome.output),
                    },
                    timeout=10,
                ).raise_for_status()
        except BaseException as exc:  # reported by the test
            live_errors.append(exc)

    live = threading.Thread(target=live_apply_retention, daemon=True)
    try:
        with FileStorageWorker(conductor_url, tmp_path / "store", prefix=prefix):
            wait_until(
                lambda: run_tick(services, holder).started or runs(),
                timeout=30,
                what="the first backup started",
            )
            (first,) = runs()
            # The doomed replica polls the run's apply_retention, then dies without a word.
            task = wait_until(
                lambda: poll(conductor_url, APPLY_RETENTION, "doomed-replica"),
                timeout=30,
                interval=0.1,
                what="the first run's apply_retention",
            )
            assert task is not None and task["workflowInstanceId"] == first.workflow_id
            died = datetime.now(UTC)
            goal = died.replace(microsecond=0) + timedelta(seconds=1 + 15)
            live.start()
            while datetime.now(UTC) <= goal:
                run_tick(services, holder)
                if len(runs()) > 1:
                    break
                stop.wait(1.0)
            later = [run for run in runs() if run.workflow_id != first.workflow_id]
            first_status = status(services, first.workflow_id)
    finally:
        stop.set()
        live.join(timeout=15)
        for run in runs():
            if run.status.is_open:
                services.conductor.terminate_workflow(run.workflow_id, "test over")
    assert not live_errors, live_errors
    assert later, (
        f"the spec's next create_backup had not started by {goal.isoformat()}, 15 s after the "
        f"first due time after the death; the first run is {first_status}"
    )
    assert min(run.start_time for run in later if run.start_time) <= goal

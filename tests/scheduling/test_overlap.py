"""overlapPolicy: what a fire does while its spec's previous create_backup still runs.

SQLite and the Conductor twin in simulated time; a backup "runs" until the test has the
storage worker's `backup` task (and Backtor's apply_retention) complete it.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backtor.api.app import create_app
from backtor.conductor.names import APPLY_RETENTION, BACKUP, CREATE_BACKUP
from backtor.conductor.payloads import WorkflowStatus
from backtor.conductor.twin import FaultKind, Operation
from backtor.core.schedule import OverlapAction, OverlapPolicy, on_overlap
from backtor.db.models import Backup, BackupSpec, Fire
from backtor.scheduling.fires import BUFFER_POLL, claim_pending
from backtor.scheduling.handlers import record_backup
from backtor.scheduling.tick import TickReport, run_tick
from tests.scheduling.conftest import Core

EVERY_10S = "*/10 * * * * *"
_data = itertools.count(1)


@pytest.fixture
def api(core: Core) -> Iterator[TestClient]:
    """The API on the core's database, twin and clock."""
    app = create_app(
        core.services.settings, engine=core.services.engine, conductor=core.twin, clock=core.clock
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with TestClient(app) as client:
            yield client


def ledger(core: Core, name: str) -> list[Any]:
    """The spec's fires, oldest first."""
    with core.services.db() as session:
        return list(
            session.execute(
                select(
                    Fire.id,
                    Fire.scheduled_at,
                    Fire.manual,
                    Fire.status,
                    Fire.skip_reason,
                    Fire.workflow_id,
                    Fire.outcome,
                    Fire.error,
                )
                .join(BackupSpec, BackupSpec.id == Fire.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Fire.scheduled_at, Fire.id)
            )
        )


def states(core: Core, name: str) -> list[tuple[str, str | None]]:
    return [(row.status, row.skip_reason) for row in ledger(core, name)]


def records(core: Core, name: str) -> list[Any]:
    with core.services.db() as session:
        return list(
            session.execute(
                select(Backup.status, Backup.data_id, Backup.create_workflow_id, Backup.last_error)
                .join(BackupSpec, BackupSpec.id == Backup.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Backup.id)
            )
        )


def fire_due(core: Core, name: str) -> TickReport:
    """Move to the spec's next fire time and run the pass that takes it."""
    core.advance_to(core.due(name), plus=0.2)
    return run_tick(core.services)


def take_backup(core: Core, workflow_id: str) -> str:
    """The storage worker hands over the run's data; apply_retention is left to run."""
    task = core.twin.poll_task(BACKUP, "storage-1")
    assert task is not None and task.workflow_id == workflow_id
    data_id = f"data-{next(_data)}"
    core.twin.update_task(task, "COMPLETED", {"dataId": data_id, "dataSizeMB": 1.0})
    return data_id


def finish(core: Core, workflow_id: str) -> str:
    """The run takes its backup and Backtor records it: create_backup COMPLETED."""
    data_id = take_backup(core, workflow_id)
    recording = core.twin.poll_task(APPLY_RETENTION, "backtor-1")
    assert recording is not None and recording.workflow_id == workflow_id
    outcome = record_backup(core.services, recording.input, recording.workflow_id)
    core.twin.update_task(recording, outcome.status, outcome.output)
    assert core.twin.get_workflow(workflow_id).status is WorkflowStatus.COMPLETED
    return data_id


def attempts_of(core: Core, name: str) -> list[int]:
    with core.services.db() as session:
        return list(
            session.scalars(
                select(Fire.attempts)
                .join(BackupSpec, BackupSpec.id == Fire.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Fire.id)
            )
        )


def runs(core: Core) -> list[Any]:
    return core.twin.workflows(CREATE_BACKUP)


def open_runs(core: Core) -> list[str]:
    return [w.workflow_id for w in runs(core) if w.status.is_open]


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "buffer_free", "this_pass", "action"),
    [
        (OverlapPolicy.SKIP, True, False, OverlapAction.SKIP),
        (OverlapPolicy.BUFFER_ONE, True, False, OverlapAction.BUFFER),
        (OverlapPolicy.BUFFER_ONE, False, False, OverlapAction.SKIP),
        (OverlapPolicy.ALLOW, False, True, OverlapAction.START),
        (OverlapPolicy.TERMINATE_OTHER, True, False, OverlapAction.TERMINATE_AND_START),
        (OverlapPolicy.TERMINATE_OTHER, True, True, OverlapAction.SKIP),
    ],
)
def test_what_a_fire_does_behind_a_running_backup(
    policy: OverlapPolicy, buffer_free: bool, this_pass: bool, action: OverlapAction
) -> None:
    assert on_overlap(policy, buffer_free=buffer_free, started_this_pass=this_pass) is action


# -- skip (the default) --------------------------------------------------------------------


def test_skip_records_the_fire_behind_a_running_backup_as_skipped_running(core: Core) -> None:
    core.add_spec("plain", cron=EVERY_10S)
    assert fire_due(core, "plain").started == 1

    report = fire_due(core, "plain")

    assert (report.started, report.skipped) == (0, 1)
    assert states(core, "plain") == [("STARTED", None), ("SKIPPED", "running")]
    assert len(runs(core)) == 1


# -- bufferOne -----------------------------------------------------------------------------


def test_buffer_one_keeps_one_fire_waiting_and_starts_it_when_the_run_ends(core: Core) -> None:
    core.add_spec("buf", cron=EVERY_10S, overlap_policy="bufferOne")
    assert fire_due(core, "buf").started == 1
    (first,) = open_runs(core)

    second = fire_due(core, "buf")  # buffered behind the first
    third = fire_due(core, "buf")  # the buffer is taken: skipped

    assert (second.started, second.skipped, second.waiting) == (0, 0, 0)
    assert second.healthy  # waiting behind a run is not trouble
    assert (third.started, third.skipped) == (0, 1)
    assert states(core, "buf") == [
        ("STARTED", None),
        ("PENDING", "buffered"),
        ("SKIPPED", "running"),
    ]
    buffered = ledger(core, "buf")[1]
    assert first in buffered.error and buffered.workflow_id is None
    assert open_runs(core) == [first]

    finish(core, first)
    core.advance(BUFFER_POLL.total_seconds())
    run_tick(core.services)  # follows the run that ended
    report = run_tick(core.services)  # nothing holds the buffered fire any more

    assert report.started == 1
    (started,) = [w for w in runs(core) if w.workflow_id != first]
    assert started.input["scheduledTime"] == buffered.scheduled_at.isoformat().replace(
        "+00:00", "Z"
    )
    rows = ledger(core, "buf")
    assert [(r.status, r.skip_reason, r.workflow_id) for r in rows][1] == (
        "STARTED",
        None,
        started.workflow_id,
    )


def test_a_buffered_fire_neither_spins_the_tick_nor_is_claimed_while_it_waits(
    core: Core,
) -> None:
    core.add_spec("calm", cron="0 0 * * * *", overlap_policy="bufferOne")
    assert fire_due(core, "calm").started == 1
    (first,) = open_runs(core)
    core.advance_to(core.due("calm"), plus=0.2)
    report = run_tick(core.services)
    assert states(core, "calm")[-1] == ("PENDING", "buffered")

    # Not due at once: the next pass is the next fire's, or the tick's own beat (at most
    # 4 s), which sees the run end.
    assert report.next_due == core.due("calm")
    attempts = attempts_of(core, "calm")
    for _ in range(5):
        core.advance(4.0)
        with core.services.db.begin() as session:
            assert claim_pending(session, core.now()) == []  # the run Backtor follows runs
        report = run_tick(core.services)
        assert report.next_due == core.due("calm")
    assert attempts_of(core, "calm") == attempts  # never claimed: Conductor not asked in vain
    assert open_runs(core) == [first]

    finish(core, first)
    core.advance(4.0)
    report = run_tick(core.services)  # records the run's end ...
    assert report.next_due == core.now()  # ... and finds the buffered fire due at once
    assert run_tick(core.services).started == 1


def test_a_buffered_fire_outlives_its_misfire_grace(core: Core) -> None:
    core.add_spec("late", cron=EVERY_10S, overlap_policy="bufferOne", misfire_grace_seconds=10)
    assert fire_due(core, "late").started == 1
    (first,) = open_runs(core)
    fire_due(core, "late")  # buffered
    buffered_at = ledger(core, "late")[1].scheduled_at
    for _ in range(6):  # a minute of fires, each skipped: the buffer is taken
        fire_due(core, "late")

    finish(core, first)
    core.advance(BUFFER_POLL.total_seconds())
    run_tick(core.services)
    run_tick(core.services)

    assert core.now() - buffered_at > core.due("late") - core.now()  # well past its grace
    rows = ledger(core, "late")
    assert rows[1].status == "STARTED"
    assert [r.skip_reason for r in rows[2:]] == ["running"] * 6
    assert len(runs(core)) == 2


def test_a_buffered_fire_waits_behind_a_run_backtor_does_not_follow(core: Core) -> None:
    """A run started by hand in Conductor is not in the ledger: polled every BUFFER_POLL."""
    core.add_spec("byhand", cron="0 0 * * * *", overlap_policy="bufferOne")
    by_hand = core.twin.start_workflow(
        CREATE_BACKUP, input={"backupName": "byhand"}, correlation_id="byhand"
    )
    fire_due(core, "byhand")
    assert states(core, "byhand") == [("PENDING", "buffered")]

    core.advance(BUFFER_POLL.total_seconds() / 2)
    with core.services.db.begin() as session:
        assert claim_pending(session, core.now()) == []  # looked at moments ago
    core.advance(BUFFER_POLL.total_seconds())
    report = run_tick(core.services)  # claimed, still behind the run: buffered again
    assert states(core, "byhand") == [("PENDING", "buffered")]
    assert report.next_due == core.due("byhand")  # not at once: no spinning on it

    core.twin.terminate_workflow(by_hand, "test: the operator's run ends")
    core.advance(BUFFER_POLL.total_seconds() + 0.1)
    assert run_tick(core.services).started == 1
    assert states(core, "byhand") == [("STARTED", None)]


def test_a_buffered_fire_stays_buffered_while_conductor_is_down(core: Core) -> None:
    core.add_spec("outage", cron="0 0 * * * *", overlap_policy="bufferOne")
    assert fire_due(core, "outage").started == 1
    (first,) = open_runs(core)
    fire_due(core, "outage")
    finish(core, first)
    core.advance(BUFFER_POLL.total_seconds())
    run_tick(core.services)  # the run's end is recorded
    core.twin.faults.inject(Operation.GET_CORRELATED, FaultKind.UNAVAILABLE)
    core.advance(0.5)
    report = run_tick(core.services)

    assert report.started == 0 and not report.healthy
    assert states(core, "outage")[-1] == ("PENDING", "buffered")  # still exempt from grace
    core.advance(0.5)
    assert run_tick(core.services).started == 1


def test_a_manual_trigger_under_buffer_one_answers_buffered_then_conflict(
    core: Core, api: TestClient
) -> None:
    core.add_spec("mbuf", cron="0 0 0 1 1 *", overlap_policy="bufferOne")
    first = api.post("/backup/mbuf/materialized")
    assert first.status_code == 202 and first.json()["workflowId"]

    second = api.post("/backup/mbuf/materialized")
    third = api.post("/backup/mbuf/materialized")

    assert second.status_code == 202, second.text
    assert second.json() == {"name": "mbuf", "workflowId": None, "buffered": True}
    assert third.status_code == 409
    assert states(core, "mbuf") == [
        ("STARTED", None),
        ("PENDING", "buffered"),
        ("SKIPPED", "running"),
    ]
    finish(core, first.json()["workflowId"])
    core.advance(BUFFER_POLL.total_seconds())
    run_tick(core.services)
    assert run_tick(core.services).started == 1
    assert [r.status for r in ledger(core, "mbuf")] == ["STARTED", "STARTED", "SKIPPED"]


# -- allow ---------------------------------------------------------------------------------


def test_allow_starts_every_fire_beside_the_running_ones(core: Core) -> None:
    core.add_spec("many", cron=EVERY_10S, overlap_policy="allow")
    for _ in range(3):
        assert fire_due(core, "many").started == 1

    assert len(open_runs(core)) == 3
    assert states(core, "many") == [("STARTED", None)] * 3
    for workflow_id in open_runs(core):
        finish(core, workflow_id)
    core.advance(0.5)
    run_tick(core.services)
    assert [r.outcome for r in ledger(core, "many")] == ["COMPLETED"] * 3
    assert len({r.data_id for r in records(core, "many") if r.data_id}) == 3


# -- terminateOther ------------------------------------------------------------------------


def test_terminate_other_terminates_the_running_backup_and_starts(
    core: Core, api: TestClient
) -> None:
    core.add_spec("term", cron=EVERY_10S, overlap_policy="terminateOther")
    assert fire_due(core, "term").started == 1
    (first,) = open_runs(core)

    report = fire_due(core, "term")

    assert (report.started, report.skipped) == (1, 0)
    (second,) = open_runs(core)
    old = core.twin.get_workflow(first)
    rows = ledger(core, "term")
    reason = (
        "terminated by overlapPolicy terminateOther for the fire at "
        f"{rows[1].scheduled_at.isoformat().replace('+00:00', 'Z')} (fire {rows[1].id})"
    )
    assert old.status is WorkflowStatus.TERMINATED and old.reason == reason
    assert [(r.status, r.workflow_id) for r in rows] == [("STARTED", first), ("STARTED", second)]
    assert rows[0].error == reason

    core.advance(0.5)
    run_tick(core.services)  # follows the terminated run
    (record,) = records(core, "term")
    assert (record.status, record.data_id, record.create_workflow_id) == ("FAILED", None, first)
    assert record.last_error == f"create_backup TERMINATED: {reason}"
    assert ledger(core, "term")[0].outcome == "TERMINATED"
    (shown,) = api.get("/backup/term/materialized").json()
    assert shown["status"] == "FAILED" and reason in shown["lastError"]


def test_a_terminated_run_whose_backup_was_taken_keeps_its_data(core: Core) -> None:
    """The `backup` task handed its data over, apply_retention had not run: recorded anyway."""
    core.add_spec("keep", cron=EVERY_10S, overlap_policy="terminateOther")
    assert fire_due(core, "keep").started == 1
    (first,) = open_runs(core)
    data_id = take_backup(core, first)

    assert fire_due(core, "keep").started == 1
    core.advance(0.5)
    run_tick(core.services)

    assert core.twin.get_workflow(first).status is WorkflowStatus.TERMINATED
    assert [(r.status, r.data_id) for r in records(core, "keep")] == [("COMPLETED", data_id)]
    assert ledger(core, "keep")[0].outcome == "TERMINATED"


def test_terminate_other_with_conductor_away_starts_nothing_and_tries_again(core: Core) -> None:
    core.add_spec("retry", cron="0 0 * * * *", overlap_policy="terminateOther")
    assert fire_due(core, "retry").started == 1
    (first,) = open_runs(core)
    core.twin.faults.inject(Operation.TERMINATE_WORKFLOW, FaultKind.UNAVAILABLE)

    report = fire_due(core, "retry")

    assert (report.started, report.waiting) == (0, 1)
    assert open_runs(core) == [first]
    assert states(core, "retry") == [("STARTED", None), ("PENDING", None)]
    core.advance(1.0)
    assert run_tick(core.services).started == 1
    assert core.twin.get_workflow(first).status is WorkflowStatus.TERMINATED
    assert [r.status for r in ledger(core, "retry")] == ["STARTED", "STARTED"]


def test_a_retried_run_terminated_for_a_newer_fire_has_its_data_recorded(core: Core) -> None:
    """Found by the simulation (seed 14764): a failed run retried from Conductor took its
    backup, then terminateOther stopped it for a newer fire before reconcile saw it run
    again. Its fire's outcome was recorded already, so nobody followed the run: the data
    it took stayed stored with no record."""
    core.add_spec("retried", cron=EVERY_10S, overlap_policy="terminateOther")
    assert fire_due(core, "retried").started == 1
    (first,) = open_runs(core)
    task = core.twin.poll_task(BACKUP, "storage-1")
    assert task is not None and task.workflow_id == first
    core.twin.update_task(task, "FAILED_WITH_TERMINAL_ERROR", {}, reason="disk full")
    core.advance(0.5)
    run_tick(core.services)  # the failed run is recorded
    assert ledger(core, "retried")[0].outcome == "FAILED"
    core.twin.retry_workflow(first)  # an operator retries it in Conductor's UI
    data_id = take_backup(core, first)  # its backup is taken; apply_retention not yet run

    assert fire_due(core, "retried").started == 1  # terminateOther stops the retried run
    assert core.twin.get_workflow(first).status is WorkflowStatus.TERMINATED
    core.advance(0.5)
    run_tick(core.services)

    assert ("COMPLETED", data_id, first) in [
        (r.status, r.data_id, r.create_workflow_id) for r in records(core, "retried")
    ]
    assert ledger(core, "retried")[0].outcome == "TERMINATED"


# -- the manual trigger's ?overlap= ---------------------------------------------------------


def test_overlap_overrides_the_spec_policy_for_one_trigger(core: Core, api: TestClient) -> None:
    core.add_spec("over", cron="0 0 0 1 1 *")  # skip
    first = api.post("/backup/over/materialized").json()["workflowId"]
    assert api.post("/backup/over/materialized").status_code == 409

    beside = api.post("/backup/over/materialized", params={"overlap": "allow"})
    assert beside.status_code == 202 and beside.json()["workflowId"] not in (None, first)
    assert len(open_runs(core)) == 2

    replacing = api.post("/backup/over/materialized", params={"overlap": "terminateOther"})
    assert replacing.status_code == 202, replacing.text
    body = replacing.json()
    assert sorted(body["terminated"]) == sorted([first, beside.json()["workflowId"]])
    assert open_runs(core) == [body["workflowId"]]


def test_an_unknown_overlap_is_refused_naming_it(core: Core, api: TestClient) -> None:
    core.add_spec("bad", cron="0 0 0 1 1 *")
    answer = api.post("/backup/bad/materialized", params={"overlap": "replace"})
    assert answer.status_code == 422
    assert answer.json()["field"] == "overlap"
    assert "bufferOne" in answer.json()["message"]
    assert runs(core) == [] and ledger(core, "bad") == []


def test_overlap_policy_is_a_spec_field_validated_by_name(core: Core, api: TestClient) -> None:
    body = {"name": "field", "backupCronString": EVERY_10S}
    assert api.post("/backup", json=body).json()["overlapPolicy"] == "skip"
    refused = api.put("/backup/field", json=body | {"overlapPolicy": "BufferOne"})
    assert refused.status_code == 422 and refused.json()["field"] == "overlapPolicy"
    changed = api.put("/backup/field", json=body | {"overlapPolicy": "bufferOne"})
    assert changed.status_code == 200 and changed.json()["overlapPolicy"] == "bufferOne"
    assert api.get("/backup/field").json()["overlapPolicy"] == "bufferOne"


def test_a_run_terminated_by_the_policy_is_no_failure_of_the_spec(core: Core) -> None:
    """autoPauseAfterFailures counts failed backups; one ended on purpose is none."""
    core.add_spec(
        "nopause", cron=EVERY_10S, overlap_policy="terminateOther", auto_pause_after_failures=1
    )
    assert fire_due(core, "nopause").started == 1
    for _ in range(3):
        assert fire_due(core, "nopause").started == 1
    core.advance(0.5)
    run_tick(core.services)

    assert [r.status for r in records(core, "nopause")] == ["FAILED"] * 3
    with core.services.db() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "nopause"))
        assert spec is not None
        assert (spec.enabled, spec.consecutive_failures, spec.paused_reason) == (True, 0, None)


def test_a_fire_due_as_the_run_ends_starts_after_the_buffered_one_not_before(
    core: Core,
) -> None:
    """The run ended, the ledger does not show it yet, and a new fire is due: the buffered
    fire starts, the new one takes the buffer (never the other way round)."""
    core.add_spec("order", cron=EVERY_10S, overlap_policy="bufferOne")
    assert fire_due(core, "order").started == 1
    (first,) = open_runs(core)
    fire_due(core, "order")  # buffered
    finish(core, first)  # ... and the pass that would follow its end is not run

    report = fire_due(core, "order")

    assert report.started == 1
    rows = ledger(core, "order")
    assert [(r.status, r.skip_reason) for r in rows] == [
        ("STARTED", None),
        ("STARTED", None),  # the one that waited
        ("PENDING", "buffered"),  # the new one waits in its turn
    ]
    (second,) = open_runs(core)
    assert rows[1].workflow_id == second

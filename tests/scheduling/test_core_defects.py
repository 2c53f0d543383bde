"""Regression tests for defects of the scheduling core, each failing on the code before its fix.

SQLite and the Conductor twin in simulated time: fast, deterministic, no server. The twin's
faults are the exceptions the real client raises (tests/contract holds them to it).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from backtor.conductor.names import BACKUP, CREATE_BACKUP, RECORD_REMOVAL, REMOVE, REMOVE_BACKUP
from backtor.conductor.registration import DEFINITIONS
from backtor.conductor.twin import FaultKind, Operation
from backtor.core.cron import CronSchedule
from backtor.core.schedule import MAX_LISTED_MISSES, Timing, decide
from backtor.db import repository
from backtor.db.models import (
    Backup,
    BackupSpec,
    BackupStatus,
    Fire,
    FireStatus,
    MetricCounter,
    SkipReason,
)
from backtor.scheduling.fires import (
    FireJob,
    add_manual_fire,
    claim_pending,
    give_up_fire,
    schedule_due_fires,
    start_fires,
    start_manual_fire,
)
from backtor.scheduling.handlers import record_backup, record_removed_backup
from backtor.scheduling.outcomes import reconcile_fires
from backtor.scheduling.removals import reconcile_removals, start_pending_removals
from backtor.scheduling.tick import TickReport, run_tick
from tests.scheduling.conftest import Core, seconds
from tests.support.threads import run_together


def fires_of(core: Core, name: str) -> list[Any]:
    with core.services.db() as session:
        return list(
            session.execute(
                select(Fire.id, Fire.scheduled_at, Fire.status, Fire.skip_reason, Fire.outcome)
                .join(BackupSpec, BackupSpec.id == Fire.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Fire.scheduled_at)
            )
        )


def started_fire(core: Core, spec_id: int, workflow_id: str, at: datetime, **more: Any) -> int:
    with core.services.db.begin() as session:
        return int(
            session.execute(
                insert(Fire)
                .values(
                    spec_id=spec_id,
                    scheduled_at=at,
                    status=FireStatus.STARTED.value,
                    workflow_id=workflow_id,
                    created_at=at,
                    started_at=at,
                    manual=False,
                    attempts=1,
                    **more,
                )
                .returning(Fire.id)
            ).scalar_one()
        )


def terminated_run(core: Core, name: str) -> str:
    workflow_id = core.twin.start_workflow(
        CREATE_BACKUP, input={"backupName": name}, correlation_id=name
    )
    core.twin.terminate_workflow(workflow_id, "test: ended without data")
    return workflow_id


def test_reconcile_follows_open_runs_however_many_failures_are_watched(core: Core) -> None:
    """Defect 1: failed runs under watch (7 days) filled the batch and starved open runs."""
    spec = core.add_spec("starved")
    now = core.now()
    for i in range(6):  # older ids, all failed within the watch window
        started_fire(
            core,
            spec.id,
            f"gone-{i}",
            now - seconds(600 - i),
            outcome="FAILED",
            finished_at=now - seconds(10),
        )
    fire_id = started_fire(core, spec.id, terminated_run(core, "starved"), now - seconds(5))

    reconcile_fires(core.services, limit=5)

    outcome = {row.id: row.outcome for row in fires_of(core, "starved")}
    assert outcome[fire_id] == "TERMINATED"


def test_one_run_conductor_cannot_show_does_not_stop_the_others(core: Core) -> None:
    """Defect 11: a 500 on one get_workflow aborted the whole reconciliation."""
    spec = core.add_spec("isolated")
    now = core.now()
    first = started_fire(core, spec.id, terminated_run(core, "isolated"), now - seconds(20))
    second = started_fire(core, spec.id, terminated_run(core, "isolated"), now - seconds(10))
    core.twin.faults.inject(Operation.GET_WORKFLOW, FaultKind.SERVER_ERROR)

    reconcile_fires(core.services)

    outcome = {row.id: row.outcome for row in fires_of(core, "isolated")}
    assert outcome[first] is None  # tried again next pass
    assert outcome[second] == "TERMINATED"


def test_a_conductor_500_in_one_stage_does_not_stop_the_pass(core: Core) -> None:
    """Defect 11: a 500 (not only 'unavailable') aborted the whole pass."""
    spec = core.add_spec("stages", cron="0 0 0 1 1 *")
    started_fire(core, spec.id, terminated_run(core, "stages"), core.now() - seconds(5))
    with core.services.db.begin() as session:
        session.execute(
            insert(Backup).values(
                spec_id=spec.id,
                status=BackupStatus.REMOVING.value,
                data_id="data-1",
                scheduled_at=core.now() - seconds(100),
                next_attempt_at=core.now(),
            )
        )
    core.twin.faults.inject(Operation.GET_CORRELATED, FaultKind.SERVER_ERROR)  # reconcile's

    report = run_tick(core.services)

    assert not report.healthy
    assert len(core.twin.workflows(REMOVE_BACKUP)) == 1  # the removal stage still ran


def test_a_fire_claimed_by_another_replica_does_not_spin_the_tick(core: Core) -> None:
    """Defect 12: a PENDING fire claimed elsewhere made next_due 'now': passes back to back."""
    spec = core.add_spec("claimed", cron="0 0 * * * *")
    claim_ends = core.now() + seconds(30)
    with core.services.db.begin() as session:
        session.execute(
            insert(Fire).values(
                spec_id=spec.id,
                scheduled_at=core.now(),
                status=FireStatus.PENDING.value,
                created_at=core.now(),
                manual=False,
                attempts=1,
                claimed_until=claim_ends,
            )
        )

    report = run_tick(core.services)

    assert report.next_due == claim_ends


def test_one_spec_that_cannot_be_evaluated_is_skipped_visibly(core: Core) -> None:
    """Defect 13: an unparseable stored cron or zone stopped every pass for every spec."""
    core.add_spec("good")
    core.add_spec("broken")
    with core.services.db.begin() as session:
        session.execute(
            update(BackupSpec).where(BackupSpec.name == "broken").values(timezone="Mars/Olympus")
        )
    core.advance_to(core.due("good"), plus=0.2)

    report = run_tick(core.services)

    assert report.started == 1
    assert [w.correlation_id for w in core.twin.workflows(CREATE_BACKUP)] == ["good"]
    (fire,) = fires_of(core, "broken")
    assert (fire.status, fire.skip_reason) == ("SKIPPED", SkipReason.INVALID_SCHEDULE.value)
    with core.services.db() as session:
        broken = session.scalar(select(BackupSpec).where(BackupSpec.name == "broken"))
        assert broken is not None and broken.next_fire_at is not None
        assert broken.last_skip_reason == SkipReason.INVALID_SCHEDULE.value
        assert broken.next_fire_at > core.now()


def test_a_fire_left_pending_keeps_its_grace_and_only_the_latest_starts(core: Core) -> None:
    """Defect 4: the oldest PENDING fire started days late; newer ones were 'running'."""
    core.add_spec("late", misfire_grace_seconds=60)
    core.advance_to(core.due("late"), plus=0.2)
    core.twin.faults.inject(Operation.GET_CORRELATED, FaultKind.UNAVAILABLE)
    run_tick(core.services)  # Conductor down: the fire stays PENDING
    (stranded,) = fires_of(core, "late")
    assert stranded.status == "PENDING"

    core.advance(120.0)  # past the grace; a newer fire time is due now
    run_tick(core.services)

    rows = {row.scheduled_at: row for row in fires_of(core, "late")}
    assert (rows[stranded.scheduled_at].status, rows[stranded.scheduled_at].skip_reason) == (
        "SKIPPED",
        "misfire",
    )
    (run,) = core.twin.workflows(CREATE_BACKUP)
    started = [row for row in rows.values() if row.status == "STARTED"]
    assert [row.scheduled_at for row in started] == [max(rows)]
    assert run.fire_id == started[0].id


def test_a_removal_whose_start_answer_was_lost_is_adopted_not_started_twice(core: Core) -> None:
    """Defect 10: after a start that happened but timed out, the retry started a second one."""
    spec = core.add_spec("lost")
    with core.services.db.begin() as session:
        backup_id = session.execute(
            insert(Backup)
            .values(
                spec_id=spec.id,
                status=BackupStatus.REMOVING.value,
                data_id="data-1",
                scheduled_at=core.now(),
                next_attempt_at=core.now(),
            )
            .returning(Backup.id)
        ).scalar_one()
    core.twin.faults.inject(Operation.START_WORKFLOW, FaultKind.LOST_ANSWER)

    assert start_pending_removals(core.services) == 0
    core.advance(1.0)
    assert start_pending_removals(core.services) == 1

    (run,) = core.twin.workflows(REMOVE_BACKUP)
    with core.services.db() as session:
        assert session.scalar(select(Backup.remove_workflow_id).where(Backup.id == backup_id)) == (
            run.workflow_id
        )


def test_a_second_replica_does_not_pass_while_the_first_holds_the_pass(core: Core) -> None:
    """Defect 8: nothing kept two passes apart once Conductor handed the tick out twice."""
    core.add_spec("overlap")
    core.advance_to(core.due("overlap"), plus=0.2)
    second: list[TickReport] = []
    start = core.twin.start_workflow

    def start_while_the_other_replica_passes(*args: Any, **kwargs: Any) -> str:
        if not second:  # replica B runs a whole pass while A's start is under way
            second.append(run_tick(core.services, holder="replica-b"))
        return start(*args, **kwargs)

    core.twin.start_workflow = start_while_the_other_replica_passes  # type: ignore[method-assign]
    first = run_tick(core.services, holder="replica-a")

    assert first.started == 1
    assert second[0].ran is False and second[0].started == 0
    assert second[0].next_due is not None and second[0].next_due > core.now()
    assert len(core.twin.workflows(CREATE_BACKUP)) == 1


def test_a_start_too_close_to_its_claim_lapsing_is_left_for_the_next_attempt(
    core: Core,
) -> None:
    """Defect 8: a start that landed after its claim lapsed raced a second attempt."""
    core.add_spec("lapse", cron="0 0 * * * *", misfire_grace_seconds=3600)
    core.advance_to(core.due("lapse"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        jobs = claim_pending(session, core.now())
    start = core.twin.start_workflow
    raced: list[int] = []

    def slow_start(*args: Any, **kwargs: Any) -> str:
        # This start takes 10 s; the claim lapses meanwhile and another pass comes by.
        core.advance(10.0)
        if not raced:
            raced.append(run_tick(core.services).started)
        return start(*args, **kwargs)

    core.advance(25.0)  # the pass was slow: 5 s of claim left when it reaches the start
    core.twin.start_workflow = slow_start  # type: ignore[method-assign]
    start_fires(core.services, jobs)
    core.twin.start_workflow = start  # type: ignore[method-assign]
    run_tick(core.services)

    runs = core.twin.workflows(CREATE_BACKUP)
    assert len(runs) == 1, [run.workflow_id for run in runs]


def test_a_manual_trigger_and_a_pass_never_start_one_spec_twice(core: Core) -> None:
    """Defect 15: the trigger claimed its own fire while a pass was about to start another."""
    core.add_spec("race", cron="0 0 * * * *")
    core.advance_to(core.due("race"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        pass_jobs = claim_pending(session, core.now())
    with core.services.db.begin() as session:  # the API's request, as trigger_backup does it
        fire_id = add_manual_fire(session, repository.require_spec(session, "race"), core.now())
        api_jobs = claim_pending(session, core.now(), fire_ids=[fire_id])
    start_fires(core.services, api_jobs)
    start_fires(core.services, pass_jobs)

    assert api_jobs == []
    running = [w for w in core.twin.workflows(CREATE_BACKUP) if w.status.is_open]
    assert len(running) == 1


def test_a_paused_backup_still_holds_its_spec(core: Core) -> None:
    """Conductor's open lookup lists RUNNING runs only: a PAUSED one was invisible."""
    core.add_spec("paused", cron="*/10 * * * * *")
    core.advance_to(core.due("paused"), plus=0.2)
    assert run_tick(core.services).started == 1
    (run,) = core.twin.workflows(CREATE_BACKUP)
    core.twin.pause_workflow(run.workflow_id)

    core.advance_to(core.due("paused"), plus=0.2)
    report = run_tick(core.services)

    assert (report.started, report.skipped) == (0, 1)
    assert len(core.twin.workflows(CREATE_BACKUP)) == 1
    skipped = [row for row in fires_of(core, "paused") if row.status == "SKIPPED"]
    assert [row.skip_reason for row in skipped] == ["running"]


def test_misses_after_a_long_outage_are_counted_without_walking_them_all() -> None:
    """Defect 14: counting stopped at 100,000 (a wrong figure) after walking them all."""
    timing = Timing(schedule=CronSchedule("* * * * * *"), tz=ZoneInfo("UTC"))
    due = datetime(2030, 1, 1, tzinfo=UTC)
    now = due + timedelta(days=3)
    decision = decide(timing, due, now)

    true_misses = 3 * 86_400  # every second before the latest, which fires
    assert decision.fire == now
    assert len(decision.missed) == MAX_LISTED_MISSES
    assert abs(len(decision.missed) + decision.more_missed - true_misses) <= true_misses // 100


def test_one_run_gets_one_no_data_record_whatever_writes_it(core: Core) -> None:
    """Defect 8: two passes could both write a FAILED record for one run (no unique key)."""
    spec = core.add_spec("once")
    row = {
        "spec_id": spec.id,
        "status": BackupStatus.FAILED.value,
        "scheduled_at": core.now(),
        "create_workflow_id": "wf-1",
    }
    with core.services.db.begin() as session:
        session.execute(insert(Backup).values(**row))
    with pytest.raises(IntegrityError), core.services.db.begin() as session:
        session.execute(insert(Backup).values(**row))


def take_backup_then_lose_the_recording_worker(core: Core, name: str) -> str:
    """The storage worker takes the backup; the worker that polls apply_retention dies."""
    (backup,) = core.twin.pending_tasks(["backup"])
    polled = core.twin.poll_task("backup", "storage-1")
    assert polled is not None and polled.task_id == backup.task_id
    core.twin.update_task(polled, "COMPLETED", {"dataId": f"{name}-data-1", "dataSizeMB": 1.5})
    recording = core.twin.poll_task("apply_retention", "backtor-worker-that-dies")
    assert recording is not None
    return recording.workflow_id


def records(core: Core, name: str) -> list[tuple[str, str | None]]:
    with core.services.db() as session:
        return [
            (row.status, row.data_id)
            for row in session.execute(
                select(Backup.status, Backup.data_id)
                .join(BackupSpec, BackupSpec.id == Backup.spec_id)
                .where(BackupSpec.name == name)
            )
        ]


def test_a_dead_workers_apply_retention_does_not_stall_the_spec(core: Core) -> None:
    """Defect 16: a worker killed in apply_retention left the run RUNNING for good; every
    later fire was skipped as `running` and the data it took stayed unrecorded."""
    core.add_spec("stall", cron="*/20 * * * * *")
    core.advance_to(core.due("stall"), plus=0.2)
    assert run_tick(core.services).started == 1
    workflow_id = take_backup_then_lose_the_recording_worker(core, "stall")

    core.advance(21.0)  # past apply_retention's response timeout (8 s) and the margin
    report = run_tick(core.services)

    assert records(core, "stall") == [("COMPLETED", "stall-data-1")]
    assert core.twin.get_workflow(workflow_id).status.value == "COMPLETED"
    assert report.started == 1 and report.skipped == 0  # the due fire was not "running"


def test_a_dead_workers_apply_retention_is_repaired_without_a_new_fire(core: Core) -> None:
    """Defect 16, the reconciliation side: the run is looked inside and finished."""
    core.add_spec("quiet", cron="0 0 0 * * *")
    core.advance_to(core.due("quiet"), plus=0.2)
    assert run_tick(core.services).started == 1
    workflow_id = take_backup_then_lose_the_recording_worker(core, "quiet")

    core.advance(6.0)
    run_tick(core.services)
    assert records(core, "quiet") == []  # not before the response timeout has passed

    core.advance(6.0)
    run_tick(core.services)  # looks inside, records and completes the task
    run_tick(core.services)  # follows the completed run
    assert records(core, "quiet") == [("COMPLETED", "quiet-data-1")]
    outcomes = [row.outcome for row in fires_of(core, "quiet")]
    assert core.twin.get_workflow(workflow_id).status.value == "COMPLETED"
    assert outcomes == ["COMPLETED"]


def test_backtors_timeout_counts_from_the_backup_tasks_start_as_the_worker_does(
    core: Core,
) -> None:
    """Defect 9: Backtor counted timeoutSeconds from the workflow's start, the storage worker
    from its poll: a backup finished in time by the worker's count was cut off, its data
    never recorded."""
    core.add_spec("slowpoll", cron="0 0 0 * * *", timeout_seconds=60)
    core.advance_to(core.due("slowpoll"), plus=0.2)
    assert run_tick(core.services).started == 1
    core.advance(50.0)  # the storage workers were busy: the backup is polled late
    polled = core.twin.poll_task("backup", "storage-1")
    assert polled is not None

    core.advance(25.0)  # 75 s after the start, 25 s after the poll
    run_tick(core.services)
    core.advance(25.0)  # the worker finishes 50 s after its poll: in time
    core.twin.update_task(polled, "COMPLETED", {"dataId": "slowpoll-1", "dataSizeMB": 1})
    recording = core.twin.poll_task("apply_retention", "backtor-1")
    assert recording is not None
    outcome = record_backup(core.services, recording.input, recording.workflow_id)
    core.twin.update_task(recording, outcome.status, outcome.output)
    run_tick(core.services)

    assert records(core, "slowpoll") == [("COMPLETED", "slowpoll-1")]
    assert [row.outcome for row in fires_of(core, "slowpoll")] == ["COMPLETED"]


def test_a_backup_nobody_polls_is_terminated_after_its_timeout_and_grace(core: Core) -> None:
    core.add_spec("unpolled", cron="0 0 0 * * *", timeout_seconds=60)
    core.advance_to(core.due("unpolled"), plus=0.2)
    assert run_tick(core.services).started == 1
    core.advance(80.0)
    run_tick(core.services)
    assert [row.outcome for row in fires_of(core, "unpolled")] == [None]  # within the grace

    core.advance(15.0)
    run_tick(core.services)  # terminates
    run_tick(core.services)  # follows the terminated run
    assert [row.outcome for row in fires_of(core, "unpolled")] == ["TERMINATED"]
    assert records(core, "unpolled") == [("TIMED_OUT", None)]


def test_a_fire_an_earlier_attempt_started_is_adopted_before_any_newer_fire_wins(
    core: Core,
) -> None:
    """Seen in the chaos test on PostgreSQL: a worker died after its start and before its
    commit; the fire was then closed as superseded (misfire) by a newer due fire, while its
    workflow ran on, unfollowed."""
    core.add_spec("adopt", cron="*/10 * * * * *")
    core.advance_to(core.due("adopt"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        (job,) = claim_pending(session, core.now())
    started = core.twin.start_workflow(  # the dead worker's start, never recorded
        CREATE_BACKUP,
        input={"backupName": "adopt", "fireId": job.fire_id},
        correlation_id="adopt",
        version=DEFINITIONS.workflow_version(CREATE_BACKUP),
    )

    core.advance(35.0)  # the claim lapses; newer fire times are due
    run_tick(core.services)

    rows = {row.id: row for row in fires_of(core, "adopt")}
    assert rows[job.fire_id].status == "STARTED"
    with core.services.db() as session:
        assert session.scalar(select(Fire.workflow_id).where(Fire.id == job.fire_id)) == started
    assert len(core.twin.workflows(CREATE_BACKUP)) == 1


# --- unfenced-fire-attempt: an attempt that stalls past its claim ----------------------------


def fire_row(core: Core, fire_id: int) -> Any:
    with core.services.db() as session:
        return session.execute(
            select(Fire.status, Fire.workflow_id, Fire.skip_reason).where(Fire.id == fire_id)
        ).one()


def test_an_attempt_that_stalls_into_its_start_never_replaces_the_run_recorded(
    core: Core,
) -> None:
    """unfenced-fire-attempt (seed 977): the claim check passed, then the process stalled
    before its start reached Conductor; another pass took the fire over and started it. The
    stale attempt's start landed all the same, and its record overwrote the fire's run."""
    core.add_spec("stall", cron="0 0 * * * *")
    core.advance_to(core.due("stall"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        (job,) = claim_pending(session, core.now())
    start = core.twin.start_workflow
    taken_over: list[TickReport] = []

    def stalled_start(*args: Any, **kwargs: Any) -> str:
        core.twin.start_workflow = start  # type: ignore[method-assign]
        core.advance(20.0)  # paused between the check and the request: another pass runs
        taken_over.append(run_tick(core.services))
        return start(*args, **kwargs)

    core.twin.start_workflow = stalled_start  # type: ignore[method-assign]
    (outcome,) = start_fires(core.services, [job])

    assert taken_over[0].started == 1
    first, second = core.twin.workflows(CREATE_BACKUP)
    assert fire_row(core, job.fire_id).workflow_id == first.workflow_id  # the run recorded first
    assert outcome.superseded and outcome.workflow_id == first.workflow_id
    assert second.status.value == "TERMINATED"  # the stale attempt's duplicate, stopped
    assert [w.workflow_id for w in core.twin.workflows(CREATE_BACKUP) if w.status.is_open] == [
        first.workflow_id
    ]


def claim_the_due_fire(core: Core, name: str, **fields: Any) -> FireJob:
    """A spec whose first fire is due, written and claimed for one start attempt."""
    core.add_spec(name, cron="0 0 * * * *", **fields)
    core.advance_to(core.due(name), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        (job,) = claim_pending(session, core.now())
    return job


def start_arrives_late(core: Core, seconds: float, meanwhile: Any = None) -> None:
    """The next start_workflow reaches the twin `seconds` later; `meanwhile` runs then."""
    start = core.twin.start_workflow

    def late_start(*args: Any, **kwargs: Any) -> str:
        core.twin.start_workflow = start  # type: ignore[method-assign]
        core.advance(seconds)
        if meanwhile is not None:
            meanwhile()
        return start(*args, **kwargs)

    core.twin.start_workflow = late_start  # type: ignore[method-assign]


def test_a_start_that_reaches_conductor_after_its_claim_lapsed_takes_no_backup(
    core: Core,
) -> None:
    """start-sent-after-the-claim-lapsed (seeds 307, 517, 799, 1147 of session 3): the stale
    attempt's start reached Conductor after another pass had started the fire. The run it
    made was terminated on sight, but it was a second start of the fire, and its `backup`
    task was already scheduled. Now its startBy fences it inside Conductor: no backup."""
    job = claim_the_due_fire(core, "stall")
    takeovers: list[int] = []
    # Paused between the check and the request for longer than the claim: another pass runs.
    start_arrives_late(core, 20.0, lambda: takeovers.append(run_tick(core.services).started))
    start_fires(core.services, [job])

    assert takeovers == [1]
    first, late = core.twin.workflows(CREATE_BACKUP)
    assert late.fenced and late.reason is not None and late.reason.startswith("start fenced: ")
    assert [bool(run.tasks_of_type(BACKUP)) for run in (first, late)] == [True, False]
    assert fire_row(core, job.fire_id).workflow_id == first.workflow_id
    assert len(core.twin.pending_tasks([BACKUP])) == 1  # one backup for the fire, not two


def test_a_fenced_run_the_fire_recorded_puts_the_fire_back_to_pending(core: Core) -> None:
    """A start that arrived past its startBy while nobody took the fire over: the fire's
    recorded run took no backup. Following it, the tick makes the fire PENDING again and
    starts it, within its grace; nothing is recorded as a failed backup."""
    job = claim_the_due_fire(core, "late", misfire_grace_seconds=3600)
    start_arrives_late(core, 10.0)  # in flight past startBy (claim end - 3 s), not its end
    (outcome,) = start_fires(core.services, [job])
    (fenced,) = core.twin.workflows(CREATE_BACKUP)
    assert fenced.fenced and outcome.workflow_id == fenced.workflow_id
    assert fire_row(core, job.fire_id).workflow_id == fenced.workflow_id  # recorded: STARTED

    core.advance(1.0)
    report = run_tick(core.services)  # follows the fenced run: the fire is PENDING again
    assert fire_row(core, job.fire_id).status == FireStatus.PENDING.value
    assert report.next_due is not None and report.next_due <= core.now()  # due at once
    run_tick(core.services)  # and starts it
    runs = core.twin.workflows(CREATE_BACKUP)
    assert len(runs) == 2 and runs[1].tasks_of_type(BACKUP) and not runs[1].fenced
    row = fire_row(core, job.fire_id)
    assert (row.status, row.workflow_id) == (FireStatus.STARTED.value, runs[1].workflow_id)
    with core.services.db() as session:
        assert session.scalars(select(Backup.status)).all() == []  # no failed backup


def test_a_stalled_manual_attempt_never_overwrites_a_fire_another_attempt_started(
    core: Core,
) -> None:
    """unfenced-fire-attempt (seeds 606, 1009): a trigger saw a run of its spec open, then
    stalled past its claim; the run ended and a pass took the fire and started it. The
    trigger then recorded its stale "skipped, running" over STARTED: the ledger lost the run."""
    core.add_spec("manual", cron="0 0 0 1 1 *")
    other = core.twin.start_workflow(  # a run of the spec, started from Conductor's UI
        CREATE_BACKUP, input={"backupName": "manual"}, correlation_id="manual"
    )
    core.advance(11.0)  # old enough to be looked inside (a dead worker's task?) before a skip
    with core.services.db.begin() as session:
        fire_id = add_manual_fire(session, repository.require_spec(session, "manual"), core.now())
        (job,) = claim_pending(session, core.now(), fire_ids=[fire_id])
    get_workflow = core.twin.get_workflow
    passed: list[TickReport] = []

    def stalled_look(*args: Any, **kwargs: Any) -> Any:
        core.twin.get_workflow = get_workflow  # type: ignore[method-assign]
        core.twin.terminate_workflow(other, "test: ended while the trigger stalled")
        core.advance(20.0)  # the trigger's claim lapses; a pass takes the fire and starts it
        passed.append(run_tick(core.services))
        return get_workflow(*args, **kwargs)

    core.twin.get_workflow = stalled_look  # type: ignore[method-assign]
    start = start_manual_fire(core.services, job)
    if start.outcome.status is FireStatus.PENDING and not start.unconfirmed:
        with core.services.db() as session:  # what the route does with such an answer
            give_up_fire(session, fire_id, core.now())

    run = core.twin.workflows(CREATE_BACKUP)[-1]
    assert passed[0].started == 1 and run.workflow_id != other
    assert tuple(fire_row(core, fire_id)) == ("STARTED", run.workflow_id, None)
    assert (start.outcome.status, start.outcome.workflow_id) == (
        FireStatus.STARTED,
        run.workflow_id,
    )


def test_an_attempt_whose_spec_was_deleted_meanwhile_stops_its_run(core: Core) -> None:
    """unfenced-fire-attempt (seeds 1834, 1887): the fire's spec was purged while an attempt
    stalled; its record raised StaleDataError and the whole pass died."""
    spec = core.add_spec("purged", cron="0 0 * * * *")
    core.advance_to(core.due("purged"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now())
    with core.services.db.begin() as session:
        (job,) = claim_pending(session, core.now())
    start = core.twin.start_workflow

    def start_after_the_purge(*args: Any, **kwargs: Any) -> str:
        with core.services.db.begin() as session:
            repository.delete_spec(session, spec.id)
        return start(*args, **kwargs)

    core.twin.start_workflow = start_after_the_purge  # type: ignore[method-assign]
    (outcome,) = start_fires(core.services, [job])
    core.twin.start_workflow = start  # type: ignore[method-assign]

    (run,) = core.twin.workflows(CREATE_BACKUP)
    assert outcome.superseded
    assert run.status.value == "TERMINATED"


# --- removal-bookkeeping-after-purge ----------------------------------------------------------


def removing_backup(core: Core, spec_id: int, data_id: str = "data-1", **fields: Any) -> int:
    with core.services.db.begin() as session:
        return int(
            session.execute(
                insert(Backup)
                .values(
                    **{
                        "spec_id": spec_id,
                        "status": BackupStatus.REMOVING.value,
                        "data_id": data_id,
                        "scheduled_at": core.now(),
                        "next_attempt_at": core.now(),
                        **fields,
                    }
                )
                .returning(Backup.id)
            ).scalar_one()
        )


def finish_removal(core: Core, workflow_id: str) -> None:
    """The storage worker removes the data; Backtor's worker records the removal."""
    removal = core.twin.poll_task(REMOVE, "storage-1")
    assert removal is not None and removal.workflow_id == workflow_id
    core.twin.update_task(removal, "COMPLETED", {})
    recording = core.twin.poll_task(RECORD_REMOVAL, "backtor-1")
    assert recording is not None
    outcome = record_removed_backup(core.services, recording.input, recording.workflow_id)
    core.twin.update_task(recording, outcome.status, outcome.output)


def test_removal_bookkeeping_survives_the_purge_its_removal_finished(core: Core) -> None:
    """removal-bookkeeping-after-purge (seeds 429, 667, 720, 736): the last removal of a purge
    ran and was recorded before its start was written down; when that deleted the spec and
    its rows at once, the ORM bulk UPDATE by primary key raised StaleDataError and the pass
    died. (The purge now ends when the scheduler sees that run end.)"""
    spec = core.add_spec("gone", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    with core.services.db.begin() as session:
        repository.mark_purging(session, repository.require_spec(session, "gone"), core.now())
    start = core.twin.start_workflow

    def start_and_finish(*args: Any, **kwargs: Any) -> str:
        workflow_id = start(*args, **kwargs)
        finish_removal(core, workflow_id)  # record_removal finishes the purge
        return workflow_id

    core.twin.start_workflow = start_and_finish  # type: ignore[method-assign]
    start_pending_removals(core.services)
    core.twin.start_workflow = start  # type: ignore[method-assign]

    (run,) = core.twin.workflows(REMOVE_BACKUP)
    assert run.status.value == "COMPLETED"
    # The purge ends once the scheduler has seen the run that recorded the last removal end.
    with core.services.db() as session:
        assert session.get(Backup, backup_id).status == "REMOVED"  # type: ignore[union-attr]
    reconcile_removals(core.services)
    with core.services.db() as session:
        assert session.get(BackupSpec, spec.id) is None
        assert session.get(Backup, backup_id) is None


def test_a_removal_with_no_clear_answer_that_completed_is_not_started_again(
    core: Core,
) -> None:
    """removal-bookkeeping-after-purge, found beside it: a start answered with a garbled 2xx
    (it happened) was retried as not started; the retry looked for open runs only, so a run
    that completed meanwhile was not found and a second remove_backup completed."""
    spec = core.add_spec("twice", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    core.twin.faults.inject(Operation.START_WORKFLOW, FaultKind.BAD_ANSWER)
    assert start_pending_removals(core.services) == 0  # it did start, unknown to Backtor
    (lost,) = core.twin.workflows(REMOVE_BACKUP)
    lookup = core.twin.workflows_by_correlation

    def finished_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if core.twin.get_workflow(lost.workflow_id).status.is_open:
            finish_removal(core, lost.workflow_id)  # between the retry's claim and its look
        return lookup(*args, **kwargs)

    core.twin.workflows_by_correlation = finished_meanwhile  # type: ignore[method-assign]
    core.advance(1.0)
    start_pending_removals(core.services)
    core.twin.workflows_by_correlation = lookup  # type: ignore[method-assign]

    assert [run.workflow_id for run in core.twin.workflows(REMOVE_BACKUP)] == [lost.workflow_id]
    with core.services.db() as session:
        assert session.scalar(select(Backup.status).where(Backup.id == backup_id)) == "REMOVED"


# --- removal-start-sent-after-the-claim-lapsed -----------------------------------------------


def removal_row(core: Core, backup_id: int) -> Any:
    with core.services.db() as session:
        return session.execute(
            select(
                Backup.status, Backup.remove_workflow_id, Backup.remove_attempts, Backup.last_error
            ).where(Backup.id == backup_id)
        ).one()


def test_a_removal_start_that_reaches_conductor_after_its_claim_lapsed_removes_nothing(
    core: Core,
) -> None:
    """removal-start-sent-after-the-claim-lapsed (soak seed 20194): an attempt stalled between
    its claim check and its start for longer than the claim; another attempt took the backup
    over and removed it. The stale start still reached Conductor and removed the data a
    second time. Now its startBy fences it inside Conductor: no `remove` task."""
    spec = core.add_spec("stall", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    takeovers: list[int] = []

    def take_over_and_remove() -> None:
        takeovers.append(start_pending_removals(core.services))
        (run,) = core.twin.workflows(REMOVE_BACKUP)
        finish_removal(core, run.workflow_id)

    # Paused between the check and the request for longer than the claim (30 s).
    start_arrives_late(core, 31.0, take_over_and_remove)
    assert start_pending_removals(core.services) == 0

    assert takeovers == [1]
    first, late = core.twin.workflows(REMOVE_BACKUP)
    assert late.fenced and late.reason is not None and late.reason.startswith("start fenced: ")
    assert late.status.value == "TERMINATED" and dict(late.output)["fenced"] is True
    assert [bool(run.tasks_of_type(REMOVE)) for run in (first, late)] == [True, False]
    assert core.twin.pending_tasks([REMOVE]) == []  # removed once, not twice
    row = removal_row(core, backup_id)
    assert (row.status, row.remove_workflow_id) == ("REMOVED", first.workflow_id)


@pytest.mark.parametrize(
    ("status", "attempts"), [("REMOVING", 0), ("REMOVE_FAILED", 3)], ids=["removing", "failed"]
)
def test_a_fenced_removal_the_backup_recorded_is_handed_back_not_failed(
    core: Core, status: str, attempts: int
) -> None:
    """A removal start that arrived past its startBy while nobody took the backup over: the
    backup's recorded run removed nothing. Following it, the pass neither records the backup
    REMOVED nor counts a failed removal: the backup is back in the outbox, and the next pass
    removes it."""
    spec = core.add_spec("late", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id, status=status, remove_attempts=attempts)
    start_arrives_late(core, 28.0)  # in flight past startBy (claim end - 3 s), not its end
    assert start_pending_removals(core.services) == 1
    (fenced,) = core.twin.workflows(REMOVE_BACKUP)
    assert fenced.fenced and not fenced.tasks_of_type(REMOVE)
    assert removal_row(core, backup_id).remove_workflow_id == fenced.workflow_id

    core.advance(1.0)
    reconcile_removals(core.services)
    row = removal_row(core, backup_id)
    assert (row.status, row.remove_workflow_id, row.remove_attempts) == (status, None, attempts)
    assert row.last_error is not None and row.last_error.startswith("start fenced: ")
    with core.services.db() as session:  # no failed removal counted
        assert session.scalars(select(MetricCounter.name)).all() == []

    assert start_pending_removals(core.services) == 1  # due at once
    first, again = core.twin.workflows(REMOVE_BACKUP)
    assert first.workflow_id == fenced.workflow_id and not again.fenced
    finish_removal(core, again.workflow_id)
    reconcile_removals(core.services)
    assert removal_row(core, backup_id).status == "REMOVED"


def test_a_fenced_removal_start_never_displaces_the_run_of_the_attempt_that_took_over(
    core: Core,
) -> None:
    """Found beside removal-start-sent-after-the-claim-lapsed: the stale attempt's start was
    fenced, but it recorded that run on the backup while another attempt, holding a live
    claim, had its own start in flight; that attempt then found the backup taken and
    terminated its own removal, the one that was admitted. A run is now recorded only by the
    attempt whose claim the row holds, or when no live claim is held."""
    spec = core.add_spec("displaced", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    start = core.twin.start_workflow
    lock = threading.Lock()
    calls: list[int] = []
    stale_stalled, taken_over_in_flight, stale_recorded = (threading.Event() for _ in range(3))

    def start_in_turn(*args: Any, **kwargs: Any) -> str:
        with lock:
            calls.append(len(calls))
            stale = len(calls) == 1
        if stale:  # paused past its claim; lands while the other attempt's start is in flight
            stale_stalled.set()
            assert taken_over_in_flight.wait(10)
            return start(*args, **kwargs)
        workflow_id = start(*args, **kwargs)
        taken_over_in_flight.set()
        assert stale_recorded.wait(10)  # the stale attempt records before this one does
        return workflow_id

    def stale_attempt() -> int:
        started = start_pending_removals(core.services)
        stale_recorded.set()
        return started

    def taking_over() -> int:
        assert stale_stalled.wait(10)
        core.advance(31.0)  # the stale claim (30 s) lapsed: this attempt claims the backup
        return start_pending_removals(core.services)

    core.twin.start_workflow = start_in_turn  # type: ignore[method-assign]
    try:
        assert run_together([stale_attempt, taking_over], timeout=30) == [0, 1]
    finally:
        core.twin.start_workflow = start  # type: ignore[method-assign]

    (fenced,) = [run for run in core.twin.workflows(REMOVE_BACKUP) if run.fenced]
    (admitted,) = [run for run in core.twin.workflows(REMOVE_BACKUP) if not run.fenced]
    assert admitted.status.value == "RUNNING" and admitted.tasks_of_type(REMOVE)
    assert removal_row(core, backup_id).remove_workflow_id == admitted.workflow_id
    finish_removal(core, admitted.workflow_id)
    assert removal_row(core, backup_id).status == "REMOVED"
    assert fenced.workflow_id != admitted.workflow_id


# --- manual-fire-at-fire-time -----------------------------------------------------------------


def test_a_manual_fire_at_the_instant_of_a_fire_time_leaves_that_fire_its_row(
    core: Core,
) -> None:
    """manual-fire-at-fire-time (seed 1438): a trigger at the very instant of a fire time
    took the (spec, time) key, and the scheduled fire got no row (on conflict, nothing)."""
    spec_id = core.add_spec("instant", cron="0 0 * * * *").id
    due = core.due("instant")
    core.advance_to(due)
    with core.services.db.begin() as session:
        manual_id = add_manual_fire(
            session, repository.require_spec(session, "instant"), core.now()
        )
        (job,) = claim_pending(session, core.now(), fire_ids=[manual_id])
    start_manual_fire(core.services, job)

    run_tick(core.services)

    with core.services.db() as session:
        rows = session.execute(
            select(Fire.id, Fire.manual, Fire.status, Fire.skip_reason).where(
                Fire.spec_id == spec_id, Fire.scheduled_at == due
            )
        ).all()
    by_kind = {row.manual: row for row in rows}
    assert (by_kind[True].id, by_kind[True].status) == (manual_id, "STARTED")
    assert (by_kind[False].status, by_kind[False].skip_reason) == ("SKIPPED", "running")


def test_a_chunk_is_not_filled_with_fires_whose_spec_is_held(core: Core) -> None:
    """Found by the simulation with chunks of one fire (seed 716): the candidates were cut
    by the chunk's LIMIT before fires of specs under a live claim were dropped, so a chunk
    of them claimed nothing while another spec's fire waited; _next_due still said work was
    ready, and passes ran back to back (thousands in 24 simulated seconds)."""
    held = core.add_spec("held", cron="0 0 0 1 1 *")
    free = core.add_spec("free", cron="0 0 0 1 1 *")
    now = core.now()
    with core.services.db.begin() as session:
        for spec_id, at, claimed_until in (
            (held.id, now - seconds(30), now + seconds(10)),  # another attempt decides it
            (held.id, now - seconds(20), None),  # waits for that claim
            (free.id, now - seconds(10), None),  # claimable
        ):
            session.execute(
                insert(Fire).values(
                    spec_id=spec_id,
                    scheduled_at=at,
                    status=FireStatus.PENDING.value,
                    claimed_until=claimed_until,
                    created_at=at,
                    manual=False,
                    attempts=1 if claimed_until else 0,
                )
            )

    with core.services.db.begin() as session:
        jobs = claim_pending(session, now, limit=1)

    assert [job.spec_name for job in jobs] == ["free"]


# --- a dead worker's record_removal ------------------------------------------------------------


def test_a_dead_workers_record_removal_is_repaired_and_the_removal_recorded(core: Core) -> None:
    """Defect 16, the removal side (found by the end-to-end SIGKILL test on PostgreSQL-backed
    Conductor): a worker killed in record_removal left remove_backup RUNNING and the backup
    REMOVING for minutes, its data already gone, while Conductor's sweeper never came by."""
    spec = core.add_spec("unrecorded", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    assert start_pending_removals(core.services) == 1
    (run,) = core.twin.workflows(REMOVE_BACKUP)
    removal = core.twin.poll_task(REMOVE, "storage-1")
    assert removal is not None and removal.workflow_id == run.workflow_id
    core.twin.update_task(removal, "COMPLETED", {})
    assert core.twin.poll_task(RECORD_REMOVAL, "backtor-worker-that-dies") is not None

    core.advance(5.0)  # inside record_removal's response timeout (8 s): the worker may live
    run_tick(core.services)
    assert removal_row(core, backup_id).status == "REMOVING"

    core.advance(16.0)  # past the response timeout and the margin
    run_tick(core.services)
    assert removal_row(core, backup_id).status == "REMOVED"
    assert core.twin.get_workflow(run.workflow_id).status.value == "COMPLETED"
    run_tick(core.services)  # the run's end is followed once more and changes nothing
    assert removal_row(core, backup_id).status == "REMOVED"
    assert len(core.twin.workflows(REMOVE_BACKUP)) == 1


def test_a_record_removal_that_died_after_recording_is_followed_until_its_run_ends(
    core: Core,
) -> None:
    """Seed 30318: the worker recorded the backup REMOVED, then died before reporting the
    task. The row was no longer followed (it is not REMOVING), so the run stayed open for
    good; had it been a purge's last removal, the spec was deleted under an open run."""
    spec = core.add_spec("recorded-then-died", cron="0 0 0 1 1 *")
    backup_id = removing_backup(core, spec.id)
    with core.services.db.begin() as session:
        repository.mark_purging(
            session, repository.require_spec(session, "recorded-then-died"), core.now()
        )
    assert start_pending_removals(core.services) == 1
    (run,) = core.twin.workflows(REMOVE_BACKUP)
    removal = core.twin.poll_task(REMOVE, "storage-1")
    assert removal is not None
    core.twin.update_task(removal, "COMPLETED", {})
    recording = core.twin.poll_task(RECORD_REMOVAL, "backtor-worker-that-dies")
    assert recording is not None
    record_removed_backup(core.services, recording.input, recording.workflow_id)  # then dies

    assert removal_row(core, backup_id).status == "REMOVED"
    run_tick(core.services)
    with core.services.db() as session:  # the purge waits for the run to be seen ending
        assert session.get(BackupSpec, spec.id) is not None

    core.advance(21.0)  # past record_removal's response timeout and the margin, twice a look
    run_tick(core.services)
    assert core.twin.get_workflow(run.workflow_id).status.value == "COMPLETED"
    run_tick(core.services)
    with core.services.db() as session:
        assert session.get(BackupSpec, spec.id) is None
        assert session.get(Backup, backup_id) is None
    assert len(core.twin.workflows(REMOVE_BACKUP)) == 1

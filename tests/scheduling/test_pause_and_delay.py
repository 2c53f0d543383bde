"""Pause with a reason, auto-pause after failures, and the removal delay (issue 12).

SQLite and the Conductor twin under a manual clock: backups are taken through the real
path (a pass starts create_backup, the storage task completes or fails, apply_retention
records it, the next pass follows the run), removals through the removal outbox.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from backtor.api import routes
from backtor.conductor.names import APPLY_RETENTION, BACKUP, REMOVE_BACKUP
from backtor.core.errors import Conflict
from backtor.db import repository
from backtor.db.models import Backup, BackupSpec, BackupStatus, Fire, FireStatus
from backtor.scheduling.handlers import record_backup
from backtor.scheduling.pins import NotPinnable, set_pinned
from backtor.scheduling.recording import apply_plan, count_failure, record_failed, rescue_kept
from backtor.scheduling.removals import start_pending_removals
from backtor.scheduling.tick import run_tick
from tests.scheduling.conftest import Core
from tests.scheduling.test_core_defects import finish_removal

HOURLY = "0 0 * * * *"
# Two minutely representatives and the newest: with one backup an hour, the third backup
# makes the oldest one go.
KEEP_TWO = {
    "retentionMinutely": "2",
    "retentionHourly": "0",
    "retentionDaily": "0",
    "retentionWeekly": "0",
    "retentionMonthly": "0",
    "retentionYearly": "0",
}
_data = itertools.count(1)


def configure(core: Core, name: str, **columns: Any) -> None:
    """Set spec columns directly (what the API stores for the new fields)."""
    with core.services.db.begin() as session:
        session.execute(update(BackupSpec).where(BackupSpec.name == name).values(**columns))


def spec_row(core: Core, name: str) -> BackupSpec:
    with core.services.db() as session:
        spec = repository.get_spec(session, name)
        assert spec is not None
        return spec


def backups(core: Core, name: str) -> list[Backup]:
    """The spec's backups, oldest first."""
    with core.services.db() as session:
        return list(
            session.scalars(
                select(Backup)
                .join(BackupSpec, BackupSpec.id == Backup.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Backup.scheduled_at, Backup.id)
            )
        )


def statuses(core: Core, name: str) -> list[str]:
    return [b.status for b in backups(core, name)]


def take_backup(core: Core, name: str, *, fail: bool = False) -> None:
    """The spec's next scheduled backup, taken (or failed) and recorded, the run followed."""
    core.advance_to(core.due(name), plus=0.2)
    assert run_tick(core.services).started == 1
    task = core.twin.poll_task(BACKUP, "storage-1")
    assert task is not None
    if fail:
        core.twin.update_task(task, "FAILED_WITH_TERMINAL_ERROR", {}, reason="disk full")
    else:
        output = {"dataId": f"{name}-data-{next(_data)}", "dataSizeMB": 1.0}
        core.twin.update_task(task, "COMPLETED", output)
        recording = core.twin.poll_task(APPLY_RETENTION, "backtor-1")
        assert recording is not None
        outcome = record_backup(core.services, recording.input, recording.workflow_id)
        core.twin.update_task(recording, outcome.status, outcome.output)
    core.advance(0.5)
    run_tick(core.services)  # follows the run that ended: a failure is recorded here


# -- counting and auto-pause -------------------------------------------------------------


def test_failures_are_counted_and_the_nth_in_a_row_pauses_the_spec(core: Core) -> None:
    core.add_spec("flaky", cron=HOURLY)
    configure(core, "flaky", auto_pause_after_failures=3)
    take_backup(core, "flaky", fail=True)
    take_backup(core, "flaky", fail=True)
    spec = spec_row(core, "flaky")
    assert (spec.consecutive_failures, spec.enabled, spec.paused_reason) == (2, True, None)

    take_backup(core, "flaky", fail=True)

    spec = spec_row(core, "flaky")
    assert spec.consecutive_failures == 3
    assert spec.enabled is False
    assert spec.next_fire_at is None  # as a PUT with enabled 0 leaves it
    assert spec.last_update == core.now()
    assert spec.paused_reason is not None
    assert spec.paused_reason.startswith(
        "auto-paused after 3 consecutive failed backups; last: create_backup FAILED"
    )
    assert statuses(core, "flaky") == ["FAILED"] * 3
    # Paused: nothing fires any more, however long the scheduler runs.
    core.advance(3 * 3600)
    assert run_tick(core.services).started == 0
    assert len(core.twin.workflows("create_backup")) == 3


def test_a_success_resets_the_count(core: Core) -> None:
    core.add_spec("recovers", cron=HOURLY)
    configure(core, "recovers", auto_pause_after_failures=3)
    take_backup(core, "recovers", fail=True)
    take_backup(core, "recovers", fail=True)
    take_backup(core, "recovers")
    assert spec_row(core, "recovers").consecutive_failures == 0
    take_backup(core, "recovers", fail=True)
    take_backup(core, "recovers", fail=True)

    spec = spec_row(core, "recovers")
    assert (spec.consecutive_failures, spec.enabled) == (2, True)  # 2 in a row, not 4


def test_zero_never_pauses(core: Core) -> None:
    core.add_spec("stubborn", cron=HOURLY)
    for _ in range(4):
        take_backup(core, "stubborn", fail=True)
    spec = spec_row(core, "stubborn")
    assert (spec.consecutive_failures, spec.enabled, spec.paused_reason) == (4, True, None)


def test_a_failure_recorded_twice_counts_once(core: Core) -> None:
    """Two passes that see one run end write one record: the count follows the record."""
    spec = core.add_spec("once", cron=HOURLY)
    for _ in range(2):
        with core.services.db.begin() as session:
            stored = session.get(BackupSpec, spec.id)
            assert stored is not None
            record_failed(
                session,
                stored,
                workflow_id="wf-1",
                status=BackupStatus.TIMED_OUT,
                scheduled_at=core.now(),
                start_time=None,
                end_time=core.now(),
                error="create_backup TIMED_OUT",
            )
    assert spec_row(core, "once").consecutive_failures == 1


def test_the_count_is_added_in_sql_not_from_the_loaded_row(core: Core) -> None:
    """A spec object loaded before another recording committed still counts one more: the
    increment is `consecutive_failures + 1` in the UPDATE, and the pause is decided on the
    value it returns (PostgreSQL: tests/integration/test_auto_pause_concurrency.py)."""
    spec = core.add_spec("stale", cron=HOURLY)
    configure(core, "stale", auto_pause_after_failures=2)
    with core.services.db() as reader:
        stale = reader.get(BackupSpec, spec.id)  # consecutive_failures 0, kept in memory
        assert stale is not None and stale.consecutive_failures == 0
    with core.services.db.begin() as session:
        first = session.get(BackupSpec, spec.id)
        assert first is not None
        assert count_failure(session, first, core.now(), "first").consecutive == 1
    with core.services.db.begin() as session:
        second = session.merge(stale, load=False)  # the stale copy, not reloaded
        result = count_failure(session, second, core.now(), "second")
    assert (result.consecutive, result.paused) == (2, True)
    row = spec_row(core, "stale")
    assert (row.consecutive_failures, row.enabled) == (2, False)
    assert row.paused_reason == "auto-paused after 2 consecutive failed backups; last: second"


def test_an_auto_pause_takes_the_fire_already_due_as_a_disable_does(core: Core) -> None:
    """Paused while a fire time is due and not yet processed: the fire is settled (taken),
    as before a PUT with enabled 0; none after it."""
    core.add_spec("due", cron="*/10 * * * * *")
    configure(core, "due", auto_pause_after_failures=1)
    core.advance_to(core.due("due"), plus=0.2)
    assert run_tick(core.services).started == 1
    task = core.twin.poll_task(BACKUP, "storage-1")
    assert task is not None
    core.twin.update_task(task, "FAILED_WITH_TERMINAL_ERROR", {}, reason="disk full")
    due = core.due("due")
    core.advance_to(due, plus=0.1)  # the next fire time is due when the failure is seen
    with core.services.db.begin() as session:
        stored = repository.require_spec(session, "due")
        result = record_failed(
            session,
            stored,
            workflow_id=task.workflow_id,
            status=BackupStatus.FAILED,
            scheduled_at=due - timedelta(seconds=10),
            start_time=None,
            end_time=core.now(),
            error="create_backup FAILED: disk full",
            now=core.now(),
        )
    assert result.paused
    with core.services.db() as session:
        fires = session.execute(
            select(Fire.scheduled_at, Fire.status).order_by(Fire.scheduled_at)
        ).all()
    assert [(f.scheduled_at, f.status) for f in fires][-1] == (due, FireStatus.PENDING.value)
    spec = spec_row(core, "due")
    assert (spec.enabled, spec.next_fire_at) == (False, None)


def test_a_paused_spec_counts_on_without_pausing_again(core: Core) -> None:
    spec = core.add_spec("twice", cron=HOURLY)
    configure(core, "twice", auto_pause_after_failures=1)
    with core.services.db.begin() as session:
        stored = session.get(BackupSpec, spec.id)
        assert stored is not None
        assert count_failure(session, stored, core.now(), "one").paused
    with core.services.db.begin() as session:
        stored = session.get(BackupSpec, spec.id)
        assert stored is not None
        again = count_failure(session, stored, core.now(), "two")
    assert (again.consecutive, again.paused) == (2, False)
    assert spec_row(core, "twice").paused_reason == (
        "auto-paused after 1 consecutive failed backups; last: one"
    )


# -- the removal delay -------------------------------------------------------------------


def delayed_spec(core: Core, name: str, delay: int) -> None:
    core.add_spec(name, cron=HOURLY, retention=KEEP_TWO)
    configure(core, name, removal_delay_seconds=delay)


def test_without_a_delay_a_removal_starts_as_before(core: Core) -> None:
    delayed_spec(core, "nodelay", 0)
    for _ in range(3):
        take_backup(core, "nodelay")
    oldest = backups(core, "nodelay")[0]
    assert oldest.expires_at is None
    assert oldest.status in (BackupStatus.REMOVING.value, BackupStatus.REMOVED.value)
    assert core.twin.workflows(REMOVE_BACKUP)  # started by the pass right after


def test_a_removed_backup_expires_then_goes_after_the_delay(core: Core) -> None:
    delayed_spec(core, "later", 300)
    for _ in range(3):
        take_backup(core, "later")
    oldest = backups(core, "later")[0]
    marked_at = core.now() - timedelta(seconds=0.5)  # recorded before the follow-up pass
    assert oldest.status == BackupStatus.EXPIRING.value
    assert oldest.expires_at == marked_at + timedelta(seconds=300)
    assert statuses(core, "later") == ["EXPIRING", "COMPLETED", "COMPLETED"]

    core.advance_to(oldest.expires_at, plus=-1)
    run_tick(core.services)
    assert statuses(core, "later")[0] == "EXPIRING"
    assert not core.twin.workflows(REMOVE_BACKUP)  # nothing before expiresAt

    core.advance(1.0)
    run_tick(core.services)
    (run,) = core.twin.workflows(REMOVE_BACKUP)
    assert run.input["backupId"] == oldest.id
    assert run.start_time is not None and run.start_time >= oldest.expires_at
    finish_removal(core, run.workflow_id)
    gone = backups(core, "later")[0]
    assert (gone.status, gone.expires_at) == ("REMOVED", oldest.expires_at)
    assert statuses(core, "later")[1:] == ["COMPLETED", "COMPLETED"]


def test_a_pin_rescues_an_expiring_backup_and_another_goes_after_the_delay(core: Core) -> None:
    """The issue's case: one backup marked EXPIRING is pinned before its delay ends and
    stays COMPLETED; another one expiring beside it is removed once its delay is over."""
    delayed_spec(core, "rescue", 5400)  # 1.5 h: backups come hourly
    for _ in range(4):
        take_backup(core, "rescue")
    configure(core, "rescue", enabled=False, next_fire_at=None)  # no more backups
    first, second, *_ = backups(core, "rescue")
    assert statuses(core, "rescue") == ["EXPIRING", "EXPIRING", "COMPLETED", "COMPLETED"]
    assert first.expires_at is not None and second.expires_at is not None
    assert second.expires_at > first.expires_at  # each from the run that marked it

    core.advance(60.0)  # before either delay ends
    with core.services.db.begin() as session:
        pinned = set_pinned(session, repository.require_spec(session, "rescue"), second.id, True)
    assert (pinned.status, pinned.pinned, pinned.expires_at) == ("COMPLETED", True, None)

    core.advance_to(second.expires_at, plus=1.0)  # past both delays
    run_tick(core.services)
    (run,) = core.twin.workflows(REMOVE_BACKUP)  # only the first: the pinned one stays
    assert run.input["backupId"] == first.id
    finish_removal(core, run.workflow_id)
    run_tick(core.services)
    assert statuses(core, "rescue") == ["REMOVED", "COMPLETED", "COMPLETED", "COMPLETED"]
    assert backups(core, "rescue")[1].pinned


def test_a_pin_that_comes_after_the_removal_started_is_refused(core: Core) -> None:
    delayed_spec(core, "toolate", 30)
    for _ in range(3):
        take_backup(core, "toolate")
    oldest = backups(core, "toolate")[0]
    assert oldest.expires_at is not None
    core.advance_to(oldest.expires_at, plus=0.1)
    run_tick(core.services)  # promoted and started
    with pytest.raises(NotPinnable), core.services.db.begin() as session:
        set_pinned(session, repository.require_spec(session, "toolate"), oldest.id, True)
    assert statuses(core, "toolate")[0] == "REMOVING"


def test_a_policy_change_keeps_an_expiring_backup_again(core: Core) -> None:
    delayed_spec(core, "policy", 600)
    for _ in range(3):
        take_backup(core, "policy")
    assert statuses(core, "policy")[0] == "EXPIRING"
    configure(core, "policy", retention_minutely="5")  # the stored policy, as a PUT leaves it
    with core.services.db.begin() as session:
        rescued = rescue_kept(session, repository.require_spec(session, "policy"))
    assert rescued == [backups(core, "policy")[0].id]
    oldest = backups(core, "policy")[0]
    assert (oldest.status, oldest.expires_at) == ("COMPLETED", None)
    core.advance(3600)
    run_tick(core.services)
    assert not core.twin.workflows(REMOVE_BACKUP)


def test_a_retention_run_whose_plan_keeps_it_puts_it_back(core: Core) -> None:
    delayed_spec(core, "rerun", 5400)
    for _ in range(3):
        take_backup(core, "rerun")
    assert statuses(core, "rerun") == ["EXPIRING", "COMPLETED", "COMPLETED"]
    configure(core, "rerun", retention_minutely="4")  # changed behind the API's back
    take_backup(core, "rerun")  # its retention run plans with the new policy
    assert statuses(core, "rerun") == ["COMPLETED"] * 4
    assert backups(core, "rerun")[0].expires_at is None


def test_an_expiring_backup_keeps_its_expiry_across_runs_that_still_remove_it(core: Core) -> None:
    delayed_spec(core, "steady", 5400)
    for _ in range(3):
        take_backup(core, "steady")
    first = backups(core, "steady")[0]
    take_backup(core, "steady")  # an hour later: the plan still removes the first
    again = backups(core, "steady")[0]
    assert (again.status, again.expires_at) == ("EXPIRING", first.expires_at)


def add_completed(core: Core, spec_id: int, count: int) -> list[int]:
    start = core.now() - timedelta(hours=count)
    with core.services.db.begin() as session:
        rows = [
            Backup(
                spec_id=spec_id,
                status=BackupStatus.COMPLETED.value,
                data_id=f"bulk-{i}",
                scheduled_at=start + timedelta(hours=i),
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def test_the_cap_counts_what_a_run_marks_not_what_waits(core: Core) -> None:
    """Each run marks at most the cap (oldest first); EXPIRING backups the plan still
    removes take no place under it; the outbox starts what expired, each once."""
    core.add_spec("capped", cron=HOURLY, retention=KEEP_TWO)
    configure(core, "capped", removal_delay_seconds=60)
    spec_id = spec_row(core, "capped").id
    ids = add_completed(core, spec_id, 8)  # the plan removes the 5 oldest (keeps 2 + newest)

    with core.services.db.begin() as session:
        spec = repository.require_spec(session, "capped")
        assert apply_plan(session, spec, core.now(), max_removals=2) == ids[:2]
    core.advance(30)
    with core.services.db.begin() as session:
        spec = repository.require_spec(session, "capped")
        assert apply_plan(session, spec, core.now(), max_removals=2) == ids[2:4]
    assert statuses(core, "capped") == ["EXPIRING"] * 4 + ["COMPLETED"] * 4

    core.advance(31)  # the first two expired, the next two not yet
    assert start_pending_removals(core.services) == 2
    assert start_pending_removals(core.services) == 0  # claimed and started: never twice
    assert statuses(core, "capped") == ["REMOVING"] * 2 + ["EXPIRING"] * 2 + ["COMPLETED"] * 4
    core.advance(30)
    assert start_pending_removals(core.services) == 2
    runs = core.twin.workflows(REMOVE_BACKUP)
    assert sorted(run.input["backupId"] for run in runs) == ids[:4]


def test_delete_counts_expiring_backups_and_a_purge_removes_them_at_once(core: Core) -> None:
    delayed_spec(core, "doomed", 3600)
    for _ in range(3):
        take_backup(core, "doomed")
    assert statuses(core, "doomed") == ["EXPIRING", "COMPLETED", "COMPLETED"]
    with core.services.db.begin() as session:
        spec = repository.require_spec(session, "doomed", for_update=True)
        assert repository.count_unremoved_backups(session, spec.id) == 3
    with core.services.db() as session, pytest.raises(Conflict, match="EXPIRING"):
        routes.delete_spec("doomed", session, core.services, purge=False)

    with core.services.db() as session:
        routes.delete_spec("doomed", session, core.services, purge=True)
    rows = backups(core, "doomed")
    assert [(b.status, b.expires_at) for b in rows] == [("REMOVING", None)] * 3
    run_tick(core.services)  # the outbox starts all three: a purge waits for no delay
    runs = core.twin.workflows(REMOVE_BACKUP)
    assert len(runs) == 3
    for run in runs:
        finish_removal(core, run.workflow_id)
    run_tick(core.services)  # the purge ends once the pass has seen those runs end
    with core.services.db() as session:
        assert repository.get_spec(session, "doomed") is None

"""Scheduled verification on the scheduling core (SQLite, the twin, simulated time):
verifyCronString starts verify_backup runs of the newest backup and of a sample of older
ones, once per fire whatever the number of passes, never of a backup being removed."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from backtor.conductor.names import VERIFY, VERIFY_BACKUP
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import repository
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling import verifications
from backtor.scheduling.tick import run_tick
from tests.scheduling.conftest import Core
from tests.scheduling.test_restores import backup, take

YEARLY = "0 0 0 1 1 *"  # backups: none during these tests unless taken by hand
DAILY_3AM = "0 0 3 * * *"
KEEP_ALL = {"retentionLast": 1000}


def add(core: Core, name: str = "db", **fields: Any) -> None:
    core.add_spec(name, cron=fields.pop("cron", YEARLY), retention=KEEP_ALL, **fields)


def insert_completed(core: Core, count: int, name: str = "db") -> list[int]:
    """`count` COMPLETED backups, an hour apart, the last an hour ago; ids oldest first."""
    ids: list[int] = []
    with core.services.db.begin() as session:
        spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == name))
        assert spec_id is not None
        for i in range(count):
            moment = core.now() - timedelta(hours=count - i)
            row = Backup(
                spec_id=spec_id,
                status=BackupStatus.COMPLETED.value,
                data_id=f"{name}-{i}.tar.gz",
                scheduled_at=moment,
                start_time=moment,
                end_time=moment + timedelta(minutes=1),
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def next_verify(core: Core, name: str = "db") -> datetime | None:
    with core.services.db() as session:
        return session.scalar(select(BackupSpec.next_verify_at).where(BackupSpec.name == name))


def verify_runs(core: Core, name: str = "db") -> list[int]:
    """The backupId of every verify_backup run of the spec, oldest start first."""
    runs = core.twin.workflows_by_correlation(VERIFY_BACKUP, [name], include_closed=True)
    ordered = sorted(runs.get(name, []), key=lambda run: run.start_time or core.now())
    return [int(run.input["backupId"]) for run in ordered]


def backup_of(core: Core, workflow_id: str) -> int:
    return int(core.twin.get_workflow(workflow_id).input["backupId"])


def finish_verifications(core: Core, verified: bool = True) -> list[int]:
    """The storage worker answers every verify task; the next pass records the verdicts."""
    done: list[int] = []
    while (task := core.twin.poll_task(VERIFY, "storage-1")) is not None:
        core.twin.update_task(task, "COMPLETED", {"verified": verified, "details": "checked"})
        done.append(backup_of(core, task.workflow_id))
    run_tick(core.services)
    return done


def at(core: Core, moment: datetime, plus: float = 0.2) -> None:
    core.advance_to(moment, plus=plus)
    run_tick(core.services)


def test_a_due_verify_cron_starts_one_verification_of_the_newest_completed_backup(
    core: Core,
) -> None:
    add(core, cron="0 */10 * * * *", verify_cron_string=DAILY_3AM)
    assert next_verify(core) == datetime(2030, 1, 1, 3, 0, tzinfo=UTC)
    taken = [take(core) for _ in range(3)]  # 00:10, 00:20, 00:30
    run_tick(core.services)
    assert verify_runs(core) == []  # not due yet

    fire = next_verify(core)
    assert fire is not None
    at(core, fire)
    assert verify_runs(core) == [taken[-1]]
    assert backup(core, taken[-1]).verify_run_status == "RUNNING"
    assert next_verify(core) == fire + timedelta(days=1)
    assert finish_verifications(core) == [taken[-1]]
    assert backup(core, taken[-1]).verify_status == "VERIFIED"

    # Not again within the period: later passes that day start nothing.
    for hours in (1, 6, 23):
        at(core, fire + timedelta(hours=hours))
    assert verify_runs(core) == [taken[-1]]
    # The next fire: the newest was verified since the previous fire, and there is no
    # newer backup: nothing. A backup taken since is verified at the fire after.
    at(core, fire + timedelta(days=1))
    assert verify_runs(core) == [taken[-1]]


def test_a_newer_backup_is_verified_at_the_next_fire(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM)
    first = insert_completed(core, 2)
    fire = next_verify(core)
    assert fire is not None
    at(core, fire)
    finish_verifications(core)
    core.advance(3600)
    newer = insert_completed(core, 1)
    at(core, fire + timedelta(days=1))
    assert verify_runs(core) == [first[-1], newer[0]]


def test_two_passes_acting_on_one_due_fire_start_it_once(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM, verify_sample_rate=1.0)
    ids = insert_completed(core, 4)
    due = next_verify(core)
    assert due is not None
    core.advance_to(due, plus=1)
    with core.services.db() as session:
        spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == "db"))
    assert spec_id is not None
    # Two replicas read the same due time; the first to move it on claims, the other not.
    first = verifications.act_on_fire(core.services, spec_id, due)
    second = verifications.act_on_fire(core.services, spec_id, due)
    assert first is not None and sorted(j.backup_id for j in first.jobs) == ids
    assert second is None
    assert next_verify(core) == due + timedelta(days=1)


def test_two_replicas_at_once_start_each_verification_once(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM, verify_sample_rate=0.5)
    insert_completed(core, 9)  # the newest and 4 of 8 older ones
    due = next_verify(core)
    assert due is not None
    core.advance_to(due, plus=1)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            barrier.wait()
            verifications.start_scheduled_verifications(core.services)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = verify_runs(core)
    assert len(runs) == 5 and len(set(runs)) == 5


@pytest.mark.parametrize("status", ["EXPIRING", "REMOVING", "REMOVE_FAILED", "REMOVED"])
def test_a_backup_being_removed_is_never_chosen(core: Core, status: str) -> None:
    add(core, verify_cron_string=DAILY_3AM, verify_sample_rate=1.0)
    ids = insert_completed(core, 4)
    with core.services.db.begin() as session:
        session.execute(
            update(Backup).where(Backup.id.in_([ids[-1], ids[0]])).values(status=status)
        )
    due = next_verify(core)
    assert due is not None
    at(core, due)
    # The newest COMPLETED one is ids[2]; the sample takes the only other COMPLETED one.
    assert sorted(verify_runs(core)) == [ids[1], ids[2]]


def test_a_backup_retention_marks_after_the_choice_is_passed_over(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chooser read it COMPLETED; retention marked it before the claim: no run."""
    add(core, verify_cron_string=DAILY_3AM, verify_sample_rate=1.0)
    ids = insert_completed(core, 3)
    read = verifications._candidates

    def stale(session: Any, spec_id: int) -> list[Any]:
        candidates = read(session, spec_id)
        session.execute(update(Backup).where(Backup.id == ids[-1]).values(status="REMOVING"))
        return candidates

    monkeypatch.setattr(verifications, "_candidates", stale)
    due = next_verify(core)
    assert due is not None
    at(core, due)
    assert sorted(verify_runs(core)) == ids[:2]
    assert backup(core, ids[-1]).verify_run_status is None


def test_the_sample_verifies_older_backups_at_the_documented_rate(core: Core) -> None:
    """Rate 0.2 of 10 older backups: 2 a fire, never verified first, then least recently:
    all 10 in 5 fires, each once. The newest, with none newer since, is verified again at
    every fire whose period (since the previous fire) holds no verdict on it: every other."""
    add(core, verify_cron_string=DAILY_3AM, verify_sample_rate=0.2)
    ids = insert_completed(core, 11)
    fire = next_verify(core)
    assert fire is not None
    per_fire: list[list[int]] = []
    for day in range(6):
        at(core, fire + timedelta(days=day))
        per_fire.append(finish_verifications(core))
    assert [ids[-1] in runs for runs in per_fire] == [True, False] * 3
    samples = [[b for b in runs if b != ids[-1]] for runs in per_fire]
    assert [len(sample) for sample in samples] == [2] * 6
    assert sorted(b for sample in samples[:5] for b in sample) == ids[:-1]
    # The sixth fire starts the round again with the least recently verified.
    assert set(samples[5]) == set(samples[0])


def test_the_global_sample_rate_applies_to_a_spec_without_its_own(core: Core) -> None:
    core.services.settings = replace(core.services.settings, verify_sample_rate=0.5)
    add(core, verify_cron_string=DAILY_3AM)
    add(core, "own", verify_cron_string=DAILY_3AM, verify_sample_rate=0.0)
    insert_completed(core, 5)
    insert_completed(core, 5, name="own")
    fire = next_verify(core)
    assert fire is not None
    at(core, fire)
    assert len(verify_runs(core)) == 3  # the newest and ceil(0.5 x 4)
    assert len(verify_runs(core, "own")) == 1


def test_a_verification_that_fails_records_failed(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM)
    ids = insert_completed(core, 2)
    fire = next_verify(core)
    assert fire is not None
    at(core, fire)
    task = core.twin.poll_task(VERIFY, "storage-1")
    assert task is not None and backup_of(core, task.workflow_id) == ids[-1]
    core.twin.update_task(
        task, "FAILED_WITH_TERMINAL_ERROR", {}, reason="db-1.tar.gz: gzip CRC mismatch"
    )
    run_tick(core.services)
    row = backup(core, ids[-1])
    assert row.verify_status == "FAILED" and row.verify_run_status == "FAILED"
    assert row.verify_details is not None and "CRC mismatch" in row.verify_details
    # A damaged backup reported as such (verified: false) is FAILED too.
    core.advance(7200)
    newer = insert_completed(core, 1)
    at(core, fire + timedelta(days=1))
    assert finish_verifications(core, verified=False) == newer
    assert backup(core, newer[0]).verify_status == "FAILED"


def test_missed_fires_run_once_when_the_pass_comes_back(core: Core) -> None:
    add(core, verify_cron_string="0 0 * * * *", verify_sample_rate=0.1)
    insert_completed(core, 21)
    first = next_verify(core)
    assert first is not None
    at(core, first + timedelta(hours=10, minutes=30))  # ten fires passed with no pass
    assert len(verify_runs(core)) == 3  # one fire: the newest and ceil(0.1 x 20)
    assert next_verify(core) == first + timedelta(hours=11)
    run_tick(core.services)
    assert len(verify_runs(core)) == 3


def test_a_paused_spec_verifies_nothing_until_enabled_again(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM)
    insert_completed(core, 2)
    fire = next_verify(core)
    assert fire is not None
    with core.services.db.begin() as session:
        session.execute(update(BackupSpec).values(enabled=False))
    at(core, fire + timedelta(days=2))
    assert verify_runs(core) == []
    with core.services.db.begin() as session:
        session.execute(update(BackupSpec).values(enabled=True))
    run_tick(core.services)
    assert len(verify_runs(core)) == 1  # the fires missed while paused: once
    assert next_verify(core) == fire + timedelta(days=3)


def test_a_spec_without_a_verify_cron_verifies_nothing(core: Core) -> None:
    add(core)
    insert_completed(core, 3)
    assert next_verify(core) is None
    at(core, core.now() + timedelta(days=3))
    assert verify_runs(core) == []


def _put(core: Core, **fields: Any) -> None:
    """PUT /backup/db as the API does it: a full replacement."""
    draft = SpecDraft(
        name="db",
        backup_cron_string=YEARLY,
        worker_config="{}",
        retention=KEEP_ALL,
        **fields,
    )
    with core.services.db.begin() as session:
        spec = repository.require_spec(session, "db", for_update=True)
        repository.replace_spec(session, spec, normalise_spec(draft), core.now())


def test_a_put_keeping_the_verify_schedule_keeps_a_due_fire(core: Core) -> None:
    add(core, verify_cron_string=DAILY_3AM)
    ids = insert_completed(core, 2)
    due = next_verify(core)
    assert due is not None
    core.advance_to(due, plus=5)  # due, and no pass has acted on it yet
    _put(core, verify_cron_string="0 3 * * *", verify_sample_rate=0.5, timeout_seconds=60)
    assert next_verify(core) == due  # same schedule (canonical form): still due
    run_tick(core.services)
    assert sorted(verify_runs(core)) == ids
    # A PUT that changes it starts from its first fire after now.
    _put(core, verify_cron_string="0 0 4 * * *")
    assert next_verify(core) == due + timedelta(hours=1)
    _put(core)
    assert next_verify(core) is None

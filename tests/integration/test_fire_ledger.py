"""The fire ledger on a real PostgreSQL and a real Conductor: crashes at any point never
start a fire twice, and concurrent passes never write or claim a fire twice.

Concurrent work runs through tests.support.threads.run_together, which fails the test when
any thread raises (a crashed thread would otherwise be a mere warning, and the survivors
could satisfy the asserts alone); the module also turns pytest's unhandled-thread-exception
warning into an error, for any thread started some other way.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from backtor.conductor.names import CREATE_BACKUP
from backtor.conductor.payloads import WorkflowRun
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import repository
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec, Fire, FireStatus, SchedulerState
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling.fires import claim_pending, schedule_due_fires, start_fires
from backtor.scheduling.tick import PASS_LEASE, TickReport, run_tick
from backtor.scheduling.watchdog import STALL
from tests.support.threads import run_together

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture
def services(postgres_url: str, conductor_url: str) -> Iterator[Services]:
    upgrade_to_head(postgres_url)
    built = Services.from_settings(
        Settings.from_env({"DATABASE_URL": postgres_url, "CONDUCTOR_API_URL": conductor_url})
    )
    register_definitions(built.conductor)
    yield built
    built.close()


def add_spec(services: Services, name: str, cron: str = "0 0 3 * * *") -> BackupSpec:
    values = normalise_spec(SpecDraft(name=name, backup_cron_string=cron, worker_config="{}"))
    with services.db.begin() as session:
        return repository.create_spec(session, values, datetime.now(UTC))


def pending_fire(services: Services, spec: BackupSpec, at: datetime) -> int:
    with services.db.begin() as session:
        fire = Fire(spec_id=spec.id, scheduled_at=at, status="PENDING", created_at=at, attempts=0)
        session.add(fire)
        session.flush()
        return fire.id


def expire_claims(services: Services) -> None:
    with services.db.begin() as session:
        session.execute(update(Fire).values(claimed_until=datetime.now(UTC) - timedelta(1)))


def runs(services: Services, name: str) -> list[WorkflowRun]:
    found = services.conductor.workflows_by_correlation(CREATE_BACKUP, [name], include_closed=True)
    return found.get(name, [])


def terminate_all(services: Services, name: str) -> None:
    for run in runs(services, name):
        if run.status.is_open:
            services.conductor.terminate_workflow(run.workflow_id, "test over")


def test_crash_after_the_start_before_the_commit_adopts_the_workflow(services: Services) -> None:
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    spec = add_spec(services, name)
    fire_id = pending_fire(services, spec, datetime.now(UTC).replace(microsecond=0))
    with services.db.begin() as session:
        (job,) = claim_pending(session, datetime.now(UTC), fire_ids=[fire_id])
    # The crashed attempt got as far as starting the workflow, then died.
    started = services.conductor.start_workflow(
        CREATE_BACKUP,
        version=DEFINITIONS.workflow_version(CREATE_BACKUP),
        correlation_id=name,
        input={"backupName": name, "fireId": job.fire_id},
    )
    try:
        expire_claims(services)
        with services.db.begin() as session:
            (retry,) = claim_pending(session, datetime.now(UTC), fire_ids=[fire_id])
        assert retry.attempts == 2
        (outcome,) = start_fires(services, [retry])
        assert outcome.status is FireStatus.STARTED
        assert outcome.workflow_id == started
        assert [r.workflow_id for r in runs(services, name)] == [started]
        with services.db.begin() as session:
            fire = session.get(Fire, fire_id)
            assert fire is not None and fire.workflow_id == started
    finally:
        terminate_all(services, name)


def test_crash_before_the_start_starts_it_once_later(services: Services) -> None:
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    spec = add_spec(services, name)
    fire_id = pending_fire(services, spec, datetime.now(UTC).replace(microsecond=0))
    with services.db.begin() as session:
        assert len(claim_pending(session, datetime.now(UTC), fire_ids=[fire_id])) == 1
    # ... and the claimer died before calling Conductor. A live claim is left alone:
    with services.db.begin() as session:
        assert claim_pending(session, datetime.now(UTC), fire_ids=[fire_id]) == []
    expire_claims(services)
    try:
        with services.db.begin() as session:
            jobs = claim_pending(session, datetime.now(UTC), fire_ids=[fire_id])
        (outcome,) = start_fires(services, jobs)
        assert outcome.status is FireStatus.STARTED
        assert len(runs(services, name)) == 1
        expire_claims(services)
        with services.db.begin() as session:  # STARTED fires are never claimed again
            assert claim_pending(session, datetime.now(UTC), fire_ids=[fire_id]) == []
    finally:
        terminate_all(services, name)


def test_concurrent_claims_take_each_fire_once(services: Services) -> None:
    spec = add_spec(services, f"ledger-{uuid.uuid4().hex[:8]}")
    base = datetime.now(UTC).replace(microsecond=0)
    ids = {pending_fire(services, spec, base - timedelta(seconds=i)) for i in range(300)}

    def claim() -> list[int]:
        with services.db.begin() as session:
            return [job.fire_id for job in claim_pending(session, datetime.now(UTC))]

    claimed: list[list[int]] = run_together([claim, claim, claim])
    every = [fire for slot in claimed for fire in slot]
    assert sorted(every) == sorted(ids), "a fire claimed twice, or not at all"
    # Claims are serialised per spec: one claimer took them all, the others none.
    assert sorted(len(slot) for slot in claimed) == [0, 0, len(ids)]


def test_concurrent_passes_write_one_fire_per_due_time(services: Services) -> None:
    names = [f"ledger-{uuid.uuid4().hex[:8]}" for _ in range(50)]
    specs = [add_spec(services, name, "* * * * * *") for name in names]
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    with services.db.begin() as session:
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.id.in_([s.id for s in specs]))
            .values(next_fire_at=due)
        )
    now = due + timedelta(milliseconds=500)

    def one_pass() -> int:
        with services.db.begin() as session:
            return schedule_due_fires(session, now).pending

    written = run_together([one_pass] * 4)
    assert sum(written) == len(specs), written
    with services.db.begin() as session:
        per_spec = {
            row.spec_id: row.n
            for row in session.execute(
                select(Fire.spec_id, func.count().label("n")).group_by(Fire.spec_id)
            )
        }
        moved = session.scalars(select(BackupSpec.next_fire_at)).all()
    assert per_spec == {s.id: 1 for s in specs}
    assert set(moved) == {due + timedelta(seconds=1)}


def at(services: Services, moment: datetime) -> Services:
    """The same services on a clock that reads `moment` now, and runs on from there."""
    offset = moment - datetime.now(UTC)
    return dataclasses.replace(services, clock=lambda: datetime.now(UTC) + offset)


def due_specs(services: Services, count: int) -> list[str]:
    """`count` specs whose one daily fire time was a second ago: due, once, right now."""
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    cron = f"{moment.second} {moment.minute} {moment.hour} * * *"
    names = [f"ledger-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    specs = [add_spec(services, name, cron) for name in names]
    with services.db.begin() as session:
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.id.in_([spec.id for spec in specs]))
            .values(next_fire_at=moment)
        )
    return names


def test_two_whole_passes_at_once_start_each_fire_once(services: Services) -> None:
    """Conductor hands the tick to two replicas at once (a stalled worker's task handed out
    again): two whole run_tick passes side by side, with their own holders. One pass takes
    the pass lease and starts every due fire; the other skips (ran=False) or, coming after,
    finds nothing to do; no fire gets a second create_backup."""
    every: list[str] = []
    try:
        for _ in range(3):
            names = due_specs(services, 20)
            every += names
            reports: list[TickReport] = run_together(
                [
                    lambda: run_tick(services, holder="replica-a:1:aaaaaa"),
                    lambda: run_tick(services, holder="replica-b:2:bbbbbb"),
                ]
            )
            busy, idle = sorted(reports, key=lambda r: r.started, reverse=True)
            assert busy.ran and busy.started == len(names), reports
            assert idle.ran is False or (idle.started, idle.skipped, idle.waiting) == (0, 0, 0), (
                reports
            )
            per_spec = {name: runs(services, name) for name in names}
            assert all(len(found) == 1 for found in per_spec.values()), per_spec
            for name in names:
                terminate_all(services, name)
        with services.db.begin() as session:
            ledger = session.execute(select(Fire.id, Fire.status, Fire.workflow_id)).all()
        assert len(ledger) == len(every)
        assert {row.status for row in ledger} == {FireStatus.STARTED.value}
        started = [run for name in every for run in runs(services, name)]
        per_fire = Counter(run.fire_id for run in started)
        assert set(per_fire) == {row.id for row in ledger}
        assert max(per_fire.values()) == 1, per_fire.most_common(3)
        assert {run.workflow_id for run in started} == {row.workflow_id for row in ledger}
    finally:
        for name in every:
            terminate_all(services, name)


def test_a_fire_claimed_by_a_pass_that_died_does_not_hold_its_spec_past_the_failover(
    services: Services,
) -> None:
    """The worker holding the tick is SIGKILLed mid-pass, after claiming a fire and before
    starting it. The replica that takes the tick over (the watchdog's STALL after the last
    beat at the earliest) must start the spec's next backup within 15 s of the first due
    time after the death, the failover goal."""
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    spec = add_spec(services, name, "* * * * * *")
    died = datetime.now(UTC)
    with services.db.begin() as session:
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.id == spec.id)
            .values(next_fire_at=died.replace(microsecond=0))
        )
    # The dying pass: its lease and heartbeat, the due fire written and claimed; then SIGKILL.
    with services.db.begin() as session:
        session.execute(
            update(SchedulerState).values(
                pass_holder="dead-replica:1:dead00", pass_until=died + PASS_LEASE, last_tick_at=died
            )
        )
    with services.db.begin() as session:
        schedule_due_fires(session, died)
    with services.db.begin() as session:
        assert len(claim_pending(session, died)) == 1
    goal = died.replace(microsecond=0) + timedelta(seconds=1 + 15)
    try:
        passes: list[tuple[datetime, TickReport]] = []
        moment = died + STALL  # the earliest takeover: the watchdog's stall rule
        while moment <= goal:
            report = run_tick(at(services, moment), holder="takeover:2:a11ve0")
            passes.append((moment, report))
            if report.started:
                break
            moment += timedelta(seconds=1)  # a live tick passes every second for this cron
        assert any(report.started for _, report in passes), (
            f"no create_backup started by {goal.isoformat()} (15 s after the first due time "
            f"after the death); passes: {passes}"
        )
        assert len(runs(services, name)) == 1
    finally:
        terminate_all(services, name)

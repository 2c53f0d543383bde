"""The fire ledger on a real PostgreSQL and a real Conductor: crashes at any point never
start a fire twice, and concurrent passes never write or claim a fire twice."""

from __future__ import annotations

import threading
import uuid
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
from backtor.db.models import BackupSpec, Fire, FireStatus
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling.fires import claim_pending, schedule_due_fires, start_fires

pytestmark = pytest.mark.integration


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
    claimed: list[list[int]] = [[], [], []]
    barrier = threading.Barrier(3)

    def claim(slot: int) -> None:
        barrier.wait()
        with services.db.begin() as session:
            claimed[slot] = [job.fire_id for job in claim_pending(session, datetime.now(UTC))]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [fire for slot in claimed for fire in slot]
    assert sorted(every) == sorted(ids), "a fire claimed twice, or not at all"


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
    barrier = threading.Barrier(4)
    now = due + timedelta(milliseconds=500)

    def one_pass() -> None:
        barrier.wait()
        with services.db.begin() as session:
            schedule_due_fires(session, now)

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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

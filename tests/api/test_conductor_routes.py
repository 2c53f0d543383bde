"""Trigger a backup now (the route that talks to Conductor), and a purge's removals, which
the scheduler's pass starts from the outbox the purge fills."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from backtor.api import routes
from backtor.api.context import services_of
from backtor.conductor.http import ConductorClient
from backtor.conductor.payloads import to_epoch_ms
from backtor.conductor.registration import register_definitions
from backtor.db.engine import make_session_factory
from backtor.db.models import Backup, BackupSpec, Fire
from backtor.scheduling.fires import FireJob, add_manual_fire, claim_pending
from backtor.scheduling.removals import start_pending_removals
from tests.api.conftest import AddBackup, MakeClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def registered_conductor(conductor_url: str) -> Iterator[ConductorClient]:
    """A client for the real test Conductor, with Backtor's definitions registered."""
    client = ConductorClient(conductor_url, timeout=30)
    register_definitions(client)
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    """Conductor outlives each test: a fresh name keeps correlation ids apart."""
    return f"spec-{uuid.uuid4().hex[:12]}"


def _terminate(conductor: ConductorClient, workflow_ids: list[str]) -> None:
    for workflow_id in workflow_ids:
        if conductor.get_workflow(workflow_id, include_tasks=False).status.is_open:
            conductor.terminate_workflow(workflow_id, "test finished")


def _running(conductor: ConductorClient, name: str, correlation_id: str) -> list[str]:
    """Ids of the open executions of workflow `name` for `correlation_id`."""
    runs = conductor.workflows_by_correlation(name, [correlation_id], include_closed=False)
    return [run.workflow_id for run in runs.get(correlation_id, []) if run.status.is_open]


@pytest.fixture
def tick_claims_after_commit(
    monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> list[list[FireJob]]:
    """The race, made certain: a scheduler pass claims every claimable fire right after
    the trigger commits its manual fire (and before the trigger's own claim, if that comes
    later). Each pass's claim is recorded."""
    claims: list[list[FireJob]] = []
    sessions = make_session_factory(engine)

    def add_then_race(session: Session, spec: BackupSpec, now: datetime) -> int:
        fire_id = add_manual_fire(session, spec, now)

        def tick(_session: Session) -> None:
            with sessions.begin() as tick_session:
                claims.append(claim_pending(tick_session, now))

        event.listen(session, "after_commit", tick, once=True)
        return fire_id

    monkeypatch.setattr(routes, "add_manual_fire", add_then_race)  # the name routes calls
    return claims


def _fire(session: Session) -> Any:
    session.expire_all()
    return session.execute(select(Fire.status, Fire.skip_reason, Fire.workflow_id)).one()


def test_trigger_of_an_unknown_spec_is_404(client: TestClient) -> None:
    answer = client.post("/backup/ghost/materialized")
    assert answer.status_code == 404
    assert answer.json()["field"] == "name"


def test_trigger_with_conductor_unreachable_is_503(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.post("/backup/db1/materialized")
    assert answer.status_code == 503
    assert set(answer.json()) == {"message", "field"}
    assert client.get("/backup/db1").json()["runningCreateWorkflowID"] is None


def test_the_tick_cannot_take_a_manual_fire_from_the_trigger(
    client: TestClient, tick_claims_after_commit: list[list[FireJob]], session: Session
) -> None:
    """It used to: the trigger's claim then found nothing, and the answer was a 500."""
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.post("/backup/db1/materialized")
    assert answer.status_code == 503, answer.text  # Conductor is down, and said so
    assert tick_claims_after_commit == [[]]  # the pass found the fire claimed already
    # Given up by the trigger, so no later pass starts a backup nobody waits for.
    assert _fire(session) == ("SKIPPED", "conductor_unavailable", None)


def test_trigger_starts_its_backup_although_a_tick_runs_at_once(
    make_client: MakeClient,
    registered_conductor: ConductorClient,
    unique_name: str,
    tick_claims_after_commit: list[list[FireJob]],
    session: Session,
) -> None:
    client = make_client(conductor=registered_conductor)
    assert client.post("/backup", json={"name": unique_name}).status_code == 201
    answer = client.post(f"/backup/{unique_name}/materialized")
    assert answer.status_code == 202, answer.text
    workflow_id = answer.json()["workflowId"]
    try:
        assert tick_claims_after_commit == [[]]
        assert _fire(session) == ("STARTED", None, workflow_id)
    finally:
        _terminate(registered_conductor, [workflow_id])


def test_trigger_starts_create_backup_and_refuses_a_second_while_it_runs(
    make_client: MakeClient, registered_conductor: ConductorClient, unique_name: str
) -> None:
    client = make_client(conductor=registered_conductor)
    spec = {
        "name": unique_name,
        "workerConfig": '{"target": "x\'; DROP TABLE backup; --"}',
        "timeoutSeconds": 120,
    }
    assert client.post("/backup", json=spec).status_code == 201

    first = client.post(f"/backup/{unique_name}/materialized")
    assert first.status_code == 202, first.text
    workflow_id = first.json()["workflowId"]
    try:
        assert first.json()["name"] == unique_name
        workflow = registered_conductor.get_workflow(workflow_id, include_tasks=False)
        assert workflow.name == "create_backup"
        assert workflow.correlation_id == unique_name
        assert workflow.status == "RUNNING"  # nobody polls the `backup` task here
        given = workflow.input
        assert given["backupName"] == unique_name
        assert given["workerConfig"] == spec["workerConfig"]
        assert given["timeoutSeconds"] == 120
        assert given["manual"] is True
        assert given["scheduledTime"].endswith("Z")
        stored = client.get(f"/backup/{unique_name}").json()
        assert stored["runningCreateWorkflowID"] == workflow_id

        second = client.post(f"/backup/{unique_name}/materialized")
        assert second.status_code == 409
        assert workflow_id in second.json()["message"]
        assert _running(registered_conductor, "create_backup", unique_name) == [workflow_id]
    finally:
        _terminate(registered_conductor, [workflow_id])


def test_a_purge_is_started_by_the_schedulers_removal_pass(
    make_client: MakeClient,
    registered_conductor: ConductorClient,
    unique_name: str,
    add_backup: AddBackup,
    session: Session,
) -> None:
    client = make_client(conductor=registered_conductor)
    app = client.app
    assert isinstance(app, FastAPI)
    services = services_of(app)  # the API's own Services: the scheduler's pass runs on one
    spec = {"name": unique_name, "workerConfig": "cfg"}
    assert client.post("/backup", json=spec).status_code == 201
    first = add_backup(unique_name, "COMPLETED", data_id="d-1")
    second = add_backup(unique_name, "COMPLETED", data_id="d-2", remove_attempts=1)
    # Already on the removal path (retried by the pass) or still being taken.
    failed_removal = add_backup(unique_name, "REMOVE_FAILED", data_id="d-3", remove_attempts=3)
    running = add_backup(unique_name, "RUNNING", data_id=None)
    add_backup(unique_name, "REMOVED", data_id="d-0")

    answer = client.delete(f"/backup/{unique_name}", params={"purge": "true"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["pendingBackups"] == 4  # 2 REMOVING, REMOVE_FAILED, RUNNING
    # The request started nothing: the outbox holds the removals.
    assert _running(registered_conductor, "remove_backup", unique_name) == []

    started: list[str] = []
    try:
        before = to_epoch_ms(datetime.now(UTC))
        assert start_pending_removals(services) == 3  # what the tick does next
        after = to_epoch_ms(datetime.now(UTC))
        session.expire_all()
        expected = [
            (first, "REMOVING", "d-1", 0),
            (second, "REMOVING", "d-2", 1),
            (failed_removal, "REMOVE_FAILED", "d-3", 3),
        ]
        for backup_id, status, data_id, attempts in expected:
            backup = session.get(Backup, backup_id)
            assert backup is not None
            assert (backup.status, backup.remove_attempts) == (status, attempts)
            assert backup.remove_workflow_id
            started.append(backup.remove_workflow_id)
            workflow = registered_conductor.get_workflow(
                backup.remove_workflow_id, include_tasks=False
            )
            assert workflow.name == "remove_backup"
            assert workflow.correlation_id == unique_name
            given = dict(workflow.input)
            # The start fence's input: the claim's end (30 s on) minus 3 s. Running (below):
            # Conductor admitted the start.
            start_by = given.pop("startBy")
            assert before + 27_000 - 1 <= start_by <= after + 27_000 + 1
            assert given == {
                "backupName": unique_name,
                "dataId": data_id,
                "workerConfig": "cfg",
                "backupId": backup_id,
            }
        row = session.get(Backup, running)
        assert row is not None
        assert (row.status, row.remove_workflow_id) == ("RUNNING", None)
        session.rollback()  # no transaction of the test's stays open across the API's calls

        listed = client.get(f"/backup/{unique_name}/materialized", params={"status": "REMOVING"})
        assert sorted(b["removeWorkflowId"] for b in listed.json()) == sorted(started[:2])

        # A second purge, and the next pass, start nothing again.
        assert client.delete(f"/backup/{unique_name}?purge=true").status_code == 202
        assert start_pending_removals(services) == 0
        session.expire_all()
        again = [session.get(Backup, i) for i, *_ in expected]
        assert [b.remove_workflow_id for b in again if b is not None] == started
        session.rollback()
        assert len(_running(registered_conductor, "remove_backup", unique_name)) == 3
    finally:
        _terminate(registered_conductor, started)

"""Routes that talk to Conductor: trigger a backup now, and purge through remove_backup."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backtor.conductor.http import ConductorClient
from backtor.conductor.registration import register_definitions
from backtor.db.models import Backup
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
        if conductor.get_workflow(workflow_id, include_tasks=False)["status"] == "RUNNING":
            conductor.terminate_workflow(workflow_id, "test finished")


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
        assert workflow["workflowName"] == "create_backup"
        assert workflow["correlationId"] == unique_name
        assert workflow["status"] == "RUNNING"  # nobody polls the `backup` task here
        given = workflow["input"]
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
        assert registered_conductor.running_workflow_ids("create_backup", unique_name) == [
            workflow_id
        ]
    finally:
        _terminate(registered_conductor, [workflow_id])


def test_purge_starts_one_remove_backup_per_completed_backup(
    make_client: MakeClient,
    registered_conductor: ConductorClient,
    unique_name: str,
    add_backup: AddBackup,
    session: Session,
) -> None:
    client = make_client(conductor=registered_conductor, use_default_starter=True)
    spec = {"name": unique_name, "workerConfig": "cfg"}
    assert client.post("/backup", json=spec).status_code == 201
    first = add_backup(unique_name, "COMPLETED", data_id="d-1")
    second = add_backup(unique_name, "COMPLETED", data_id="d-2", remove_attempts=1)
    # Already on the removal path (the removal worker retries it) or still being taken.
    failed_removal = add_backup(unique_name, "REMOVE_FAILED", data_id="d-3", remove_attempts=3)
    running = add_backup(unique_name, "RUNNING", data_id=None)
    add_backup(unique_name, "REMOVED", data_id="d-0")

    answer = client.delete(f"/backup/{unique_name}", params={"purge": "true"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["pendingBackups"] == 4  # 2 REMOVING, REMOVE_FAILED, RUNNING

    started: list[str] = []
    try:
        for backup_id, data_id, attempts in [(first, "d-1", 1), (second, "d-2", 2)]:
            backup = session.get(Backup, backup_id)
            assert backup is not None
            assert backup.status == "REMOVING"
            assert backup.remove_attempts == attempts
            assert backup.remove_workflow_id
            started.append(backup.remove_workflow_id)
            workflow = registered_conductor.get_workflow(
                backup.remove_workflow_id, include_tasks=False
            )
            assert workflow["workflowName"] == "remove_backup"
            assert workflow["correlationId"] == unique_name
            assert workflow["input"] == {
                "backupName": unique_name,
                "dataId": data_id,
                "workerConfig": "cfg",
                "backupId": backup_id,
            }
        for backup_id, status in [(failed_removal, "REMOVE_FAILED"), (running, "RUNNING")]:
            row = session.get(Backup, backup_id)
            assert row is not None
            assert (row.status, row.remove_workflow_id) == (status, None)

        listed = client.get(f"/backup/{unique_name}/materialized", params={"status": "REMOVING"})
        assert sorted(b["removeWorkflowId"] for b in listed.json()) == sorted(started)

        # A second purge starts nothing again.
        assert client.delete(f"/backup/{unique_name}?purge=true").status_code == 202
        session.expire_all()
        again = [session.get(Backup, i) for i in (first, second)]
        assert [b.remove_workflow_id for b in again if b is not None] == started
        assert len(registered_conductor.running_workflow_ids("remove_backup", unique_name)) == 2
    finally:
        _terminate(registered_conductor, started)

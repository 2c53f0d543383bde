"""POST /backup/{name}/materialized/{id}/restore and .../verify, and what GET
.../materialized shows of them; Conductor is the in-memory twin (or down)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from backtor.conductor.http import ConductorClient
from backtor.conductor.names import RESTORE, RESTORE_BACKUP, VERIFY, VERIFY_BACKUP
from backtor.conductor.registration import register_definitions
from backtor.conductor.twin import ConductorTwin, ManualClock
from tests.api.conftest import AddBackup, MakeClient

SUM = "cd" * 32
SECRET = "s3cret-pw"
CONFIG = f'{{"dsn": "postgresql://app:{SECRET}@db/orders_restored"}}'


@pytest.fixture
def twin() -> Iterator[ConductorTwin]:
    twin = ConductorTwin(ManualClock())
    register_definitions(twin)
    yield twin


@pytest.fixture
def api(make_client: MakeClient, twin: ConductorTwin) -> TestClient:
    return make_client(conductor=cast(ConductorClient, twin))


@pytest.fixture
def backup_id(api: TestClient, add_backup: AddBackup) -> int:
    body = {"name": "db1", "workerConfig": f'{{"kind": "postgres", "dsn": "x:{SECRET}"}}'}
    assert api.post("/backup", json=body).status_code == 201
    assert api.post("/backup", json={"name": "db2"}).status_code == 201
    return add_backup("db1", data_id="db1-1.dump", checksum=SUM, row_counts='{"public.t":2}')


def restore(client: TestClient, backup_id: object, body: Any = None, name: str = "db1") -> Any:
    payload = {"restoreConfig": CONFIG} if body is None else body
    return client.post(f"/backup/{name}/materialized/{backup_id}/restore", json=payload)


def verify(client: TestClient, backup_id: object, name: str = "db1", **kwargs: Any) -> Any:
    return client.post(f"/backup/{name}/materialized/{backup_id}/verify", **kwargs)


def shown(client: TestClient, backup_id: int) -> dict[str, Any]:
    [row] = [b for b in client.get("/backup/db1/materialized").json() if b["id"] == backup_id]
    return cast(dict[str, Any], row)


def test_a_restore_starts_restore_backup_with_the_recorded_checksum(
    api: TestClient, twin: ConductorTwin, backup_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    assert shown(api, backup_id)["lastRestore"] is None
    with caplog.at_level(logging.DEBUG):
        answer = restore(api, backup_id)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["name"] == "db1" and body["backupId"] == backup_id
    run = twin.get_workflow(body["workflowId"])
    assert run.name == RESTORE_BACKUP and run.correlation_id == "db1"
    task = twin.poll_task(RESTORE, "storage-1")
    assert task is not None and task.workflow_id == body["workflowId"]
    assert task.input["restoreConfig"] == CONFIG
    assert task.input["checksum"] == SUM and task.input["dataId"] == "db1-1.dump"
    row = shown(api, backup_id)
    assert row["lastRestore"]["workflowId"] == body["workflowId"]
    assert row["lastRestore"]["status"] == "RUNNING"
    assert row["checksum"] == SUM
    assert SECRET not in caplog.text  # neither restoreConfig nor workerConfig is logged

    again = restore(api, backup_id)
    assert again.status_code == 409
    assert "a restore of backup" in again.json()["message"]


def test_a_verify_needs_no_body_and_shows_never_until_a_verdict(
    api: TestClient, twin: ConductorTwin, backup_id: int
) -> None:
    row = shown(api, backup_id)
    assert row["verifyStatus"] == "NEVER" and row["lastVerifiedAt"] is None
    answer = verify(api, backup_id)
    assert answer.status_code == 202, answer.text
    run = twin.get_workflow(answer.json()["workflowId"])
    assert run.name == VERIFY_BACKUP and run.correlation_id == "db1"
    task = twin.poll_task(VERIFY, "storage-1")
    assert task is not None
    assert task.input["checksum"] == SUM and task.input["rowCounts"] == '{"public.t":2}'
    assert task.input["verifyConfig"] is None
    row = shown(api, backup_id)
    assert row["verifyStatus"] == "NEVER" and row["lastVerify"]["status"] == "RUNNING"
    # A restore may run beside it; a second verification may not.
    assert verify(api, backup_id).status_code == 409
    assert restore(api, backup_id).status_code == 202


def test_verify_with_a_verify_config(api: TestClient, twin: ConductorTwin, backup_id: int) -> None:
    answer = verify(api, backup_id, json={"verifyConfig": '{"deep": true}'})
    assert answer.status_code == 202, answer.text
    task = twin.poll_task(VERIFY, "storage-1")
    assert task is not None and task.input["verifyConfig"] == '{"deep": true}'
    assert verify(api, backup_id, json={}).status_code == 409  # the first still runs


@pytest.mark.parametrize("status", ["EXPIRING", "REMOVING", "REMOVE_FAILED", "REMOVED", "FAILED"])
def test_only_a_completed_backup_is_restored_or_verified(
    api: TestClient, add_backup: AddBackup, backup_id: int, status: str
) -> None:
    other = add_backup("db1", status, data_id=None if status == "FAILED" else "x.dump")
    for answer in (restore(api, other), verify(api, other)):
        assert answer.status_code == 409, answer.text
        assert answer.json()["field"] == "id"
        assert answer.json()["message"].startswith(f"backup {other} is {status}: ")
        assert "only a COMPLETED backup can be" in answer.json()["message"]
    row = shown(api, other)
    assert row["lastRestore"] is None and row["lastVerify"] is None


def test_a_purged_spec_backups_are_not_restored(
    api: TestClient, engine: Engine, backup_id: int
) -> None:
    assert api.delete("/backup/db1", params={"purge": "true"}).status_code == 202
    for answer in (restore(api, backup_id), verify(api, backup_id)):
        assert answer.status_code == 409, answer.text


def test_unknown_spec_or_backup_is_404(api: TestClient, backup_id: int) -> None:
    for call in (restore, verify):
        answer = call(api, backup_id, name="ghost")
        assert (answer.status_code, answer.json()["field"]) == (404, "name")
        other = api.get("/backup/db2/materialized").json()
        assert other == []
        for unknown in (999_999, "abc", "-1", 2**31):
            answer = call(api, unknown)
            assert (answer.status_code, answer.json()["field"]) == (404, "id"), unknown
        answer = call(api, backup_id, name="db2")  # another spec's backup
        assert (answer.status_code, answer.json()["field"]) == (404, "id")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"restoreConfig": ""},
        {"restoreConfig": "a\u0000b"},
        {"restoreConfig": {"target": "/x"}},
        {"restoreConfig": 1},
        {"restoreConfig": CONFIG, "overwrite": True},
        [],
    ],
)
def test_a_bad_restore_body_is_422_and_starts_nothing(
    api: TestClient, twin: ConductorTwin, backup_id: int, body: Any
) -> None:
    answer = restore(api, backup_id, body)
    assert answer.status_code == 422, answer.text
    assert twin.poll_task(RESTORE, "storage-1") is None
    assert shown(api, backup_id)["lastRestore"] is None


def test_bad_verify_bodies_queries_and_json(api: TestClient, backup_id: int) -> None:
    for body in ({"verifyConfig": 5}, {"verifyConfig": ""}, {"deep": True}):
        answer = verify(api, backup_id, json=body)
        assert answer.status_code == 422, (body, answer.text)
    url = f"/backup/db1/materialized/{backup_id}"
    assert api.post(f"{url}/verify", params={"deep": "1"}).status_code == 422
    answer = api.post(
        f"{url}/restore", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert shown(api, backup_id)["lastVerify"] is None


def test_conductor_down_leaves_the_start_to_the_scheduler_and_holds_off_removal(
    client: TestClient, engine: Engine, add_backup: AddBackup
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    backup_id = add_backup("db1", data_id="db1-1.dump")
    answer = restore(client, backup_id)
    assert answer.status_code == 503, answer.text
    assert "may have started" in answer.json()["message"]
    row = shown(client, backup_id)
    assert row["lastRestore"]["status"] == "STARTING"
    assert row["lastRestore"]["workflowId"] is None
    assert restore(client, backup_id).status_code == 409  # the unconfirmed start is open


def test_conductor_refusing_the_start_is_502_and_recorded(
    make_client: MakeClient, engine: Engine, backup_id: int
) -> None:
    bare = ConductorTwin(ManualClock())  # no definitions: the start is refused (404)
    api = make_client(conductor=cast(ConductorClient, bare))
    answer = verify(api, backup_id)
    assert answer.status_code == 502, answer.text
    row = shown(api, backup_id)
    assert row["lastVerify"]["status"] == "FAILED" and row["lastVerify"]["workflowId"] is None
    assert "refused" in row["verifyDetails"]
    assert row["verifyStatus"] == "NEVER"
    assert verify(api, backup_id).status_code == 502  # not open: it may be asked again

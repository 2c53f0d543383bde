"""GET /backup/{name}/materialized lists what the database holds, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AddBackup

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_unknown_spec_is_404(client: TestClient) -> None:
    assert client.get("/backup/ghost/materialized").status_code == 404


def test_a_spec_without_backups_lists_nothing(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.get("/backup/db1/materialized")
    assert answer.status_code == 200
    assert answer.json() == []


def test_lists_every_field_newest_first(client: TestClient, add_backup: AddBackup) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    old = add_backup("db1", "REMOVED", scheduled_at=T0, tags="", remove_workflow_id="rw-1")
    berlin = timezone(timedelta(hours=1))
    new = add_backup(
        "db1",
        "COMPLETED",
        scheduled_at=T0 + timedelta(days=1),
        start_time=(T0 + timedelta(days=1, seconds=1)).astimezone(berlin),
        end_time=T0 + timedelta(days=1, minutes=5),
        size_mb=12.5,
        tags="daily,weekly",
        pinned=True,
        data_id="s3://bucket/key",
        create_workflow_id="cw-2",
        backup_task_id="task-2",
    )
    add_backup("db2", "COMPLETED", scheduled_at=T0 + timedelta(days=5))

    answer = client.get("/backup/db1/materialized")
    assert answer.status_code == 200
    listed = answer.json()
    assert [b["id"] for b in listed] == [new, old]
    assert listed[0] == {
        "id": new,
        "dataId": "s3://bucket/key",
        "status": "COMPLETED",
        "scheduledTime": "2024-03-02T12:00:00Z",
        "startTime": "2024-03-02T12:00:01Z",
        "endTime": "2024-03-02T12:05:00Z",
        "sizeMB": 12.5,
        "tags": ["daily", "weekly"],
        "pinned": True,
        "createWorkflowId": "cw-2",
        "removeWorkflowId": None,
        "expiresAt": None,
        "lastError": None,
        "checksum": None,
        "verifyStatus": "NEVER",
        "lastVerifiedAt": None,
        "verifyDetails": None,
        "lastVerify": None,
        "lastRestore": None,
    }
    assert listed[1]["tags"] == []
    assert listed[1]["removeWorkflowId"] == "rw-1"


def test_filters_by_status_and_tag(client: TestClient, add_backup: AddBackup) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    daily = add_backup("db1", "COMPLETED", scheduled_at=T0, tags="daily")
    both = add_backup("db1", "COMPLETED", scheduled_at=T0 + timedelta(hours=1), tags="daily,weekly")
    weekly_only = add_backup("db1", "REMOVING", scheduled_at=T0 + timedelta(hours=2), tags="weekly")
    failed = add_backup("db1", "FAILED", scheduled_at=T0 + timedelta(hours=3))

    def ids(**params: object) -> list[int]:
        answer = client.get("/backup/db1/materialized", params=params)
        assert answer.status_code == 200, answer.text
        return [b["id"] for b in answer.json()]

    assert ids(status="COMPLETED") == [both, daily]
    assert ids(status="failed") == [failed]
    assert ids(status=["FAILED", "REMOVING"]) == [failed, weekly_only]
    assert ids(tag="daily") == [both, daily]
    assert ids(tag="weekly") == [weekly_only, both]
    assert ids(tag="WEEKLY", status="COMPLETED") == [both]
    assert ids(tag="yearly") == []
    assert ids(status="REMOVED") == []

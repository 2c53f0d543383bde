"""DELETE never loses track of stored backups; purge hands them to the removal outbox."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backtor.db.models import Backup, BackupSpec, Fire
from backtor.db.repository import finish_purge_if_done
from tests.api.conftest import AddBackup, MakeClient

pytestmark = pytest.mark.integration


def _backup_count(session: Session) -> int:
    count = int(session.scalar(select(func.count()).select_from(Backup)) or 0)
    session.rollback()  # SQLite: every transaction holds the write lock (BEGIN IMMEDIATE)
    return count


def _states(session: Session, *backup_ids: int) -> list[tuple[str, str | None]]:
    """(status, removeWorkflowId) of each backup, read afresh."""
    session.expire_all()
    rows = [session.get(Backup, backup_id) for backup_id in backup_ids]
    states = [(row.status, row.remove_workflow_id) for row in rows if row is not None]
    session.rollback()  # SQLite: every transaction holds the write lock (BEGIN IMMEDIATE)
    return states


def test_a_spec_without_backups_is_deleted_at_once(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    answer = client.delete("/backup/db1")
    assert answer.status_code == 204
    assert answer.content == b""
    assert client.get("/backup/db1").status_code == 404
    assert [s["name"] for s in client.get("/backup").json()] == ["db2"]


def test_delete_of_an_unknown_spec_is_404(client: TestClient) -> None:
    assert client.delete("/backup/ghost").status_code == 404
    assert client.delete("/backup/ghost?purge=true").status_code == 404


def test_only_finished_history_does_not_block_and_is_deleted_with_the_spec(
    client: TestClient, add_backup: AddBackup, session: Session
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    for status in ("FAILED", "TIMED_OUT", "REMOVED"):
        add_backup("db1", status)
    assert client.delete("/backup/db1").status_code == 204
    assert _backup_count(session) == 0  # ON DELETE CASCADE, SQLite included


@pytest.mark.parametrize("status", ["RUNNING", "COMPLETED", "REMOVING", "REMOVE_FAILED"])
def test_backups_not_removed_block_a_plain_delete(
    client: TestClient, add_backup: AddBackup, session: Session, status: str
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    first = add_backup("db1", status)
    add_backup("db1", "REMOVED")
    for query in ("", "?purge=false", "?purge=0"):
        answer = client.delete(f"/backup/db1{query}")
        assert answer.status_code == 409
        assert "purge=true" in answer.json()["message"]
    spec = client.get("/backup/db1").json()
    assert spec["enabled"] == 1 and spec["deleting"] is False
    assert _backup_count(session) == 2
    assert _states(session, first) == [(status, None)]


def test_purge_disables_marks_and_hands_over_the_backups(
    client: TestClient, add_backup: AddBackup, session: Session
) -> None:
    # `client` talks to a Conductor that is not there: a purge never needs it.
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    completed = add_backup("db1", "COMPLETED")
    failed_removal = add_backup("db1", "REMOVE_FAILED")
    add_backup("db1", "FAILED")

    answer = client.delete("/backup/db1", params={"purge": "true"})
    assert answer.status_code == 202
    assert answer.json()["name"] == "db1"
    assert answer.json()["pendingBackups"] == 2
    # In the removal outbox, for the scheduler's pass to start: no workflow yet.
    assert _states(session, completed, failed_removal) == [
        ("REMOVING", None),
        ("REMOVE_FAILED", None),
    ]

    spec = client.get("/backup/db1").json()
    assert spec["enabled"] == 0
    assert spec["deleting"] is True
    assert spec["nextFireTime"] is None
    assert client.get("/backup/db2").json()["deleting"] is False

    # While the purge runs, the spec cannot change nor take backups.
    assert client.put("/backup/db1", json={"enabled": 1}).status_code == 409
    assert client.post("/backup/db1/materialized").status_code == 409
    assert client.get("/backup/db1").json()["enabled"] == 0
    # Asking again is harmless.
    again = client.delete("/backup/db1?purge=true")
    assert (again.status_code, again.json()["pendingBackups"]) == (202, 2)
    assert _states(session, completed) == [("REMOVING", None)]


def test_purge_marks_at_most_the_per_run_cap_oldest_first(
    make_client: MakeClient, add_backup: AddBackup, session: Session
) -> None:
    """The scheduler's advance_purges marks the rest, one cap per pass; so does a repeat."""
    client = make_client(env={"BACKTOR_MAX_REMOVALS_PER_RUN": "2"})
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    ids = [
        add_backup("db1", "COMPLETED", scheduled_at=datetime(2024, 1, day, tzinfo=UTC))
        for day in (3, 1, 2)
    ]
    answer = client.delete("/backup/db1?purge=true")
    assert (answer.status_code, answer.json()["pendingBackups"]) == (202, 3)
    assert [status for status, _ in _states(session, *ids)] == [
        "COMPLETED",  # the newest waits for the next pass
        "REMOVING",
        "REMOVING",
    ]
    assert client.delete("/backup/db1?purge=true").status_code == 202
    assert [status for status, _ in _states(session, *ids)] == ["REMOVING"] * 3


def test_finish_purge_if_done_deletes_the_spec_after_its_last_removal(
    client: TestClient, add_backup: AddBackup, session: Session
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    first = add_backup("db1", "COMPLETED")
    second = add_backup("db1", "COMPLETED")
    assert client.delete("/backup/db1?purge=true").status_code == 202
    spec_id = session.scalars(select(BackupSpec.id).where(BackupSpec.name == "db1")).one()

    for backup_id, expect_done in [(first, False), (second, True)]:
        backup = session.get(Backup, backup_id)
        assert backup is not None
        backup.status = "REMOVED"
        assert finish_purge_if_done(session, spec_id) is expect_done
        session.commit()
    assert client.get("/backup/db1").status_code == 404
    assert _backup_count(session) == 0


def test_finish_purge_if_done_leaves_specs_that_are_not_purged(
    client: TestClient, session: Session
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    spec_id = session.scalars(select(BackupSpec.id).where(BackupSpec.name == "db1")).one()
    assert finish_purge_if_done(session, spec_id) is False
    assert finish_purge_if_done(session, spec_id + 1000) is False
    session.commit()
    assert client.get("/backup/db1").status_code == 200


@pytest.mark.parametrize("fire_status", ["PENDING", "STARTED"])
def test_a_backup_starting_or_under_way_keeps_the_spec(
    client: TestClient, session: Session, fire_status: str
) -> None:
    """A PENDING fire (a start may be under way) or a running create_backup: its data
    would outlive the spec. A plain DELETE is refused; a purge waits for it."""
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    spec_id = session.scalars(select(BackupSpec.id).where(BackupSpec.name == "db1")).one()
    at = datetime(2024, 1, 1, tzinfo=UTC)
    session.add(Fire(spec_id=spec_id, scheduled_at=at, status=fire_status, created_at=at))
    session.commit()
    answer = client.delete("/backup/db1")
    assert answer.status_code == 409
    assert "1 backup(s)" in answer.json()["message"]
    purge = client.delete("/backup/db1?purge=true")
    assert (purge.status_code, purge.json()["pendingBackups"]) == (202, 1)
    assert client.get("/backup/db1").json()["deleting"] is True

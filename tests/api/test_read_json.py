"""The read routes write their JSON themselves (docs/performance.md, "API"): the bytes must
be the ones FastAPI wrote from the response models, and the rows those the entities held.

Every answer is checked against its model: validated by it and written again by it, the
same bytes come out (same fields, same order, same number and date formats). On
PostgreSQL and SQLite, with every optional field and every backup status set.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from backtor.api.schemas import (
    BackupOut,
    RetentionPlanOut,
    RetentionPreviewOut,
    SpecOut,
    backup_fields,
    backups_json,
    spec_fields,
    spec_json,
)
from backtor.core.retention import BackupRecord
from backtor.db import repository
from backtor.db.engine import Reads, make_engine
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling.recording import CANDIDATE_STATUSES, completed_records
from tests.api.conftest import AddBackup

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BERLIN = timezone(timedelta(hours=1))
FULL_SPEC = {
    "name": "full",
    "enabled": 0,
    "pausedReason": 'paused: "maintenance" \\ </script> é',
    "fromDate": "2024-01-01T00:00:00.000001Z",
    "toDate": "2099-12-31T23:59:59.999999+01:00",
    "backupCronString": "0 0 */4 ? * *",
    "timezone": "Europe/Berlin",
    "workerConfig": '{"kind": "filesystem", "source": "/srv/a"}',
    "timeoutSeconds": 7200,
    "misfireGraceSeconds": 600,
    "overlapPolicy": "bufferOne",
    "notifyUrl": "https://hooks.example/backtor?a=1&b=2",
    "retentionHourly": "6",
    "retentionDaily": "0@3",
    "retentionKeepWithin": "1d12h",
    "retentionLast": 3,
    "autoPauseAfterFailures": 4,
    "removalDelaySeconds": 60,
    "jitterSeconds": 300,
    "verifyCronString": "0 0 5 * * *",
    "verifySampleRate": 0.1,
}


def by_id(records: list[BackupRecord]) -> list[BackupRecord]:
    return sorted(records, key=lambda record: record.id)


def round_trip(model: Any, body: bytes) -> None:
    """`body` is what the model writes for the values it holds."""
    adapter = TypeAdapter(model)
    assert adapter.dump_json(adapter.validate_json(body)) == body


@pytest.fixture
def history(client: TestClient, add_backup: AddBackup, engine: Engine) -> dict[str, int]:
    """Spec `full` (every field set) and `plain`, with a backup in every status."""
    assert client.post("/backup", json=FULL_SPEC).status_code == 201
    assert client.post("/backup", json={"name": "plain"}).status_code == 201
    with engine.begin() as connection:  # runtime state no request can set
        connection.execute(
            update(BackupSpec)
            .where(BackupSpec.name == "full")
            .values(
                running_create_workflow_id="wf-running",
                last_skip_at=T0,
                last_skip_reason="running",
                consecutive_failures=2,
            )
        )
    ids: dict[str, int] = {}
    for day, status in enumerate(BackupStatus):
        at = T0 + timedelta(days=day)
        ids[status.value] = add_backup(
            "full",
            status.value,
            scheduled_at=at,
            start_time=(at + timedelta(seconds=1)).astimezone(BERLIN),
            end_time=at + timedelta(minutes=5, microseconds=7),
            size_mb=[12.5, 3.0, 1e-7, 123456789.125, None, 0.0, 7.0, 2.5][day],
            tags=["daily,weekly", "", "daily", "hourly,daily,", "", "monthly", "", "yearly"][day],
            pinned=status is BackupStatus.COMPLETED,
            expires_at=at + timedelta(hours=1) if status is BackupStatus.EXPIRING else None,
            last_error="disk full: é \x01" if status is BackupStatus.FAILED else None,
            checksum=f"{day:064x}",
            create_workflow_id=f"cw-{day}",
            backup_task_id=f"task-{day}",
            verify_status=["VERIFIED", "FAILED", "NEVER"][day % 3],
            last_verified_at=at + timedelta(hours=2) if day % 3 < 2 else None,
            verify_details="checked" if day % 3 < 2 else None,
            verify_workflow_id=f"vw-{day}" if day % 2 else None,
            verify_run_status=["STARTING", "RUNNING", "COMPLETED", "FAILED"][day % 4]
            if day % 2
            else None,
            verify_requested_at=at + timedelta(hours=1) if day % 2 else None,
            restore_workflow_id=f"rw-{day}" if day % 3 == 1 else None,
            restore_status="COMPLETED" if day % 3 == 1 else None,
            restore_requested_at=at + timedelta(hours=3) if day % 3 == 1 else None,
            restore_details="restored to /srv/r" if day % 3 == 1 else None,
        )
    return ids


def test_every_read_answer_is_its_models_json(client: TestClient, history: dict[str, int]) -> None:
    answers = [
        (list[SpecOut], client.get("/backup")),
        (list[SpecOut], client.get("/backup", params={"limit": 1, "after": "full"})),
        (list[SpecOut], client.get("/backup", params={"enabled": "0"})),
        (SpecOut, client.get("/backup/full")),
        (SpecOut, client.get("/backup/plain")),
        (list[BackupOut], client.get("/backup/full/materialized")),
        (list[BackupOut], client.get("/backup/plain/materialized")),
        (
            list[BackupOut],
            client.get(
                "/backup/full/materialized",
                params={"limit": 2, "after": str(history["REMOVED"]), "status": "completed"},
            ),
        ),
        (list[BackupOut], client.get("/backup/full/materialized", params={"tag": "daily"})),
        (RetentionPlanOut, client.get("/backup/full/retention")),
        (RetentionPlanOut, client.get("/backup/full/retention", params={"limit": 3})),
        (
            RetentionPreviewOut,
            client.post(
                "/backup/full/retention/preview",
                json={"retentionDaily": "1", "retentionHourly": "0", "timezone": "UTC"},
            ),
        ),
    ]
    for model, answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        round_trip(model, answer.content)
    full = client.get("/backup/full").json()
    assert full["runningCreateWorkflowID"] == "wf-running"
    assert full["verifySampleRate"] == 0.1 and full["toDate"] == "2099-12-31T22:59:59.999999Z"
    listed = client.get("/backup/full/materialized").json()
    assert {b["status"] for b in listed} == {s.value for s in BackupStatus}
    assert any(b["lastVerify"] and b["lastRestore"] for b in listed)


def test_rows_and_entities_give_the_same_json(
    client: TestClient, history: dict[str, int], session: Session, engine: Engine
) -> None:
    """The read paths' rows against the entities the routes used to load and validate."""
    specs = repository.list_specs(session)
    backups = repository.list_backups(session, specs[0].id)
    assert [s.name for s in specs] == ["full", "plain"] and len(backups) == len(BackupStatus)
    with Reads(engine).connect() as connection:
        spec_rows = repository.list_spec_rows(connection, limit=10)
        backup_rows = repository.list_backup_rows(connection, specs[0].id, limit=100)
        by_name = repository.list_backup_rows_by_name(connection, "full", limit=100)
        assert by_name == backup_rows
        for entity, row in zip(specs, spec_rows, strict=True):
            assert list(spec_fields(row)) == list(SpecOut.model_fields)
            assert spec_json(row) == SpecOut.of(entity).model_dump_json().encode()
            assert repository.spec_row(connection, entity.name) == row
        assert [b.id for b in backup_rows] == [b.id for b in backups]
        for backup, backup_row in zip(backups, backup_rows, strict=True):
            assert list(backup_fields(backup_row)) == list(BackupOut.model_fields)
            assert BackupOut.of(backup_row) == BackupOut.of(backup)
        models = TypeAdapter(list[BackupOut]).dump_json([BackupOut.of(b) for b in backups])
        assert backups_json(backup_rows) == models
        candidates = repository.candidate_records(connection, specs[0].id, CANDIDATE_STATUSES)
        # A first page holding every backup gives the plan's inputs itself; a partial one
        # reads them: the same either way.
        whole = repository.plan_inputs(
            connection, specs[0].id, CANDIDATE_STATUSES, after=None, fetch=100
        )
        partial = repository.plan_inputs(
            connection, specs[0].id, CANDIDATE_STATUSES, after=None, fetch=2
        )
    expected = completed_records(session, specs[0].id)
    assert by_id(candidates) == by_id(expected)
    assert {int(r.id) for r in candidates} == {history["COMPLETED"], history["EXPIRING"]}
    others = repository.count_backups_other_than(
        session, specs[0].id, *(BackupStatus(s) for s in CANDIDATE_STATUSES)
    )
    assert len(whole.page) == len(BackupStatus) and len(partial.page) == 2
    for inputs in (whole, partial):
        assert by_id(inputs.candidates) == by_id(expected)
        assert inputs.others == others == len(BackupStatus) - 2


def test_a_spec_with_no_backups_and_a_missing_one(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "empty"}).status_code == 201
    assert client.get("/backup/empty/materialized").json() == []
    for path in ("/backup/ghost", "/backup/ghost/materialized", "/backup/ghost/retention"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.json() == {"message": "backup spec 'ghost' not found", "field": "name"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reads_do_not_wait_for_a_writer(client: TestClient, engine: Engine) -> None:
    """A GET reads its snapshot while another connection holds SQLite's write lock (BEGIN
    IMMEDIATE, as every write takes it): it used to queue behind it, up to the 10 s busy
    timeout, and answer 503 when the writer took longer."""
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    holding = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with engine.connect() as connection:  # its transaction starts with BEGIN IMMEDIATE
            connection.execute(text("UPDATE backup_spec SET consecutive_failures = 1"))
            holding.set()
            release.wait(30)
            connection.rollback()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        began = time.monotonic()
        for path in ("/backup", "/backup/db1", "/backup/db1/materialized"):
            answer = client.get(path)
            assert answer.status_code == 200, answer.text
        assert client.get("/backup/db1").json()["consecutiveFailures"] == 0  # not the uncommitted
        assert time.monotonic() - began < 5
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_reads_skip_the_transaction_under_read_committed(engine: Engine) -> None:
    """No BEGIN/ROLLBACK round trips for a read, as long as every statement reads its own
    snapshot anyway (READ COMMITTED); a database whose default is stricter keeps them."""
    reads = Reads(engine)
    with reads.connect() as connection:  # the first connection tells the default level
        connection.execute(text("SELECT 1"))
    with reads.connect() as connection:
        assert connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        assert connection.execute(text("SELECT 1")).scalar() == 1
    with engine.connect() as connection:  # the pool's connections are given back as they were
        assert connection.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
        assert not connection.connection.dbapi_connection.autocommit  # type: ignore[union-attr]

    with engine.begin() as connection:
        name = connection.execute(text("SELECT current_database()")).scalar()
        connection.exec_driver_sql(
            f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        )
    # A new engine: its dialect learns the new default at its first connection.
    other = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        other_reads = Reads(other)
        for _ in range(2):
            with other_reads.connect() as connection:
                assert connection.get_execution_options().get("isolation_level") is None
                connection.execute(text("SELECT 1"))
    finally:
        other.dispose()


def test_a_read_sees_the_rows_a_write_just_committed(client: TestClient, session: Session) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    spec = session.query(BackupSpec).filter_by(name="db1").one()
    session.add(Backup(spec_id=spec.id, status="COMPLETED", scheduled_at=T0))
    session.commit()
    assert len(client.get("/backup/db1/materialized").json()) == 1
    assert client.put("/backup/db1", json={"retentionDaily": "7"}).status_code == 200
    assert client.get("/backup/db1").json()["retentionDaily"] == "7@L"

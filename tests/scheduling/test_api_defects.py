"""Regression tests for defects 2, 3 and 10a, through the API on SQLite and the Conductor twin.

Each failed on the code before its fix. The app is the real one (create_app) on the `core`
fixture's database, twin and manual clock, so a request and a scheduler pass share one
simulated time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from backtor.api.app import create_app
from backtor.conductor.names import CREATE_BACKUP
from backtor.conductor.twin import FaultKind, Operation
from backtor.db.models import BackupSpec, Fire
from backtor.scheduling.tick import run_tick
from tests.scheduling.conftest import Core, seconds

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette suggests httpx2; the TestClient works the same
    from fastapi.testclient import TestClient


@pytest.fixture
def api(core: Core) -> Iterator[TestClient]:
    """The API on the core's database, twin and clock."""
    app = create_app(
        core.services.settings,
        engine=core.services.engine,
        conductor=core.twin,
        clock=core.clock,
    )
    with TestClient(app) as client:
        yield client


def fires(core: Core, name: str) -> list[Any]:
    with core.services.db() as session:
        return list(
            session.execute(
                select(
                    Fire.scheduled_at, Fire.status, Fire.skip_reason, Fire.workflow_id, Fire.manual
                )
                .join(BackupSpec, BackupSpec.id == Fire.spec_id)
                .where(BackupSpec.name == name)
                .order_by(Fire.scheduled_at)
            )
        )


def put_back(api: TestClient, name: str, **changes: Any) -> dict[str, Any]:
    """GET the spec, change fields, PUT the whole body back (what docs/api.md tells clients)."""
    body = api.get(f"/backup/{name}").json()
    body.update(changes)
    answer = api.put(f"/backup/{name}", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


SPEC = {"name": "db", "backupCronString": "*/10 * * * * *", "workerConfig": "{}"}


# --- Defect 2: a PUT silently dropped a due fire ------------------------------------------


def test_an_unchanged_put_between_the_due_time_and_the_pass_keeps_the_fire(
    core: Core, api: TestClient
) -> None:
    assert api.post("/backup", json=SPEC).status_code == 201
    due = core.due("db")
    core.advance_to(due, plus=2.0)  # the tick is late (a slow pass, a failover)

    body = put_back(api, "db")  # changes nothing

    assert core.due("db") == due
    assert body["nextFireTime"] == due.isoformat().replace("+00:00", "Z")
    run_tick(core.services)
    ((at, status, reason, workflow_id, _),) = fires(core, "db")
    assert (at, status, reason) == (due, "STARTED", None)
    (run,) = core.twin.workflows(CREATE_BACKUP)
    assert run.workflow_id == workflow_id


def test_a_put_that_changes_the_schedule_still_decides_the_due_fire(
    core: Core, api: TestClient
) -> None:
    assert api.post("/backup", json=SPEC).status_code == 201
    due = core.due("db")
    core.advance_to(due, plus=2.0)

    put_back(api, "db", backupCronString="0 0 * * * *")  # hourly from now on

    run_tick(core.services)
    ((at, status, _, _, _),) = fires(core, "db")
    assert (at, status) == (due, "STARTED")  # the fire due before the change is taken
    next_hour = core.now().replace(minute=0, second=0, microsecond=0) + seconds(3600)
    assert core.due("db") == next_hour  # then the new schedule applies


def test_a_put_records_a_due_fire_past_its_grace_as_a_misfire(core: Core, api: TestClient) -> None:
    assert api.post("/backup", json={**SPEC, "misfireGraceSeconds": 60}).status_code == 201
    due = core.due("db")
    core.advance_to(due, plus=95.0)  # the tick was down: due+0 ... due+90 passed over

    put_back(api, "db", timezone="Europe/Berlin")

    rows = fires(core, "db")
    assert [(r.status, r.skip_reason) for r in rows[:-1]] == [("SKIPPED", "misfire")] * 9
    assert rows[0].scheduled_at == due
    assert (rows[-1].scheduled_at, rows[-1].status) == (due + seconds(90), "PENDING")
    spec = api.get("/backup/db").json()
    assert spec["lastSkipReason"] == "misfire"
    run_tick(core.services)
    assert fires(core, "db")[-1].status == "STARTED"  # the latest, within the grace


def test_a_put_that_disables_the_spec_still_takes_the_backup_already_due(
    core: Core, api: TestClient
) -> None:
    assert api.post("/backup", json=SPEC).status_code == 201
    due = core.due("db")
    core.advance_to(due, plus=1.0)

    body = put_back(api, "db", enabled=0)

    assert body["nextFireTime"] is None
    run_tick(core.services)
    assert [(r.scheduled_at, r.status) for r in fires(core, "db")] == [(due, "STARTED")]


def test_a_put_before_the_due_time_moves_the_schedule_and_writes_no_fire(
    core: Core, api: TestClient
) -> None:
    assert api.post("/backup", json=SPEC).status_code == 201
    core.advance_to(core.due("db"), plus=-3.0)

    put_back(api, "db", backupCronString="0 0 * * * *")

    assert fires(core, "db") == []
    assert core.due("db") == core.now().replace(minute=0, second=0, microsecond=0) + seconds(3600)


# --- Defect 3: a grace no pass can meet ----------------------------------------------------

GRACE_FLOOR = 10  # backtor.core.specs.MIN_MISFIRE_GRACE_SECONDS


def test_a_grace_shorter_than_a_late_pass_is_refused(core: Core, api: TestClient) -> None:
    for grace in (0, 1, GRACE_FLOOR - 1):
        answer = api.post("/backup", json={**SPEC, "misfireGraceSeconds": grace})
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "misfireGraceSeconds"
    assert api.get("/backup").json() == []


def test_the_smallest_grace_still_fires_when_the_pass_is_late(core: Core, api: TestClient) -> None:
    spec = {**SPEC, "misfireGraceSeconds": GRACE_FLOOR}
    assert api.post("/backup", json=spec).status_code == 201
    due = core.due("db")
    core.advance_to(due, plus=GRACE_FLOOR - 0.5)  # a pass as late as the floor allows

    run_tick(core.services)

    assert [(r.scheduled_at, r.status) for r in fires(core, "db")] == [(due, "STARTED")]


# --- Defect 10a: a manual start whose answer was lost -------------------------------------

HOURLY = {**SPEC, "backupCronString": "0 0 * * * *"}  # no scheduled fire during these tests


@pytest.mark.parametrize("fault", [FaultKind.LOST_ANSWER, FaultKind.BAD_ANSWER])
def test_a_trigger_whose_start_answer_was_lost_reports_the_backup_it_started(
    core: Core, api: TestClient, fault: FaultKind
) -> None:
    """It answered 503 "no backup was started" (502 for a garbled answer) and closed the fire."""
    assert api.post("/backup", json=HOURLY).status_code == 201
    core.twin.faults.inject(Operation.START_WORKFLOW, fault)

    answer = api.post("/backup/db/materialized")

    assert answer.status_code == 202, answer.text
    (run,) = core.twin.workflows(CREATE_BACKUP)
    assert answer.json() == {"name": "db", "workflowId": run.workflow_id}
    ((_, status, reason, workflow_id, manual),) = fires(core, "db")
    assert (status, reason, workflow_id, manual) == ("STARTED", None, run.workflow_id, True)
    assert api.get("/backup/db").json()["runningCreateWorkflowID"] == run.workflow_id


def test_a_trigger_that_cannot_tell_whether_it_started_leaves_the_fire_to_the_scheduler(
    core: Core, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.post("/backup", json=HOURLY).status_code == 201
    start = core.twin.start_workflow

    def start_then_lose_conductor(*args: Any, **kwargs: Any) -> str:
        try:
            return start(*args, **kwargs)
        finally:  # the lookup after the lost answer fails too
            core.twin.faults.inject(Operation.GET_CORRELATED, FaultKind.UNAVAILABLE)

    monkeypatch.setattr(core.twin, "start_workflow", start_then_lose_conductor)
    core.twin.faults.inject(Operation.START_WORKFLOW, FaultKind.LOST_ANSWER)

    answer = api.post("/backup/db/materialized")

    assert answer.status_code == 503, answer.text
    message = answer.json()["message"]
    assert "no backup was started" not in message
    assert "may have started" in message and "scheduler" in message
    ((_, status, _, _, _),) = fires(core, "db")
    assert status == "PENDING"

    run_tick(core.services)  # Conductor answers again: the pass adopts the run

    (run,) = core.twin.workflows(CREATE_BACKUP)
    ((_, status, _, workflow_id, _),) = fires(core, "db")
    assert (status, workflow_id) == ("STARTED", run.workflow_id)


def test_a_trigger_whose_start_never_happened_closes_its_fire(core: Core, api: TestClient) -> None:
    assert api.post("/backup", json=HOURLY).status_code == 201
    core.twin.faults.inject(Operation.START_WORKFLOW, FaultKind.UNAVAILABLE)

    answer = api.post("/backup/db/materialized")

    assert answer.status_code == 503, answer.text
    assert "no backup was started" in answer.json()["message"]
    ((_, status, reason, _, _),) = fires(core, "db")
    assert (status, reason) == ("SKIPPED", "conductor_unavailable")
    run_tick(core.services)
    assert core.twin.workflows(CREATE_BACKUP) == []

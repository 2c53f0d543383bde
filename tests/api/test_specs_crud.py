"""The /backup endpoints through HTTP, on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backtor.core.policy import DEFAULT_POLICY
from backtor.db.models import BackupSpec, Fire

pytestmark = pytest.mark.integration

READ_ONLY = {
    "runningCreateWorkflowID",
    "lastUpdate",
    "createdAt",
    "cronDerived",
    "nextFireTime",
    "lastSkipTime",
    "lastSkipReason",
    "deleting",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_post_stores_the_spec_with_every_default(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "db1"})
    assert answer.status_code == 201
    assert answer.headers["location"] == "/backup/db1"
    body = answer.json()
    assert body == client.get("/backup/db1").json()
    assert body["name"] == "db1"
    assert body["enabled"] == 1
    assert body["fromDate"] is None and body["toDate"] is None
    assert body["timezone"] == "UTC"
    assert body["workerConfig"] is None
    assert body["timeoutSeconds"] is None
    assert body["misfireGraceSeconds"] == 3600
    assert {k: body[k] for k in DEFAULT_POLICY.to_fields()} == DEFAULT_POLICY.to_fields()
    assert body["cronDerived"] is True
    assert body["runningCreateWorkflowID"] is None
    assert body["deleting"] is False
    assert body["lastSkipTime"] is None and body["lastSkipReason"] is None
    last_update = _parse(body["lastUpdate"])
    assert abs(datetime.now(UTC) - last_update) < timedelta(minutes=1)
    assert _parse(body["nextFireTime"]) > last_update


def test_post_of_an_existing_name_is_409_and_keeps_the_first(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1", "retentionDaily": "5"}).status_code == 201
    again = client.post("/backup", json={"name": "db1", "retentionDaily": "9"})
    assert again.status_code == 409
    assert again.json()["field"] == "name"
    assert client.get("/backup/db1").json()["retentionDaily"] == "5@L"


def test_list_is_ordered_by_name_and_filters_on_enabled(client: TestClient) -> None:
    for name, enabled in [("b", 1), ("A", 0), ("a-1", 1), ("Z9", 0), ("a.0", 1)]:
        assert client.post("/backup", json={"name": name, "enabled": enabled}).status_code == 201
    everything = client.get("/backup")
    assert everything.status_code == 200
    assert [s["name"] for s in everything.json()] == ["A", "Z9", "a-1", "a.0", "b"]
    assert [s["name"] for s in client.get("/backup?enabled=1").json()] == ["a-1", "a.0", "b"]
    assert [s["name"] for s in client.get("/backup", params={"enabled": "0"}).json()] == [
        "A",
        "Z9",
    ]


def test_list_of_nothing_is_an_empty_array(client: TestClient) -> None:
    answer = client.get("/backup")
    assert answer.status_code == 200
    assert answer.json() == []


@pytest.mark.parametrize("value", ["true", "2", "", "yes", "01"])
def test_list_rejects_other_enabled_values(client: TestClient, value: str) -> None:
    answer = client.get("/backup", params={"enabled": value})
    assert answer.status_code == 422
    assert answer.json()["field"] == "enabled"
    assert "message" in answer.json()


@pytest.mark.parametrize(("given", "shown"), [(True, 1), (False, 0), (1, 1), (0, 0)])
def test_enabled_accepts_booleans_and_answers_0_or_1(
    client: TestClient, given: Any, shown: int
) -> None:
    answer = client.post("/backup", json={"name": "x", "enabled": given})
    assert answer.status_code == 201
    assert answer.json()["enabled"] == shown
    assert client.get("/backup/x").json()["enabled"] == shown


def test_get_unknown_is_404(client: TestClient) -> None:
    answer = client.get("/backup/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["field"] == "name"
    assert "nothing-here" in answer.json()["message"]


def test_put_replaces_everything_and_omitted_fields_go_back_to_defaults(
    client: TestClient,
) -> None:
    full = {
        "name": "db1",
        "enabled": 0,
        "fromDate": "2030-01-01T00:00:00+02:00",
        "toDate": "2031-01-01T00:00:00Z",
        "backupCronString": "0 30 2 * * *",
        "timezone": "Europe/Berlin",
        "workerConfig": '{"bucket": "b"}',
        "timeoutSeconds": 600,
        "misfireGraceSeconds": 60,
        "retentionMinutely": "1@5",
        "retentionHourly": "2@7",
        "retentionDaily": "3@4",
        "retentionWeekly": "5@MON",
        "retentionMonthly": "6@15",
        "retentionYearly": "7@6",
    }
    created = client.post("/backup", json=full)
    assert created.status_code == 201
    stored = created.json()
    assert stored["fromDate"] == "2029-12-31T22:00:00Z"
    assert stored["toDate"] == "2031-01-01T00:00:00Z"
    assert stored["backupCronString"] == "0 30 2 * * *"
    assert stored["cronDerived"] is False
    assert stored["retentionWeekly"] == "5@1"
    assert stored["nextFireTime"] is None  # disabled

    replaced = client.put("/backup/db1", json={"retentionDaily": "9"})
    assert replaced.status_code == 200
    body = replaced.json()
    assert body == client.get("/backup/db1").json()
    assert body["enabled"] == 1
    assert body["fromDate"] is None and body["toDate"] is None
    assert body["timezone"] == "UTC"
    assert body["workerConfig"] is None
    assert body["timeoutSeconds"] is None
    assert body["misfireGraceSeconds"] == 3600
    expected = dict(DEFAULT_POLICY.to_fields(), retentionDaily="9@L")
    assert {k: body[k] for k in expected} == expected
    assert body["cronDerived"] is True  # re-derived: the cron was omitted
    assert body["backupCronString"] != "0 30 2 * * *"
    assert body["createdAt"] == stored["createdAt"]
    assert _parse(body["lastUpdate"]) >= _parse(stored["lastUpdate"])
    assert body["nextFireTime"] is not None


def test_put_with_the_name_in_the_body_as_in_the_seed(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.put("/backup", json={"name": "db1", "backupCronString": "0/2 * * * * *"})
    assert answer.status_code == 200
    assert answer.json()["backupCronString"] == "0/2 * * * * *"
    assert answer.json()["cronDerived"] is False
    assert client.get("/backup/db1").json()["backupCronString"] == "0/2 * * * * *"


def test_put_of_an_absent_spec_is_404_and_creates_nothing(client: TestClient) -> None:
    assert client.put("/backup/ghost", json={}).status_code == 404
    assert client.put("/backup", json={"name": "ghost"}).status_code == 404
    assert client.get("/backup").json() == []


def test_put_without_a_name_in_the_body_is_422(client: TestClient) -> None:
    answer = client.put("/backup", json={"retentionDaily": "3"})
    assert answer.status_code == 422
    assert answer.json()["field"] == "name"


def test_put_cannot_rename(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.put("/backup/db1", json={"name": "db2"})
    # A representation inconsistent with its target resource: 409 (RFC 9110, 9.3.4).
    assert answer.status_code == 409
    assert answer.json()["field"] == "name"
    assert [s["name"] for s in client.get("/backup").json()] == ["db1"]


def test_a_get_body_can_be_sent_back_unchanged(client: TestClient) -> None:
    created = client.post(
        "/backup",
        json={
            "name": "db1",
            "backupCronString": "0 0 3 * * *",
            "fromDate": "2020-01-01T00:00:00Z",
            "workerConfig": "cfg",
            "timeoutSeconds": 30,
        },
    ).json()
    again = client.put("/backup/db1", json=client.get("/backup/db1").json())
    assert again.status_code == 200
    changed = {k for k in created if created[k] != again.json()[k]}
    assert changed <= {"lastUpdate"}


def test_read_only_fields_are_accepted_and_ignored(client: TestClient) -> None:
    answer = client.post(
        "/backup",
        json={
            "name": "db1",
            "RunningCreateWorkflowID": "c0535ba5-f838-4de7-979b-f436a8a66b17",
            "runningCreateWorkflowID": "other",
            "lastUpdate": "2019-07-21T00:52:50.0846172Z",
            "createdAt": "2019-07-21T00:52:50Z",
            "cronDerived": False,
            "nextFireTime": "2000-01-01T00:00:00Z",
            "lastSkipTime": "2000-01-01T00:00:00Z",
            "lastSkipReason": "whatever",
            "deleting": True,
        },
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["runningCreateWorkflowID"] is None
    assert body["cronDerived"] is True
    assert body["deleting"] is False
    assert body["lastSkipReason"] is None and body["lastSkipTime"] is None
    assert _parse(body["lastUpdate"]).year >= 2024
    assert _parse(body["nextFireTime"]).year >= 2024


def test_null_means_omitted(client: TestClient) -> None:
    answer = client.post(
        "/backup",
        json={"name": "db1", "enabled": None, "timezone": None, "backupCronString": None},
    )
    assert answer.status_code == 201
    assert answer.json()["enabled"] == 1
    assert answer.json()["timezone"] == "UTC"
    assert answer.json()["cronDerived"] is True


def test_empty_cron_string_means_derived(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "db1", "backupCronString": "  "})
    assert answer.status_code == 201
    assert answer.json()["cronDerived"] is True


def test_five_field_cron_is_stored_in_six_field_form(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "db1", "backupCronString": "30  2 * * mon"})
    assert answer.status_code == 201
    assert answer.json()["backupCronString"] == "0 30 2 * * MON"


def test_next_fire_time_is_in_the_spec_timezone(client: TestClient) -> None:
    answer = client.post(
        "/backup",
        json={
            "name": "db1",
            "backupCronString": "0 0 3 * * *",
            "timezone": "Europe/Berlin",
            "fromDate": "2030-07-01T00:00:00Z",
        },
    )
    assert answer.status_code == 201
    # 03:00 in Berlin in July is 01:00 UTC (CEST, +02:00); 2030-07-01T03:00+02:00 is first.
    assert answer.json()["nextFireTime"] == "2030-07-01T01:00:00Z"


def test_next_fire_time_respects_the_window(client: TestClient) -> None:
    now = datetime.now(UTC)
    at_from = client.post(
        "/backup",
        json={
            "name": "starts-later",
            "backupCronString": "0 0 * * * *",
            "fromDate": "2035-03-04T05:00:00Z",
        },
    ).json()
    assert at_from["nextFireTime"] == "2035-03-04T05:00:00Z"  # a fire at fromDate counts

    ended = client.post(
        "/backup",
        json={
            "name": "ended",
            "backupCronString": "0 0 0 1 1 *",
            "fromDate": _iso(now - timedelta(days=10)),
            "toDate": _iso(now + timedelta(seconds=5)),
        },
    ).json()
    assert ended["nextFireTime"] is None

    disabled = client.post("/backup", json={"name": "off", "enabled": 0}).json()
    assert disabled["nextFireTime"] is None
    enabled_again = client.put("/backup/off", json={"enabled": 1}).json()
    assert _parse(enabled_again["nextFireTime"]) > now


def test_openapi_documents_the_bodies_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path, method in [("/backup", "post"), ("/backup", "put"), ("/backup/{name}", "put")]:
        content = paths[path][method]["requestBody"]["content"]["application/json"]
        assert {"default", "daily", "every4h"} <= set(content["examples"])
    assert "/backup/{name}/materialized" in paths
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_unknown_route_answers_in_the_error_shape(client: TestClient) -> None:
    answer = client.get("/no/such/route")
    assert answer.status_code == 404
    assert set(answer.json()) == {"message", "field"}
    wrong_method = client.patch("/backup/x", json={})
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"message", "field"}


def test_a_duplicate_that_slips_past_the_lookup_is_still_409(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under concurrency the unique constraint, not the SELECT before it, decides."""
    from backtor.db import repository

    assert client.post("/backup", json={"name": "db1", "retentionDaily": "5"}).status_code == 201
    monkeypatch.setattr(repository, "get_spec", lambda *_args, **_kwargs: None)
    again = client.post("/backup", json={"name": "db1"})
    assert again.status_code == 409
    assert again.json() == {"message": "backup spec 'db1' already exists", "field": "name"}
    monkeypatch.undo()
    assert client.get("/backup/db1").json()["retentionDaily"] == "5@L"


def _make_due(session: Session, name: str, due: datetime) -> None:
    """As if the scheduler's pass were late: the spec's fire time has come, no fire written."""
    session.execute(update(BackupSpec).where(BackupSpec.name == name).values(next_fire_at=due))
    session.commit()


def _fires(session: Session) -> list[tuple[datetime, str, str | None]]:
    session.expire_all()
    rows = session.execute(
        select(Fire.scheduled_at, Fire.status, Fire.skip_reason).order_by(Fire.scheduled_at)
    )
    fires = [(row.scheduled_at, row.status, row.skip_reason) for row in rows]
    session.rollback()  # SQLite: every transaction holds the write lock (BEGIN IMMEDIATE)
    return fires


def test_a_put_keeps_or_settles_a_due_fire(client: TestClient, session: Session) -> None:
    """Defect 2 on both databases (tests/scheduling has the passes in simulated time)."""
    spec = {"name": "db1", "backupCronString": "0 * * * * *", "misfireGraceSeconds": 3600}
    assert client.post("/backup", json=spec).status_code == 201
    due = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    _make_due(session, "db1", due)

    unchanged = client.put("/backup/db1", json={**spec, "workerConfig": "new"})
    assert unchanged.status_code == 200
    assert unchanged.json()["nextFireTime"] == _iso(due)  # kept for the next pass
    assert _fires(session) == []

    changed = client.put("/backup/db1", json={**spec, "backupCronString": "0 0 * * * *"})
    assert changed.status_code == 200
    assert _parse(changed.json()["nextFireTime"]) > datetime.now(UTC)
    fires = _fires(session)
    # The due minute, the one after it, and (when the PUT came a minute later) a third:
    # the latest is left to the pass, the earlier ones were passed over.
    assert fires[0][0] == due
    assert [status for _, status, _ in fires[:-1]] == ["SKIPPED"] * (len(fires) - 1)
    assert {reason for _, _, reason in fires[:-1]} <= {"misfire"}
    assert fires[-1][1:] == ("PENDING", None)
    assert len(fires) in (3, 4)

"""The retention plan, a candidate policy's preview, and pins, through the API.

Every test runs on PostgreSQL and SQLite. The spec keeps 2 daily backups (UTC, the other
tiers off), so the plans can be worked out by hand:

    a  2026-01-01 10:00  COMPLETED  Jan 1's daily is b (23:00 is nearer 23 than 10:00)
    b  2026-01-01 23:00  COMPLETED  daily, but older than the 2 newest dailies
    c  2026-01-02 22:00  COMPLETED  daily, kept
    f  2026-01-02 23:30  FAILED     ignored: never kept, never removed
    d  2026-01-03 01:00  COMPLETED  daily, kept, and the newest
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AddBackup, MakeClient

pytestmark = pytest.mark.integration

DAILY_2 = {
    "retentionDaily": "2",
    "retentionWeekly": "0",
    "retentionMonthly": "0",
    "retentionYearly": "0",
}


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def ids(client: TestClient, add_backup: AddBackup) -> dict[str, int]:
    """The history above for spec db1 (and one backup of another spec, db2)."""
    assert client.post("/backup", json={"name": "db1", **DAILY_2}).status_code == 201
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    return {
        "a": add_backup("db1", scheduled_at=at(1, 10), data_id="data-a"),
        "b": add_backup("db1", scheduled_at=at(1, 23), data_id="data-b"),
        "c": add_backup("db1", scheduled_at=at(2, 22), data_id="data-c"),
        "f": add_backup("db1", "FAILED", scheduled_at=at(2, 23, 30), data_id=None),
        "d": add_backup("db1", scheduled_at=at(3, 1), data_id="data-d"),
        "other": add_backup("db2", scheduled_at=at(3, 2)),
    }


def plan(client: TestClient, name: str = "db1") -> dict[str, Any]:
    answer = client.get(f"/backup/{name}/retention")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def actions(body: dict[str, Any], ids: dict[str, int]) -> dict[str, tuple[str, list[str]]]:
    """label -> (action, reasons), newest first."""
    label = {v: k for k, v in ids.items()}
    return {label[b["id"]]: (b["action"], b["reasons"]) for b in body["backups"]}


def materialized(client: TestClient, **params: str) -> list[dict[str, Any]]:
    answer = client.get("/backup/db1/materialized", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


# --- GET /backup/{name}/retention -------------------------------------------------------


def test_plan_lists_every_backup_newest_first(client: TestClient, ids: dict[str, int]) -> None:
    body = plan(client)
    assert body["name"] == "db1"
    assert body["timezone"] == "UTC"
    assert body["policy"] == {
        "retentionMinutely": "0@L",
        "retentionHourly": "0@L",
        "retentionDaily": "2@L",
        "retentionWeekly": "0@L",
        "retentionMonthly": "0@L",
        "retentionYearly": "0@L",
        "retentionKeepWithin": "",
        "retentionLast": 0,
    }
    assert body["summary"] == {"keep": 2, "remove": 2, "ignore": 1}
    assert body["backups"] == [
        {
            "id": ids["d"],
            "dataId": "data-d",
            "status": "COMPLETED",
            "scheduledTime": "2026-01-03T01:00:00Z",
            "tags": ["daily"],
            "action": "keep",
            "reasons": ["daily", "newest"],
            "pinned": False,
            "expiresAt": None,
        },
        {
            "id": ids["f"],
            "dataId": None,
            "status": "FAILED",
            "scheduledTime": "2026-01-02T23:30:00Z",
            "tags": [],
            "action": "ignore",
            "reasons": [],
            "pinned": False,
            "expiresAt": None,
        },
        {
            "id": ids["c"],
            "dataId": "data-c",
            "status": "COMPLETED",
            "scheduledTime": "2026-01-02T22:00:00Z",
            "tags": ["daily"],
            "action": "keep",
            "reasons": ["daily"],
            "pinned": False,
            "expiresAt": None,
        },
        {
            "id": ids["b"],
            "dataId": "data-b",
            "status": "COMPLETED",
            "scheduledTime": "2026-01-01T23:00:00Z",
            "tags": ["daily"],
            "action": "remove",
            "reasons": [],
            "pinned": False,
            "expiresAt": None,
        },
        {
            "id": ids["a"],
            "dataId": "data-a",
            "status": "COMPLETED",
            "scheduledTime": "2026-01-01T10:00:00Z",
            "tags": [],
            "action": "remove",
            "reasons": [],
            "pinned": False,
            "expiresAt": None,
        },
    ]
    # Reading the plan changes nothing: no removal, no stored tag.
    assert {b["status"] for b in materialized(client)} == {"COMPLETED", "FAILED"}
    assert all(b["tags"] == [] for b in materialized(client))


def test_plan_of_a_spec_without_backups_is_empty(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "empty", "timezone": "Europe/Berlin"}).is_success
    body = plan(client, "empty")
    assert body["timezone"] == "Europe/Berlin"
    assert body["policy"]["retentionDaily"] == "4@L"
    assert body["summary"] == {"keep": 0, "remove": 0, "ignore": 0}
    assert body["backups"] == []


def test_plan_ignores_statuses_other_than_completed(
    client: TestClient, add_backup: AddBackup
) -> None:
    assert client.post("/backup", json={"name": "db1", **DAILY_2}).status_code == 201
    statuses = ["RUNNING", "FAILED", "TIMED_OUT", "REMOVING", "REMOVED", "REMOVE_FAILED"]
    for hour, status in enumerate(statuses):
        add_backup("db1", status, scheduled_at=at(1, hour))
    body = plan(client)
    assert body["summary"] == {"keep": 0, "remove": 0, "ignore": 6}
    assert [b["status"] for b in body["backups"]] == statuses[::-1]


# --- POST /backup/{name}/retention/preview ------------------------------------------------


def preview(client: TestClient, body: Any) -> dict[str, Any]:
    answer = client.post("/backup/db1/retention/preview", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_preview_shows_what_an_edit_would_remove_and_keep(
    client: TestClient, ids: dict[str, int]
) -> None:
    fewer = preview(client, {**DAILY_2, "retentionDaily": "1"})
    assert fewer["additionalRemovals"] == [ids["c"]]
    assert fewer["additionalKeeps"] == []
    assert fewer["policy"]["retentionDaily"] == "1@L"
    assert fewer["summary"] == {"keep": 1, "remove": 3, "ignore": 1}
    assert actions(fewer, ids)["c"] == ("remove", [])

    more = preview(client, {**DAILY_2, "retentionDaily": "3"})
    assert more["additionalRemovals"] == []
    assert more["additionalKeeps"] == [ids["b"]]

    same = preview(client, DAILY_2)
    assert same["additionalRemovals"] == same["additionalKeeps"] == []
    assert same["backups"] == plan(client)["backups"]


def test_preview_fields_left_out_take_the_defaults(client: TestClient, ids: dict[str, int]) -> None:
    """As in POST /backup: {} is the default policy (4 daily, 4 weekly, 3 monthly, 2 yearly)."""
    body = preview(client, {})
    assert body["policy"] == {
        "retentionMinutely": "0@L",
        "retentionHourly": "0@L",
        "retentionDaily": "4@L",
        "retentionWeekly": "4@L",
        "retentionMonthly": "3@L",
        "retentionYearly": "2@L",
        "retentionKeepWithin": "",
        "retentionLast": 0,
    }
    assert body["additionalKeeps"] == [ids["b"]]
    assert body["additionalRemovals"] == []
    # Saturday 2026-01-03 is the week's, the month's and the year's representative.
    assert actions(body, ids)["d"] == ("keep", ["daily", "weekly", "monthly", "yearly", "newest"])


def test_preview_in_another_zone(client: TestClient, ids: dict[str, int]) -> None:
    """In Tokyo (+9) c (Jan 3 07:00) and d (Jan 3 10:00) share a day: d is its daily."""
    body = preview(client, {**DAILY_2, "timezone": "Asia/Tokyo"})
    assert body["timezone"] == "Asia/Tokyo"
    assert body["additionalRemovals"] == [ids["c"]]
    assert body["additionalKeeps"] == [ids["b"]]
    # Without a timezone the spec's own (UTC) is used.
    assert preview(client, DAILY_2)["timezone"] == "UTC"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"retentionDaily": "4@"}, 422, "retentionDaily"),
        ({"retentionHourly": "1@60"}, 422, "retentionHourly"),
        ({"retentionWeekly": "1@MOO"}, 422, "retentionWeekly"),
        ({"retentionMonthly": "100001"}, 422, "retentionMonthly"),
        ({"retentionDaily": 4}, 422, "retentionDaily"),
        ({"timezone": "Mars/Olympus"}, 422, "timezone"),
        ({"timezone": 1}, 422, "timezone"),
        ({"retentionDayly": "4"}, 422, "retentionDayly"),
        ({"name": "db1"}, 422, "name"),
        ([], 422, None),
        ("4@L", 422, None),
    ],
)
def test_preview_refuses_what_post_backup_refuses(
    client: TestClient, ids: dict[str, int], body: Any, status: int, field: str | None
) -> None:
    answer = client.post("/backup/db1/retention/preview", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    # POST /backup gives the same answer for the same field.
    if isinstance(body, dict) and field not in (None, "name"):
        same = client.post("/backup", json={"name": "probe", **body})
        assert (same.status_code, same.json()) == (status, answer.json())


def test_preview_malformed_json_and_unknown_query(client: TestClient, ids: dict[str, int]) -> None:
    answer = client.post(
        "/backup/db1/retention/preview",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    answer = client.post("/backup/db1/retention/preview", params={"dry": "1"}, json={})
    assert (answer.status_code, answer.json()["field"]) == (422, "dry")
    # Refused previews changed nothing.
    assert client.get("/backup/db1").json()["retentionDaily"] == "2@L"
    assert client.get("/backup/probe").status_code == 404


# --- PUT / DELETE /backup/{name}/materialized/{id}/pin --------------------------------------


def pin(client: TestClient, backup_id: object, name: str = "db1") -> Any:
    return client.put(f"/backup/{name}/materialized/{backup_id}/pin")


def unpin(client: TestClient, backup_id: object, name: str = "db1") -> Any:
    return client.delete(f"/backup/{name}/materialized/{backup_id}/pin")


def test_a_pinned_backup_is_kept_and_tags_are_refreshed(
    client: TestClient, ids: dict[str, int]
) -> None:
    for _ in range(2):  # idempotent
        answer = pin(client, ids["b"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == ids["b"]
        assert answer.json()["pinned"] is True
        assert answer.json()["tags"] == []  # pins sit outside the policy
        assert answer.json()["status"] == "COMPLETED"

    assert actions(plan(client), ids) == {
        "d": ("keep", ["daily", "newest"]),
        "f": ("ignore", []),
        "c": ("keep", ["daily"]),
        "b": ("keep", ["pinned"]),
        "a": ("remove", []),
    }
    # The stored tags follow the new plan at once (with b out of the policy, a is Jan 1's
    # daily, though too old to be kept), and ?tag= filters on them ...
    stored = {b["id"]: (b["tags"], b["pinned"]) for b in materialized(client)}
    assert stored == {
        ids["d"]: (["daily"], False),
        ids["f"]: ([], False),
        ids["c"]: (["daily"], False),
        ids["b"]: ([], True),
        ids["a"]: (["daily"], False),
    }
    assert [b["id"] for b in materialized(client, tag="daily")] == [ids["d"], ids["c"], ids["a"]]
    # ... but nothing was removed: removals start only in retention runs.
    assert [b["id"] for b in materialized(client, status="COMPLETED")] == [
        ids["d"],
        ids["c"],
        ids["b"],
        ids["a"],
    ]

    for _ in range(2):
        answer = unpin(client, ids["b"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["pinned"] is False
        assert answer.json()["tags"] == ["daily"]
    assert actions(plan(client), ids)["b"] == ("remove", [])
    assert [b["id"] for b in materialized(client, tag="daily")] == [ids["d"], ids["c"], ids["b"]]
    assert len(materialized(client, status="COMPLETED")) == 4


def test_pinning_the_newest_takes_no_tier_slot(client: TestClient, ids: dict[str, int]) -> None:
    assert pin(client, ids["d"]).status_code == 200
    assert actions(plan(client), ids) == {
        "d": ("keep", ["newest", "pinned"]),
        "f": ("ignore", []),
        "c": ("keep", ["daily"]),
        "b": ("keep", ["daily"]),
        "a": ("remove", []),
    }
    # Today's plan knows the pin, so a preview compares against it.
    assert preview(client, DAILY_2)["additionalKeeps"] == []


@pytest.mark.parametrize("status", ["REMOVING", "REMOVED", "REMOVE_FAILED", "FAILED", "RUNNING"])
def test_only_a_completed_backup_can_be_pinned(
    client: TestClient, add_backup: AddBackup, status: str
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    backup_id = add_backup("db1", status)
    answer = pin(client, backup_id)
    assert answer.status_code == 409, answer.text
    assert answer.json() == {
        "message": f"backup {backup_id} is {status}: only a COMPLETED or EXPIRING backup can "
        "be pinned (a REMOVING or REMOVED one has its data going or gone)",
        "field": "id",
    }
    assert materialized(client)[0]["pinned"] is False
    # Unpinning is always allowed (and harmless).
    assert unpin(client, backup_id).status_code == 200


def test_pin_unknown_spec_or_backup_is_404(client: TestClient, ids: dict[str, int]) -> None:
    for call in (pin, unpin):
        answer = call(client, ids["a"], name="ghost")
        assert (answer.status_code, answer.json()["field"]) == (404, "name")
        for backup_id in (ids["other"], 999_999, "abc", "-1", "1.0", 2**31, "\u0661"):
            answer = call(client, backup_id)
            assert answer.status_code == 404, (call, backup_id)
            assert answer.json()["field"] == "id"
    # db2's backup is untouched.
    assert client.get("/backup/db2/materialized").json()[0]["pinned"] is False


def test_pin_refused_while_the_spec_is_purged(client: TestClient, ids: dict[str, int]) -> None:
    assert pin(client, ids["c"]).status_code == 200
    assert client.delete("/backup/db1", params={"purge": "true"}).status_code == 202
    answer = pin(client, ids["a"])
    assert answer.status_code == 409
    assert "being purged" in answer.json()["message"]
    assert unpin(client, ids["c"]).status_code == 200
    assert all(not b["pinned"] for b in materialized(client))


def test_retention_routes_need_the_token(make_client: MakeClient) -> None:
    client = make_client(token="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/backup", json={"name": "db1"}, headers=good).status_code == 201
    calls = [
        ("GET", "/backup/db1/retention"),
        ("POST", "/backup/db1/retention/preview"),
        ("PUT", "/backup/db1/materialized/1/pin"),
        ("DELETE", "/backup/db1/materialized/1/pin"),
    ]
    for method, path in calls:
        answer = client.request(method, path, json={})
        assert answer.status_code == 401, (method, path)
        assert answer.json()["field"] == "Authorization"
    assert client.get("/backup/db1/retention", headers=good).status_code == 200
    assert client.post("/backup/db1/retention/preview", json={}, headers=good).is_success


def test_openapi_documents_the_retention_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/backup/{name}/retention"]) == {"get"}
    assert set(paths["/backup/{name}/materialized/{id}/pin"]) == {"put", "delete"}
    body = paths["/backup/{name}/retention/preview"]["post"]["requestBody"]
    examples = body["content"]["application/json"]["examples"]
    assert examples["hourly"]["value"] == {"retentionHourly": "24", "retentionDaily": "7"}


def test_preview_with_keep_within_and_last(client: TestClient, ids: dict[str, int]) -> None:
    """The preview takes the new fields and echoes them canonical; `last` keeps the 3 newest."""
    body = preview(client, {**DAILY_2, "retentionKeepWithin": " 0D ", "retentionLast": 3})
    assert body["policy"]["retentionKeepWithin"] == ""
    assert body["policy"]["retentionLast"] == 3
    kept_by_last = [b["id"] for b in body["backups"] if "last" in b["reasons"]]
    assert len(kept_by_last) == 3
    assert body["summary"]["keep"] >= 3

"""Every validation rule: a 4xx that names the field, and nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

SQL_NAME = "x'; DROP TABLE backup_spec; --"

# (case id, body fields besides a valid name, the field the answer must name)
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("enabled-2", {"enabled": 2}, "enabled"),
    ("enabled-string", {"enabled": "1"}, "enabled"),
    ("enabled-fraction", {"enabled": 0.5}, "enabled"),
    ("fromDate-naive", {"fromDate": "2024-01-01T00:00:00"}, "fromDate"),
    ("fromDate-date-only", {"fromDate": "2024-01-01"}, "fromDate"),
    ("fromDate-words", {"fromDate": "yesterday"}, "fromDate"),
    ("fromDate-month-13", {"fromDate": "2024-13-01T00:00:00Z"}, "fromDate"),
    ("fromDate-number", {"fromDate": 1700000000}, "fromDate"),
    ("toDate-naive", {"toDate": "2024-01-01 10:00"}, "toDate"),
    (
        "toDate-before-fromDate",
        {"fromDate": "2024-02-01T00:00:00Z", "toDate": "2024-01-01T00:00:00Z"},
        "toDate",
    ),
    (
        "toDate-equal-fromDate",
        {"fromDate": "2024-02-01T00:00:00Z", "toDate": "2024-02-01T01:00:00+01:00"},
        "toDate",
    ),
    ("cron-three-fields", {"backupCronString": "* * *"}, "backupCronString"),
    ("cron-seven-fields", {"backupCronString": "0 0 0 * * * 2024"}, "backupCronString"),
    ("cron-second-61", {"backupCronString": "61 * * * * *"}, "backupCronString"),
    ("cron-never-fires", {"backupCronString": "0 0 0 30 2 ?"}, "backupCronString"),
    ("cron-five-never-fires", {"backupCronString": "0 0 31 4 *"}, "backupCronString"),
    ("cron-words", {"backupCronString": "every day"}, "backupCronString"),
    ("cron-hashed", {"backupCronString": "H * * * *"}, "backupCronString"),
    ("cron-too-long", {"backupCronString": "0 " * 200}, "backupCronString"),
    ("cron-number", {"backupCronString": 5}, "backupCronString"),
    ("timezone-unknown", {"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ("timezone-empty", {"timezone": ""}, "timezone"),
    ("timezone-path", {"timezone": "../../etc/passwd"}, "timezone"),
    ("timezone-absolute", {"timezone": "/etc/localtime"}, "timezone"),
    ("timezone-offset", {"timezone": "+02:00"}, "timezone"),
    ("timezone-nul", {"timezone": "UTC\u0000"}, "timezone"),
    ("timezone-number", {"timezone": 2}, "timezone"),
    ("workerConfig-object", {"workerConfig": {"a": 1}}, "workerConfig"),
    ("workerConfig-nul", {"workerConfig": "a\u0000b"}, "workerConfig"),
    ("workerConfig-huge", {"workerConfig": "x" * 70_000}, "workerConfig"),
    ("timeoutSeconds-zero", {"timeoutSeconds": 0}, "timeoutSeconds"),
    ("timeoutSeconds-negative", {"timeoutSeconds": -5}, "timeoutSeconds"),
    ("timeoutSeconds-string", {"timeoutSeconds": "10"}, "timeoutSeconds"),
    ("timeoutSeconds-float", {"timeoutSeconds": 1.5}, "timeoutSeconds"),
    ("timeoutSeconds-bool", {"timeoutSeconds": True}, "timeoutSeconds"),
    ("timeoutSeconds-huge", {"timeoutSeconds": 2**31}, "timeoutSeconds"),
    ("timeoutSeconds-enormous", {"timeoutSeconds": 10**30}, "timeoutSeconds"),
    ("misfire-negative", {"misfireGraceSeconds": -1}, "misfireGraceSeconds"),
    # Below the minimum (10 s): a pass runs some time after the due time, so the fire is lost.
    ("misfire-zero", {"misfireGraceSeconds": 0}, "misfireGraceSeconds"),
    ("misfire-below-minimum", {"misfireGraceSeconds": 9}, "misfireGraceSeconds"),
    ("misfire-huge", {"misfireGraceSeconds": 2**31}, "misfireGraceSeconds"),
    ("misfire-string", {"misfireGraceSeconds": "60"}, "misfireGraceSeconds"),
    ("retention-words", {"retentionDaily": "seven"}, "retentionDaily"),
    ("retention-hour-99", {"retentionDaily": "5@99"}, "retentionDaily"),
    ("retention-negative", {"retentionHourly": "-1"}, "retentionHourly"),
    ("retention-dangling-at", {"retentionWeekly": "1@"}, "retentionWeekly"),
    ("retention-weekday-7", {"retentionWeekly": "1@7"}, "retentionWeekly"),
    ("retention-day-32", {"retentionMonthly": "1@32"}, "retentionMonthly"),
    ("retention-month-0", {"retentionYearly": "1@0"}, "retentionYearly"),
    ("retention-second-60", {"retentionMinutely": "1@60"}, "retentionMinutely"),
    ("retention-number", {"retentionDaily": 7}, "retentionDaily"),
    ("retention-count-huge", {"retentionDaily": "99999999999999999999"}, "retentionDaily"),
    ("unknown-typo", {"retentionDayly": "4"}, "retentionDayly"),
    ("unknown-snake-case", {"from_date": "2024-01-01T00:00:00Z"}, "from_date"),
    ("unknown-wrong-case", {"Name": "other"}, "Name"),
]

BAD_NAMES: list[tuple[str, Any]] = [
    ("empty", ""),
    ("leading-dash", "-abc"),
    ("leading-dot", ".abc"),
    ("too-long", "a" * 129),
    ("space", "a b"),
    ("slash", "a/b"),
    ("non-ascii", "bäckup"),
    ("trailing-newline", "abc\n"),
    ("sql", SQL_NAME),
    ("number", 5),
    ("list", ["a"]),
]


def _assert_error(answer: Any, field: str | None) -> None:
    assert 400 <= answer.status_code < 500, answer.text
    body = answer.json()
    assert set(body) == {"message", "field"}
    assert body["field"] == field
    assert body["message"]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_field_on_post_is_refused_and_nothing_stored(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/backup", json={"name": "db1", **body})
    _assert_error(answer, field)
    assert answer.status_code == 422
    assert client.get("/backup").json() == []
    assert client.get("/backup/db1").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_field_on_put_is_refused_and_the_spec_is_unchanged(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    before = client.post("/backup", json={"name": "db1", "retentionDaily": "5"}).json()
    answer = client.put("/backup/db1", json=body)
    _assert_error(answer, field)
    assert client.get("/backup/db1").json() == before
    seed_form = client.put("/backup", json={"name": "db1", **body})
    _assert_error(seed_form, field)
    assert client.get("/backup/db1").json() == before


@pytest.mark.parametrize("name", [c[1] for c in BAD_NAMES], ids=[c[0] for c in BAD_NAMES])
def test_bad_name_is_refused_and_nothing_stored(client: TestClient, name: Any) -> None:
    answer = client.post("/backup", json={"name": name})
    _assert_error(answer, "name")
    assert answer.status_code == 422
    assert client.get("/backup").json() == []


def test_missing_name_is_refused(client: TestClient) -> None:
    _assert_error(client.post("/backup", json={"retentionDaily": "3"}), "name")
    assert client.get("/backup").json() == []


def test_the_smallest_misfire_grace_is_accepted(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "db1", "misfireGraceSeconds": 10})
    assert answer.status_code == 201, answer.text
    assert answer.json()["misfireGraceSeconds"] == 10
    refused = client.put("/backup/db1", json={"misfireGraceSeconds": 0})
    assert refused.status_code == 422
    assert refused.json()["field"] == "misfireGraceSeconds"
    assert "at least 10" in refused.json()["message"]
    assert client.get("/backup/db1").json()["misfireGraceSeconds"] == 10


def test_longest_name_is_accepted(client: TestClient) -> None:
    name = "A" + "b.c_d-9" * 18 + "x" * 1
    assert len(name) == 128
    assert client.post("/backup", json={"name": name}).status_code == 201
    assert client.get(f"/backup/{name}").json()["name"] == name


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"name": "db1",}', "application/json", 400),
        (b"", "application/json", 422),
        (b"[]", "application/json", 422),
        (b'[{"name": "db1"}]', "application/json", 422),
        (b'"db1"', "application/json", 422),
        (b"5", "application/json", 422),
        (b"null", "application/json", 422),
        (b"name=db1", "application/x-www-form-urlencoded", 422),
        (b'{"name": "db1"}', "text/plain", 422),
    ],
    ids=[
        "broken",
        "trailing-comma",
        "empty",
        "array",
        "array-of-object",
        "string",
        "number",
        "null",
        "form",
        "text-plain",
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(
    client: TestClient, content: bytes, content_type: str, status: int
) -> None:
    for method, url in [("POST", "/backup"), ("PUT", "/backup"), ("PUT", "/backup/db1")]:
        answer = client.request(
            method, url, content=content, headers={"content-type": content_type}
        )
        assert answer.status_code == status, (method, url, answer.text)
        _assert_error(answer, None)
    assert client.get("/backup").json() == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "DONE"}, "status"),
        ({"status": ["COMPLETED", "nope"]}, "status"),
        ({"tag": "fortnightly"}, "tag"),
        ({"tag": ""}, "tag"),
    ],
)
def test_materialized_filters_are_validated(
    client: TestClient, query: dict[str, Any], field: str
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.get("/backup/db1/materialized", params=query)
    assert answer.status_code == 422
    _assert_error(answer, field)


def test_purge_flag_is_validated(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.delete("/backup/db1", params={"purge": "perhaps"})
    _assert_error(answer, "purge")
    assert client.get("/backup/db1").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/backup", "enabeld"),
        ("GET", "/backup/db1", "verbose"),
        ("GET", "/backup/db1/materialized", "stat"),
        ("DELETE", "/backup/db1", "purg"),
        ("POST", "/backup/db1/materialized", "force"),
    ],
)
def test_unknown_query_parameters_are_refused(
    client: TestClient, method: str, path: str, param: str
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.request(method, path, params={param: "1"})
    assert answer.status_code == 422
    _assert_error(answer, param)
    assert client.get("/backup/db1").status_code == 200


@pytest.mark.parametrize(
    ("field", "sent", "stored"),
    [
        ("fromDate", "0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00Z"),
        ("toDate", "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_an_rfc3339_instant_beyond_the_calendar_is_taken_as_its_end(
    client: TestClient, field: str, sent: str, stored: str
) -> None:
    """Valid RFC 3339 (the schema's `date-time`), outside Python's UTC range: its bound."""
    answer = client.post("/backup", json={"name": "db1", field: sent})
    assert answer.status_code == 201, answer.text
    assert answer.json()[field] == stored


def test_integers_written_with_a_zero_fraction_are_integers(client: TestClient) -> None:
    """JSON Schema counts 1.0 as the integer 1: the schema's integers take it, so does the API."""
    body = {"name": "db1", "enabled": 0.0, "timeoutSeconds": 7200.0, "misfireGraceSeconds": 60.0}
    answer = client.post("/backup", json=body)
    assert answer.status_code == 201, answer.text
    stored = answer.json()
    assert (stored["enabled"], stored["timeoutSeconds"], stored["misfireGraceSeconds"]) == (
        0,
        7200,
        60,
    )

"""verifyCronString and verifySampleRate through the API (issue 11, scheduled verification).

Every test runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backtor.api import patterns
from backtor.core.verification import next_verify_after

pytestmark = pytest.mark.integration

DAILY = "0 0 23 * * *"


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verifyCronString", "61 * * * *"),  # out of range
        ("verifyCronString", "0 0 0 30 2 *"),  # never fires
        ("verifyCronString", "0 0 0 1 * 1"),  # both day fields: outside the syntax
        ("verifyCronString", "* " * 130),  # too long
        ("verifyCronString", 5),
        ("verifySampleRate", -0.1),
        ("verifySampleRate", 1.5),
        ("verifySampleRate", 10**400),
        ("verifySampleRate", "0.5"),
        ("verifySampleRate", True),
    ],
    ids=str,
)
def test_bad_values_are_refused_naming_the_field(
    client: TestClient, field: str, value: object
) -> None:
    answer = client.post("/backup", json={"name": "db1", field: value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert client.get("/backup/db1").status_code == 404


def test_left_out_there_is_no_scheduled_verification(client: TestClient) -> None:
    spec = client.post("/backup", json={"name": "db1"}).json()
    assert spec["verifyCronString"] is None
    assert spec["verifySampleRate"] is None
    assert spec["nextVerifyTime"] is None
    blank = client.post("/backup", json={"name": "db2", "verifyCronString": "  "}).json()
    assert blank["verifyCronString"] is None and blank["nextVerifyTime"] is None


@pytest.mark.parametrize("rate", [0, 1, 0.25, 1e-9])
def test_the_fields_are_stored_canonical_and_shown(client: TestClient, rate: float) -> None:
    before = datetime.now(UTC)
    body = {
        "name": "db1",
        "backupCronString": DAILY,
        "verifyCronString": "0 3 * * *",
        "verifySampleRate": rate,
        "timezone": "Europe/Berlin",
        "jitterSeconds": 600,
    }
    answer = client.post("/backup", json=body)
    assert answer.status_code == 201, answer.text
    spec = answer.json()
    assert spec["verifyCronString"] == "0 0 3 * * *"
    assert spec["verifySampleRate"] == rate
    # The verify cron runs in the spec's zone, shifted by its jitter offset.
    expected = next_verify_after(
        name="db1",
        cron_string="0 0 3 * * *",
        timezone="Europe/Berlin",
        jitter_seconds=600,
        now=before,
    )
    assert instant(spec["nextVerifyTime"]) == expected
    assert client.get("/backup/db1").json() == spec


def test_a_put_is_a_full_replacement_and_a_get_body_goes_back(client: TestClient) -> None:
    body = {"name": "db1", "verifyCronString": "0 0 3 * * *", "verifySampleRate": 0.1}
    client.post("/backup", json=body)
    spec = client.get("/backup/db1").json()
    again = client.put("/backup/db1", json=spec)  # nextVerifyTime is read-only: accepted
    assert again.status_code == 200, again.text
    kept = again.json()
    assert kept["verifyCronString"] == "0 0 3 * * *" and kept["verifySampleRate"] == 0.1
    assert kept["nextVerifyTime"] == spec["nextVerifyTime"]

    changed = client.put("/backup/db1", json={**spec, "verifyCronString": "0 0 4 * * *"})
    assert instant(changed.json()["nextVerifyTime"]).astimezone(UTC).hour == 4

    left_out: dict[str, Any] = {
        k: v for k, v in spec.items() if k not in ("verifyCronString", "verifySampleRate")
    }
    cleared = client.put("/backup/db1", json=left_out).json()
    assert cleared["verifyCronString"] is None and cleared["verifySampleRate"] is None
    assert cleared["nextVerifyTime"] is None


def test_a_bad_put_names_the_field_and_changes_nothing(client: TestClient) -> None:
    client.post("/backup", json={"name": "db1", "verifyCronString": "0 0 3 * * *"})
    answer = client.put("/backup/db1", json={"verifySampleRate": 2})
    assert answer.status_code == 422 and answer.json()["field"] == "verifySampleRate"
    assert client.get("/backup/db1").json()["verifyCronString"] == "0 0 3 * * *"


def test_the_openapi_document_states_the_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    spec_in = schemas["SpecIn"]["properties"]
    cron = next(s for s in spec_in["verifyCronString"]["anyOf"] if s.get("type") == "string")
    assert cron["pattern"] == patterns.CRON
    assert cron["maxLength"] == patterns.MAX_CRON_INPUT_CHARS
    rate = next(s for s in spec_in["verifySampleRate"]["anyOf"] if s.get("type") == "number")
    assert (rate["minimum"], rate["maximum"]) == (0, 1)
    assert "nextVerifyTime" in schemas["SpecOut"]["properties"]

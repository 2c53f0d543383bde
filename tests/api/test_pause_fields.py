"""pausedReason, autoPauseAfterFailures and removalDelaySeconds through the API (issue 12).

Every test runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.engine import Engine

from backtor.db.models import BackupSpec

pytestmark = pytest.mark.integration

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("reason-with-enabled-1", {"enabled": 1, "pausedReason": "why"}, "pausedReason"),
    ("reason-with-enabled-default", {"pausedReason": "why"}, "pausedReason"),
    ("reason-too-long", {"enabled": 0, "pausedReason": "x" * 501}, "pausedReason"),
    ("reason-nul", {"enabled": 0, "pausedReason": "a\u0000b"}, "pausedReason"),
    ("reason-number", {"enabled": 0, "pausedReason": 5}, "pausedReason"),
    ("auto-negative", {"autoPauseAfterFailures": -1}, "autoPauseAfterFailures"),
    ("auto-string", {"autoPauseAfterFailures": "3"}, "autoPauseAfterFailures"),
    ("auto-fraction", {"autoPauseAfterFailures": 1.5}, "autoPauseAfterFailures"),
    ("auto-huge", {"autoPauseAfterFailures": 2**31}, "autoPauseAfterFailures"),
    ("delay-negative", {"removalDelaySeconds": -1}, "removalDelaySeconds"),
    ("delay-string", {"removalDelaySeconds": "60"}, "removalDelaySeconds"),
    ("delay-bool", {"removalDelaySeconds": True}, "removalDelaySeconds"),
    ("delay-huge", {"removalDelaySeconds": 2**31}, "removalDelaySeconds"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_values_are_refused_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/backup", json={"name": "db1", **body})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert client.get("/backup/db1").status_code == 404


def test_defaults(client: TestClient) -> None:
    spec = client.post("/backup", json={"name": "db1"}).json()
    fields = ("pausedReason", "autoPauseAfterFailures", "removalDelaySeconds")
    assert [spec[f] for f in (*fields, "consecutiveFailures")] == [None, 0, 0, 0]


def test_a_paused_spec_shows_its_reason_until_enabled(client: TestClient) -> None:
    reason = "storage migration until Friday: " + "x" * 468  # 500 characters, the most
    assert len(reason) == 500
    created = client.post(
        "/backup",
        json={"name": "db1", "enabled": 0, "pausedReason": reason, "autoPauseAfterFailures": 3},
    )
    assert created.status_code == 201, created.text
    assert (created.json()["enabled"], created.json()["pausedReason"]) == (0, reason)
    assert client.get("/backup/db1").json()["pausedReason"] == reason
    assert [s["pausedReason"] for s in client.get("/backup").json()] == [reason]
    # A GET body sent back as it is keeps the pause and its reason.
    again = client.put("/backup/db1", json=client.get("/backup/db1").json())
    assert again.status_code == 200, again.text
    assert (again.json()["enabled"], again.json()["pausedReason"]) == (0, reason)
    # Enabling clears it (the PUT is a full replacement: no reason goes with enabled 1).
    body = {**client.get("/backup/db1").json(), "enabled": 1, "pausedReason": None}
    enabled = client.put("/backup/db1", json=body)
    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["enabled"], enabled.json()["pausedReason"]) == (1, None)
    assert enabled.json()["autoPauseAfterFailures"] == 3


def test_an_empty_reason_is_no_reason(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "db1", "pausedReason": ""})
    assert answer.status_code == 201, answer.text
    assert answer.json()["pausedReason"] is None


def test_enabling_again_starts_the_failure_count_afresh(client: TestClient, engine: Engine) -> None:
    assert client.post("/backup", json={"name": "db1", "autoPauseAfterFailures": 2}).status_code
    with engine.begin() as connection:  # as an auto-pause leaves it
        connection.execute(
            update(BackupSpec)
            .where(BackupSpec.name == "db1")
            .values(enabled=False, consecutive_failures=2, paused_reason="auto-paused after 2")
        )
    kept = client.put("/backup/db1", json=client.get("/backup/db1").json())  # still paused
    assert kept.status_code == 200, kept.text
    assert (kept.json()["pausedReason"], kept.json()["consecutiveFailures"]) == (
        "auto-paused after 2",
        2,
    )
    body = {**client.get("/backup/db1").json(), "enabled": 1, "pausedReason": None}
    enabled = client.put("/backup/db1", json=body)
    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["pausedReason"], enabled.json()["consecutiveFailures"]) == (None, 0)


def paused(client: TestClient) -> float | None:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "backtor_backup_specs_paused":
                return float(sample.value)
    return None


def test_the_gauge_counts_paused_specs(client: TestClient) -> None:
    assert paused(client) == 0.0
    client.post("/backup", json={"name": "on"})
    client.post("/backup", json={"name": "off", "enabled": 0, "pausedReason": "why"})
    client.post("/backup", json={"name": "off2", "enabled": 0})
    assert paused(client) == 2.0
    client.delete("/backup/off2")  # no backups: deleted at once
    assert paused(client) == 1.0

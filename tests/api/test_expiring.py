"""EXPIRING backups (a removal delay, issue 12) as the API shows and handles them.

Every test runs on PostgreSQL and SQLite. The spec keeps 2 daily backups (UTC, the other
tiers off); rows are written as the scheduling core would leave them:

    a  2026-01-01 10:00  EXPIRING   the plan removes it (Jan 1's daily is b); expires later
    b  2026-01-01 23:00  EXPIRING   daily, older than the 2 newest dailies: removed too
    c  2026-01-02 22:00  COMPLETED  daily, kept
    f  2026-01-02 23:30  FAILED     ignored
    d  2026-01-03 01:00  COMPLETED  daily, kept, the newest
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AddBackup

pytestmark = pytest.mark.integration

DAILY_2 = {
    "retentionDaily": "2",
    "retentionWeekly": "0",
    "retentionMonthly": "0",
    "retentionYearly": "0",
}
EXPIRES = datetime(2030, 1, 1, 12, tzinfo=UTC)
EXPIRES_TEXT = "2030-01-01T12:00:00Z"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def ids(client: TestClient, add_backup: AddBackup) -> dict[str, int]:
    assert client.post("/backup", json={"name": "db1", **DAILY_2}).status_code == 201
    return {
        "a": add_backup("db1", "EXPIRING", scheduled_at=at(1, 10), expires_at=EXPIRES),
        "b": add_backup("db1", "EXPIRING", scheduled_at=at(1, 23), expires_at=EXPIRES),
        "c": add_backup("db1", scheduled_at=at(2, 22), data_id="data-c"),
        "f": add_backup("db1", "FAILED", scheduled_at=at(2, 23, 30), data_id=None),
        "d": add_backup("db1", scheduled_at=at(3, 1), data_id="data-d"),
    }


def by_label(rows: list[dict[str, Any]], ids: dict[str, int]) -> dict[str, dict[str, Any]]:
    label = {v: k for k, v in ids.items()}
    return {label[row["id"]]: row for row in rows}


def test_materialized_shows_the_status_and_expiry(client: TestClient, ids: dict[str, int]) -> None:
    listed = by_label(client.get("/backup/db1/materialized").json(), ids)
    assert (listed["a"]["status"], listed["a"]["expiresAt"]) == ("EXPIRING", EXPIRES_TEXT)
    assert (listed["c"]["status"], listed["c"]["expiresAt"]) == ("COMPLETED", None)
    only = client.get("/backup/db1/materialized", params={"status": "expiring"})
    assert only.status_code == 200
    assert [b["id"] for b in only.json()] == [ids["b"], ids["a"]]


def test_the_plan_shows_expiring_backups_as_candidates(
    client: TestClient, ids: dict[str, int]
) -> None:
    body = client.get("/backup/db1/retention").json()
    rows = by_label(body["backups"], ids)
    assert {k: (r["status"], r["action"], r["expiresAt"]) for k, r in rows.items()} == {
        "d": ("COMPLETED", "keep", None),
        "f": ("FAILED", "ignore", None),
        "c": ("COMPLETED", "keep", None),
        "b": ("EXPIRING", "remove", EXPIRES_TEXT),
        "a": ("EXPIRING", "remove", EXPIRES_TEXT),
    }
    assert rows["b"]["tags"] == ["daily"]
    assert body["summary"] == {"keep": 2, "remove": 2, "ignore": 1}  # EXPIRING: candidates
    preview = client.post("/backup/db1/retention/preview", json={**DAILY_2, "retentionDaily": "3"})
    assert preview.status_code == 200, preview.text
    assert preview.json()["additionalKeeps"] == [ids["b"]]


def test_a_pin_rescues_an_expiring_backup(client: TestClient, ids: dict[str, int]) -> None:
    answer = client.put(f"/backup/db1/materialized/{ids['a']}/pin")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["pinned"], body["expiresAt"]) == ("COMPLETED", True, None)
    rows = by_label(client.get("/backup/db1/retention").json()["backups"], ids)
    assert (rows["a"]["action"], rows["a"]["reasons"]) == ("keep", ["pinned"])
    assert rows["b"]["status"] == "EXPIRING"  # still removed by the plan


def test_a_put_whose_policy_keeps_it_puts_it_back(client: TestClient, ids: dict[str, int]) -> None:
    same = client.put("/backup/db1", json={"name": "db1", **DAILY_2})
    assert same.status_code == 200, same.text
    assert [b["status"] for b in client.get("/backup/db1/materialized").json()][-2:] == [
        "EXPIRING",
        "EXPIRING",
    ]
    answer = client.put("/backup/db1", json={"name": "db1", **DAILY_2, "retentionDaily": "3"})
    assert answer.status_code == 200, answer.text
    rows = by_label(client.get("/backup/db1/materialized").json(), ids)
    assert (rows["b"]["status"], rows["b"]["expiresAt"]) == ("COMPLETED", None)  # Jan 1's daily
    assert (rows["a"]["status"], rows["a"]["expiresAt"]) == ("EXPIRING", EXPIRES_TEXT)


def test_delete_refuses_while_backups_expire_and_a_purge_takes_them(
    client: TestClient, add_backup: AddBackup
) -> None:
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    backup_id = add_backup("db2", "EXPIRING", scheduled_at=at(1, 10), expires_at=EXPIRES)
    refused = client.delete("/backup/db2")
    assert refused.status_code == 409, refused.text
    assert "EXPIRING" in refused.json()["message"]
    purge = client.delete("/backup/db2", params={"purge": "true"})
    assert purge.status_code == 202, purge.text
    assert purge.json()["pendingBackups"] == 1
    (row,) = client.get("/backup/db2/materialized").json()
    assert (row["id"], row["status"], row["expiresAt"]) == (backup_id, "REMOVING", None)

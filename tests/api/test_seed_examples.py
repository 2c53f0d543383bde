"""The seed README's examples work as its users wrote them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from backtor.core.cron import CronSchedule, nominal_period_seconds
from backtor.core.policy import RetentionPolicy, derive_cron

pytestmark = pytest.mark.integration

DAY = 86_400


def _period(cron: str) -> float:
    return nominal_period_seconds(CronSchedule(cron), ZoneInfo("UTC"), datetime.now(UTC))


def test_default_backup(client: TestClient) -> None:
    fields = {
        "retentionMinutely": "0@L",
        "retentionHourly": "0@L",
        "retentionDaily": "4@L",
        "retentionWeekly": "3@L",
        "retentionMonthly": "3@L",
        "retentionYearly": "2@L",
    }
    answer = client.post("/backup", json={"name": "default-backup", "enabled": 1, **fields})
    assert answer.status_code == 201
    body = answer.json()
    assert {k: body[k] for k in fields} == fields
    assert body["cronDerived"] is True
    assert body["backupCronString"] == derive_cron(RetentionPolicy.from_fields(fields))
    assert _period(body["backupCronString"]) == DAY  # one backup a day


def test_simple_daily_backups(client: TestClient) -> None:
    answer = client.post("/backup", json={"name": "simple-daily", "retentionDaily": "7"})
    assert answer.status_code == 201
    body = answer.json()
    assert body["retentionDaily"] == "7@L"
    assert body["cronDerived"] is True
    # "triggered every day at 23h59min (L)"
    assert body["backupCronString"].split()[1:3] == ["59", "23"]
    assert _period(body["backupCronString"]) == DAY
    fire = datetime.fromisoformat(body["nextFireTime"])
    assert (fire.hour, fire.minute) == (23, 59)


def test_every_4_hours_backups(client: TestClient) -> None:
    answer = client.post(
        "/backup",
        json={
            "name": "every-4-hours",
            "backupCronString": "0 0 */4 ? * *",
            "retentionHourly": "6",
            "retentionDaily": "0@3",
            "retentionMonthly": "2@L",
        },
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["backupCronString"] == "0 0 */4 ? * *"
    assert body["cronDerived"] is False
    assert body["retentionHourly"] == "6@L"
    assert body["retentionDaily"] == "0@3"
    assert body["retentionMonthly"] == "2@L"
    fire = datetime.fromisoformat(body["nextFireTime"])
    assert fire.hour % 4 == 0 and (fire.minute, fire.second) == (0, 0)
    assert fire - datetime.now(UTC) <= timedelta(hours=4)


@pytest.mark.parametrize("cron", ["0/2 * * * * *", "0 0 */4 ? * *"])
def test_the_seed_cron_strings_round_trip(client: TestClient, cron: str) -> None:
    created = client.post("/backup", json={"name": "rt", "backupCronString": cron})
    assert created.status_code == 201
    assert created.json()["backupCronString"] == cron
    assert client.get("/backup/rt").json()["backupCronString"] == cron
    assert client.put("/backup", json={"name": "rt", "backupCronString": cron}).status_code == 200
    assert client.get("/backup").json()[0]["backupCronString"] == cron


def test_every_two_seconds_fires_within_two_seconds(client: TestClient) -> None:
    body = client.post("/backup", json={"name": "fast", "backupCronString": "0/2 * * * * *"}).json()
    fire = datetime.fromisoformat(body["nextFireTime"])
    assert fire.second % 2 == 0
    assert fire - datetime.fromisoformat(body["lastUpdate"]) <= timedelta(seconds=2)

"""jitterSeconds through the API (issue 14): a fixed offset per spec, shown in nextFireTime.

Every test runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backtor.core.schedule import jitter_offset
from tests.api.conftest import MakeClient

pytestmark = pytest.mark.integration

DAILY = "0 0 23 * * *"  # 23:00:00 UTC every day


def next_fire(spec: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(spec["nextFireTime"].replace("Z", "+00:00"))


@pytest.mark.parametrize("value", [-1, 86_401, "30", 1.5, True], ids=str)
def test_bad_values_are_refused_naming_the_field(client: TestClient, value: object) -> None:
    answer = client.post("/backup", json={"name": "db1", "jitterSeconds": value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "jitterSeconds"
    assert client.get("/backup/db1").status_code == 404


def test_the_offset_shifts_every_fire_and_shows_in_next_fire_time(client: TestClient) -> None:
    plain = client.post("/backup", json={"name": "plain", "backupCronString": DAILY}).json()
    assert plain["jitterSeconds"] == 0
    cron_time = next_fire(plain)
    assert (cron_time.hour, cron_time.minute, cron_time.second) == (23, 0, 0)

    names = [f"nightly-{i}" for i in range(40)]
    offsets = []
    for name in names:
        body = {"name": name, "backupCronString": DAILY, "jitterSeconds": 3600}
        spec = client.post("/backup", json=body).json()
        assert spec["jitterSeconds"] == 3600
        # Modulo a day: from 23:00 UTC the plain fire is tomorrow's, a jittered one today's.
        offset = (next_fire(spec) - cron_time) % timedelta(days=1)
        # The documented offset, from the name alone, within [0, jitterSeconds].
        assert offset == jitter_offset(name, 3600)
        assert timedelta(0) <= offset <= timedelta(seconds=3600)
        offsets.append(offset)
    # Forty specs on one cron no longer share one second.
    assert len(set(offsets)) >= 35


def test_a_put_changing_only_the_jitter_moves_the_next_fire(client: TestClient) -> None:
    client.post("/backup", json={"name": "db1", "backupCronString": DAILY})
    spec = client.get("/backup/db1").json()
    before = next_fire(spec)
    changed = client.put("/backup/db1", json={**spec, "jitterSeconds": 600})
    assert changed.status_code == 200, changed.text
    assert next_fire(changed.json()) - before == jitter_offset("db1", 600)
    # Sent back as it is, a GET body keeps the jitter.
    again = client.put("/backup/db1", json=client.get("/backup/db1").json())
    assert again.json()["jitterSeconds"] == 600


def test_the_global_default_applies_to_specs_that_leave_it_out(make_client: MakeClient) -> None:
    client = make_client(env={"BACKTOR_JITTER_SECONDS": "900"})
    left_out = client.post("/backup", json={"name": "a", "backupCronString": DAILY}).json()
    assert left_out["jitterSeconds"] == 900
    explicit = client.post(
        "/backup", json={"name": "b", "backupCronString": DAILY, "jitterSeconds": 0}
    ).json()
    assert explicit["jitterSeconds"] == 0
    assert next_fire(left_out) - next_fire(explicit) == jitter_offset("a", 900)

"""Auto-pause and the removal delay on the whole stack (issue 12): real Conductor,
PostgreSQL, Backtor's API and worker processes, the file storage worker.

- A spec whose storage target fails pauses itself after autoPauseAfterFailures failed
  backups in a row: GET shows enabled 0 and pausedReason, nothing fires any more, and
  /metrics counts it paused.
- Under removalDelaySeconds a backup retention removes is EXPIRING first: one is pinned
  before its delay ends and stays (COMPLETED, its file kept), another is removed once its
  delay is over (its remove_backup started after its expiresAt).

Every wait is on a condition (tests.support.waiting.wait_until) or on whole scheduler
passes (SchedulerWatch), never a fixed sleep.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.support import processes
from tests.support.scheduler import SchedulerWatch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

AUTO_PAUSED = "auto-paused after 3 consecutive failed backups; last: create_backup FAILED"


def paused_gauge(api: str) -> float | None:
    text = requests.get(f"{api}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "backtor_backup_specs_paused":
                return float(sample.value)
    return None


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_spec_whose_storage_fails_pauses_itself(stack: Stack) -> None:
    stack.storage.fail_backups = 1_000  # the storage target is broken: every backup fails
    with processes.workers(stack.env, stack.logs):
        name = stack.create(
            "autopause",
            backupCronString="*/2 * * * * *",
            autoPauseAfterFailures=3,
            fromDate=(datetime.now(UTC) + timedelta(seconds=2)).isoformat(),
        )
        spec = wait_until(
            lambda: (s := stack.spec(name))["enabled"] == 0 and s,
            timeout=90,
            what="the spec paused itself",
        )
        assert spec["pausedReason"].startswith(AUTO_PAUSED), spec["pausedReason"]
        assert "test storage: told to fail" in spec["pausedReason"]
        assert spec["nextFireTime"] is None
        assert spec["autoPauseAfterFailures"] == 3
        assert (stack.spec(name)["pausedReason"]) == spec["pausedReason"]  # GET /backup/{name}
        listed = requests.get(f"{stack.api}/backup", params={"enabled": "0"}, timeout=10).json()
        assert [(s["name"], s["pausedReason"]) for s in listed] == [(name, spec["pausedReason"])]

        # A fire due when it paused may still be taken (as after a PUT with enabled 0), and
        # fails too; after that nothing fires, however many scheduler passes go by.
        def ended() -> bool:
            return not any(w["status"] == "RUNNING" for w in stack.creates(name))

        wait_until(ended, timeout=60, what="the last create_backup ended")
        started = len(stack.creates(name))
        with SchedulerWatch(stack.database_url, stack.conductor) as watch:
            watch.wait_for_holds(3, timeout=60)
        assert len(stack.creates(name)) == started
        failed = stack.backups(name, status="FAILED")
        assert 3 <= len(failed) == started <= 4
        assert stack.backups(name, status="COMPLETED") == []
        assert wait_until(lambda: paused_gauge(stack.api) == 1.0, timeout=30, what="the gauge")

        # Enabling it again clears the reason and starts counting afresh.
        stack.storage.fail_backups = 0
        stack.update(name, enabled=1, pausedReason=None)
        resumed = stack.spec(name)
        assert (resumed["enabled"], resumed["pausedReason"]) == (1, None)
        wait_until(
            lambda: stack.backups(name, status="COMPLETED"), timeout=60, what="a backup again"
        )
    assert paused_gauge(stack.api) == 0.0


def test_an_expiring_backup_rescued_by_a_pin_and_another_removed_after_its_delay(
    stack: Stack,
) -> None:
    delay = 12
    with processes.workers(stack.env, stack.logs):
        name = stack.create(
            "delay",
            backupCronString="*/3 * * * * *",
            retentionMinutely="0",
            retentionHourly="0",
            retentionDaily="0",
            retentionWeekly="0",
            retentionMonthly="0",
            retentionYearly="0",
            retentionLast=2,
            removalDelaySeconds=delay,
        )

        def expiring() -> list[dict[str, Any]]:
            return stack.backups(name, status="EXPIRING")

        first = wait_until(expiring, timeout=60, what="a backup EXPIRING")[-1]
        marked = datetime.now(UTC)
        assert first["expiresAt"] is not None
        assert when(first["expiresAt"]) > marked  # its delay has not ended
        plan = requests.get(f"{stack.api}/backup/{name}/retention", timeout=10).json()
        shown = {b["id"]: b for b in plan["backups"]}[first["id"]]
        assert (shown["status"], shown["action"]) == ("EXPIRING", "remove")
        assert shown["expiresAt"] == first["expiresAt"]

        answer = requests.put(
            f"{stack.api}/backup/{name}/materialized/{first['id']}/pin", timeout=10
        )
        assert answer.status_code == 200, answer.text
        rescued = answer.json()
        assert datetime.now(UTC) < when(first["expiresAt"])  # rescued before the delay ended
        assert (rescued["status"], rescued["pinned"], rescued["expiresAt"]) == (
            "COMPLETED",
            True,
            None,
        )

        # Another backup goes the whole way: EXPIRING, then REMOVED after its delay.
        def removed() -> list[dict[str, Any]]:
            return stack.backups(name, status="REMOVED")

        gone = wait_until(removed, timeout=90, what="a backup removed after its delay")[-1]
        assert gone["expiresAt"] is not None
        (run,) = [w for w in stack.removes(name) if w["input"]["backupId"] == gone["id"]]
        started = datetime.fromtimestamp(int(run["startTime"]) / 1000, UTC)
        assert started >= when(gone["expiresAt"])
        assert gone["dataId"] not in stack.storage.files()

        stack.update(name, enabled=0)

        # Settle: the last EXPIRING ones are removed once their delay is over.
        def settled() -> bool:
            runs = stack.creates(name) + stack.removes(name)
            return not (
                stack.backups(name, status="EXPIRING")
                or stack.backups(name, status="REMOVING")
                or any(w["status"] == "RUNNING" for w in runs)
            )

        wait_until(settled, timeout=90, what="no backup EXPIRING or REMOVING, no run open")
    by_id = {b["id"]: b for b in stack.backups(name)}
    assert (by_id[first["id"]]["status"], by_id[first["id"]]["pinned"]) == ("COMPLETED", True)
    assert first["dataId"] in stack.storage.files()
    for backup in by_id.values():
        if backup["status"] == "REMOVED":
            assert backup["expiresAt"] is not None  # every removal waited out the delay
    assert stack.live_data_ids(name) == stack.storage.files()

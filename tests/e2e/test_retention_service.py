"""Pins against real retention runs: real Conductor, PostgreSQL, API and worker processes.

A spec backs up every 2 seconds and keeps 1 minutely backup, so each retention run removes
all but the newest backup; a backup pinned early must survive those runs (row COMPLETED,
file in storage) while its siblings of the same minute go, and go too once unpinned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Stack
from tests.support import processes
from tests.support.scheduler import SchedulerWatch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def first_fire() -> datetime:
    """A start that leaves at least 18 s of its minute, so the pinned backup has siblings."""
    start = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    if start.second > 40:
        start = start.replace(second=0) + timedelta(minutes=1)
    return start


def pin_early(stack: Stack, name: str) -> dict[str, Any]:
    """Pin the oldest COMPLETED backup, as soon as there is one.

    Until the next backup is recorded it is the newest, which the plan always keeps; if a
    retention run wins the race anyway, the pin is refused (409) and the next one is tried.
    """

    def pin() -> dict[str, Any] | None:
        completed = stack.backups(name, status="COMPLETED")
        if not completed:
            return None
        backup_id = completed[-1]["id"]
        answer = requests.put(f"{stack.api}/backup/{name}/materialized/{backup_id}/pin", timeout=10)
        if answer.status_code == 200:
            return dict(answer.json())
        assert answer.status_code == 409, answer.text
        return None

    pinned = wait_until(pin, timeout=60, interval=0.1, what="a backup pinned")
    assert pinned is not None
    return pinned


def settle(stack: Stack, name: str) -> list[dict[str, Any]]:
    """Wait until no backup of the spec is running or being removed; its backups then."""

    def settled() -> list[dict[str, Any]] | None:
        busy = [w for w in stack.creates(name) + stack.removes(name) if w["status"] == "RUNNING"]
        backups = stack.backups(name)
        pending = [b for b in backups if b["status"] in ("RUNNING", "REMOVING")]
        return None if busy or pending else backups

    settled_backups = wait_until(settled, timeout=60, what=f"{name} idle")
    assert settled_backups is not None
    return settled_backups


def removed_siblings(stack: Stack, name: str, pinned: dict[str, Any]) -> list[dict[str, Any]]:
    """REMOVED backups of the pinned backup's minute (the spec's zone is UTC)."""
    minute = pinned["scheduledTime"][:16]
    return [
        b
        for b in stack.backups(name)
        if b["scheduledTime"][:16] == minute
        and b["id"] != pinned["id"]
        and b["status"] == "REMOVED"
    ]


def status_of(stack: Stack, name: str, backup_id: int) -> str:
    return str({b["id"]: b["status"] for b in stack.backups(name)}[backup_id])


def test_a_pinned_backup_outlives_retention_until_unpinned(stack: Stack) -> None:
    start = first_fire()
    with processes.workers(stack.env, stack.logs):
        name = stack.create(
            "pinned",
            backupCronString="*/2 * * * * *",
            retentionMinutely="1",
            fromDate=start.isoformat(),
        )
        pinned = pin_early(stack, name)
        assert pinned["pinned"] is True
        assert pinned["status"] == "COMPLETED"
        # Retention runs go by (each backup is one) until three same-minute siblings of the
        # pinned backup are removed around it.
        wait_until(
            lambda: len(removed_siblings(stack, name, pinned)) >= 3,
            timeout=60,
            what="three siblings of the pinned backup removed",
        )
        stack.update(name, enabled=0)
        backups = settle(stack, name)

        by_id = {b["id"]: b for b in backups}
        assert by_id[pinned["id"]]["status"] == "COMPLETED"
        assert by_id[pinned["id"]]["pinned"] is True
        assert pinned["dataId"] in stack.storage.files()
        newest = backups[0]
        minute = pinned["scheduledTime"][:16]  # the spec's zone is UTC
        siblings = [
            b
            for b in backups
            if b["scheduledTime"][:16] == minute and b["id"] not in (pinned["id"], newest["id"])
        ]
        assert len(siblings) >= 3, backups
        assert {b["status"] for b in siblings} == {"REMOVED"}
        assert stack.storage.files().isdisjoint(b["dataId"] for b in siblings)
        # Retention left exactly the pinned and the newest backup, and their files.
        assert [b["id"] for b in backups if b["status"] == "COMPLETED"] == [
            newest["id"],
            pinned["id"],
        ]
        assert stack.live_data_ids(name) == stack.storage.files()

        answer = requests.delete(
            f"{stack.api}/backup/{name}/materialized/{pinned['id']}/pin", timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["pinned"], answer.json()["status"]) == (False, "COMPLETED")
        # Unpinning starts no removal: with the spec disabled no retention run comes, however
        # many scheduler passes go by (two whole holds of the tick, each one pass or more).
        with SchedulerWatch(stack.database_url, stack.conductor) as watch:
            watch.wait_for_holds(2, timeout=30)
        assert status_of(stack, name, pinned["id"]) == "COMPLETED"
        assert pinned["dataId"] in stack.storage.files()

        # The next retention run (after a backup taken now) removes it.
        trigger = requests.post(f"{stack.api}/backup/{name}/materialized", timeout=10)
        assert trigger.status_code == 202, trigger.text
        wait_until(
            lambda: status_of(stack, name, pinned["id"]) == "REMOVED",
            timeout=60,
            what="the unpinned backup removed",
        )
        backups = settle(stack, name)
    assert pinned["dataId"] not in stack.storage.files()
    assert [b["status"] for b in backups if b["status"] != "REMOVED"] == ["COMPLETED"]
    assert stack.live_data_ids(name) == stack.storage.files()
